package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the health of the whole system on one screen",
		Long: `Show the controller (id, version, leader, store), the pool's use, every data
plane the controller knows, and the local data plane (at --dataplane,
$FOUROVER6_DATAPLANE or the default socket) when it answers.

A daemon that cannot be reached does not fail the command: its part is left
out and listed under "Problems" (-o json: null, with an entry in "errors").
Exits 3 only when neither the controller nor the data plane answers.
For the local data plane alone, as "status" printed before: "dataplane status".`,
		Example: `  4over6ctl status
  4over6ctl status -o json | jq '.errors'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.systemStatus(cmd)
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { a.systemStatusTable(w, s) })
		},
	}
	return needs(cmd, needController, needDataplane)
}

// systemStatus asks the controller and the local data plane at the same
// time, each within --timeout.
func (a *app) systemStatus(cmd *cobra.Command) (SystemStatus, error) {
	var (
		s                   SystemStatus
		ctlErrs, dpErrs     []StatusError
		ctlReach, dpReach   bool
		ctlUnreach, dpUnrea string
		wg                  sync.WaitGroup
	)
	note := func(d *daemon, errs *[]StatusError, err error) (unreachable bool) {
		ce := asCLIError(a.rpcError(d, err))
		*errs = append(*errs, StatusError{Daemon: d.name, Address: d.addressText(), Error: ce.msg, Code: ce.code})
		return ce.code == exitUnreachable
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		ctx, cancel := a.callContext(cmd)
		defer cancel()
		resp, err := a.ctrl().GetStatus(ctx, &cpv1.GetStatusRequest{})
		if err != nil {
			if note(a.controller, &ctlErrs, err) {
				ctlUnreach = ctlErrs[len(ctlErrs)-1].Error
				return
			}
		} else {
			st := resp.GetStatus()
			s.Controller = &ControllerStatus{Address: a.controller.addressText(), ID: st.GetControllerId(), Version: st.GetVersion(),
				Store: st.GetStore(), Leader: st.GetLeader(), LeaderID: st.GetLeaderId(), StartedAt: timestamp(st.GetStartedAt()),
				StoreError: st.GetStoreError()}
		}
		ctlReach = true
		if p, err := a.getPool(ctx); err != nil {
			note(a.controller, &ctlErrs, err)
		} else {
			s.Pool = &p
		}
		if dps, err := a.listDataplanes(ctx); err != nil {
			note(a.controller, &ctlErrs, err)
		} else {
			s.Dataplanes = dps
		}
	}()
	go func() {
		defer wg.Done()
		ctx, cancel := a.callContext(cmd)
		defer cancel()
		st, err := a.dataplaneStatus(ctx)
		if err != nil {
			if note(a.dataplane, &dpErrs, err) {
				dpUnrea = dpErrs[len(dpErrs)-1].Error
				return
			}
		} else {
			s.Dataplane = &st
		}
		dpReach = true
	}()
	wg.Wait()
	if !ctlReach && !dpReach {
		return s, &cliError{code: exitUnreachable, msg: ctlUnreach + "; " + dpUnrea}
	}
	s.Errors = append(append([]StatusError{}, ctlErrs...), dpErrs...)
	return s, nil
}

func (a *app) systemStatusTable(w io.Writer, s SystemStatus) {
	if c := s.Controller; c != nil {
		role := "leader"
		if !c.Leader {
			role = "follower"
			if c.LeaderID != "" {
				role += ", leader " + c.LeaderID
			}
		}
		fmt.Fprintf(w, "Controller:\t%s (%s), version %s, at %s\n", orDash(c.ID), role, orDash(c.Version), c.Address)
		store := orDash(c.Store)
		if c.StoreError != "" {
			store += " (FAILING: " + c.StoreError + ")"
		}
		fmt.Fprintf(w, "Store:\t%s\n", store)
		up := "-"
		if t, err := time.Parse(time.RFC3339, c.StartedAt); err == nil {
			up = t.UTC().Format("2006-01-02 15:04:05 UTC") + " (up " + shortDuration(a.now().Sub(t)) + ")"
		}
		fmt.Fprintf(w, "Started:\t%s\n", up)
	} else {
		fmt.Fprintf(w, "Controller:\tunknown (see problems below)\n")
	}
	if p := s.Pool; p != nil {
		fmt.Fprintf(w, "Pool:\t%s, clients %s - %s, gateway %s\n", orDash(p.Prefix), orDash(p.RangeFirst), orDash(p.RangeLast), orDash(p.Gateway))
		usage := ""
		if p.Size > 0 {
			usage = fmt.Sprintf(" (%.1f%% leased)", 100*float64(p.Leased)/float64(p.Size))
		}
		fmt.Fprintf(w, "Addresses:\t%d leased, %s, %d free of %d%s\n", p.Leased, reservedText(*p), p.Free, p.Size, usage)
		fmt.Fprintf(w, "DNS:\t%s\n", orDash(strings.Join(p.DNS, ", ")))
	} else {
		fmt.Fprintf(w, "Pool:\tunknown\n")
	}
	fmt.Fprintln(w)
	if s.Dataplanes != nil {
		a.dataplanesTable(w, s.Dataplanes)
	} else {
		fmt.Fprintln(w, "Data planes: unknown")
	}
	fmt.Fprintln(w)
	if d := s.Dataplane; d != nil {
		up := ""
		if t, err := time.Parse(time.RFC3339, d.StartedAt); err == nil {
			up = ", up " + shortDuration(a.now().Sub(t))
		}
		fmt.Fprintf(w, "Local data plane:\t%s (version %s%s), at %s\n", orDash(d.Dataplane), orDash(d.Version), up, a.dataplane.addressText())
		link := "NOT connected"
		if d.ControllerConnected {
			link = "connected"
		}
		drain := ""
		if d.Draining {
			drain = ", DRAINING (no new clients)"
		}
		fmt.Fprintf(w, "Sessions:\t%d open, %d leased%s\n", d.Sessions, d.LeasedSessions, drain)
		fmt.Fprintf(w, "Controller link:\t%s (%s)\n", link, orDash(d.Controller))
		fmt.Fprintf(w, "Traffic:\tfrom clients %s, to clients %s\n",
			traffic(d.BytesFromClient, d.PacketsFromClient), traffic(d.BytesToClient, d.PacketsToClient))
		fmt.Fprintf(w, "Drops:\t%s\n", countsText(d.Drops))
		if b := d.BGP; b.Enabled {
			up := 0
			for _, p := range b.Sessions {
				if p.State == "established" {
					up++
				}
			}
			fmt.Fprintf(w, "BGP:\t%d of %d sessions established, %d client routes announced\n", up, len(b.Sessions), b.Announced)
		}
	} else {
		fmt.Fprintf(w, "Local data plane:\tnone answered\n")
	}
	if len(s.Errors) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Problems:")
		for _, e := range s.Errors {
			fmt.Fprintf(w, "  %s\n", e.Error)
		}
	}
}
