package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fourover6/fourover6/controlplane/loglevel"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// dataplaneCommand groups the data plane commands. "list", "drain" and
// "remove" ask the controller (its registry of data planes, by id);
// "status" and "log-level" talk to the one data plane at --dataplane.
func (a *app) dataplaneCommand() *cobra.Command {
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the data planes registered with the controller",
		Long: `List every data plane the controller knows: id, state (up, draining, down,
stopped), sessions, leases, last heartbeat and addresses, sorted by id. A data
plane is down when it has not been heard from for --dataplane-timeout (or its
command stream ended and nothing was heard since); stopped when it told the
controller it stopped on purpose (it holds no leases). With -o json: a JSON
array of data plane objects ([] when there are none).`,
		Example: `  4over6ctl dataplanes list
  4over6ctl dataplanes list -o json | jq -r '.[] | select(.state=="down") | .id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			dps, err := a.listDataplanes(ctx)
			if err != nil {
				return err
			}
			return a.emit(dps, func(w io.Writer) { a.dataplanesTable(w, dps) })
		},
	}

	var undo bool
	drain := &cobra.Command{
		Use:   "drain ID",
		Short: "Stop a data plane from accepting new clients",
		Long: `Tell the data plane with id ID, through the controller, to accept no new
clients; its connected clients stay. Use it before maintenance, then wait for
"sessions" in "dataplanes list" to fall. --undo (or "dataplane undrain ID")
makes it accept clients again. Exits 4 when the controller knows no data plane
with that id. Prints the data plane object.`,
		Example: `  4over6ctl dataplane drain dp1
  4over6ctl dataplane drain dp1 --undo`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.drain(cmd, args[0], !undo)
		},
	}
	drain.Flags().BoolVar(&undo, "undo", false, "resume accepting new clients")
	undrain := &cobra.Command{
		Use:     "undrain ID",
		Short:   "Let a drained data plane accept new clients again",
		Long:    `The same as "dataplane drain ID --undo".`,
		Example: `  4over6ctl dataplane undrain dp1`,
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.drain(cmd, args[0], false)
		},
	}
	var force bool
	remove := &cobra.Command{
		Use:     "remove ID",
		Aliases: []string{"rm"},
		Short:   "Forget a data plane that is down or stopped",
		Long: `Remove the data plane with id ID from the controller's registry: its record is
deleted and the leases it still holds are released at once (a down data plane's
would otherwise go after --grace-period). Use it for a data plane that is gone
for good, or whose start failed and left an entry behind.

A data plane that is up (or draining) is refused (exit 1): stop it first. With
--force it is removed anyway, and its clients lose their addresses while their
connections may still be open (their next report recovers the addresses nobody
took meanwhile). A data plane that calls the controller again afterwards is
recorded anew. Exits 4 when the controller knows no data plane with that id.
Prints the data plane as it was and how many leases were released.`,
		Example: `  4over6ctl dataplane remove dp2
  4over6ctl dataplane remove dp2 --force -o json`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.remove(cmd, args[0], force)
		},
	}
	remove.Flags().BoolVar(&force, "force", false, "remove it even while it is up (its clients lose their addresses)")
	logLevel := &cobra.Command{
		Use:   "log-level LEVEL",
		Short: "Change the local data plane's log level at run time",
		Long: `Set the log level of the data plane at --dataplane to debug, info, warn or
error, until it restarts. Prints the previous level.`,
		Example:   `  4over6ctl dataplane log-level debug`,
		Args:      levelArg,
		ValidArgs: loglevel.Names,
		RunE: func(cmd *cobra.Command, args []string) error {
			level, _ := parseLevel(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.dp().SetLogLevel(ctx, &dpv1.SetLogLevelRequest{Level: level})
			if err != nil {
				return a.rpcError(a.dataplane, err)
			}
			return a.emitLogLevel(LogLevel{Daemon: "dataplane", Address: a.dataplane.addressText(), Level: level, Previous: resp.GetPrevious()})
		},
	}

	c := groupCommand("dataplane", "Data planes: the controller's registry (list, drain, remove) and the local one (status, log-level)",
		needs(list, needController),
		a.dataplaneStatusCommand(),
		needs(drain, needController),
		needs(undrain, needController),
		needs(remove, needController),
		needs(logLevel, needDataplane),
		a.dataplaneUpgradeCommand(),
	)
	c.Aliases = []string{"dataplanes", "dp"}
	c.Long = `Data planes. "list", "drain", "undrain" and "remove" ask the controller, which
knows every data plane by id; "status", "log-level" and "upgrade" talk to the one
data plane at --dataplane ($FOUROVER6_DATAPLANE, else
unix:///run/fourover6/dataplane.sock). "dataplanes" and "dp" are aliases:
"4over6ctl dataplanes list".`
	return c
}

func (a *app) remove(cmd *cobra.Command, id string, force bool) error {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	resp, err := a.ctrl().RemoveDataplane(ctx, &cpv1.RemoveDataplaneRequest{DataplaneId: id, Force: force})
	if err != nil {
		return notFound(a.rpcError(a.controller, err), "no data plane with id %q (see \"4over6ctl dataplanes list\")", id)
	}
	d := dataplaneFromProto(resp.GetDataplane())
	if d.ID == "" {
		d.ID = id
	}
	out := DataplaneRemove{ID: id, Released: resp.GetReleased(), Forced: force && (d.State == "up" || d.State == "draining"), Dataplane: d}
	return a.emit(out, func(w io.Writer) {
		fmt.Fprintf(w, "Removed data plane %s (it was %s); released %d lease%s.\n", id, d.State, out.Released, plural(int(out.Released)))
	})
}

func (a *app) drain(cmd *cobra.Command, id string, draining bool) error {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	resp, err := a.ctrl().DrainDataplane(ctx, &cpv1.DrainDataplaneRequest{DataplaneId: id, Draining: draining})
	if err != nil {
		return notFound(a.rpcError(a.controller, err), "no data plane with id %q (see \"4over6ctl dataplanes list\")", id)
	}
	d := dataplaneFromProto(resp.GetDataplane())
	if d.ID == "" {
		d.ID = id
	}
	return a.emit(d, func(w io.Writer) {
		if draining {
			fmt.Fprintf(w, "%s: %s, accepting no new clients; %d sessions stay\n", d.ID, d.State, d.Sessions)
		} else {
			fmt.Fprintf(w, "%s: %s, accepting new clients\n", d.ID, d.State)
		}
	})
}

func (a *app) listDataplanes(ctx context.Context) ([]Dataplane, error) {
	stream, err := a.ctrl().ListDataplanes(ctx, &cpv1.ListDataplanesRequest{})
	if err != nil {
		return nil, a.rpcError(a.controller, err)
	}
	dps := []Dataplane{}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, a.rpcError(a.controller, err)
		}
		if m.GetDataplane() != nil {
			dps = append(dps, dataplaneFromProto(m.GetDataplane()))
		}
	}
	sort.SliceStable(dps, func(i, j int) bool { return dps[i].ID < dps[j].ID })
	return dps, nil
}

func dataplaneState(s cpv1.Dataplane_State) string {
	switch s {
	case cpv1.Dataplane_STATE_UP:
		return "up"
	case cpv1.Dataplane_STATE_DRAINING:
		return "draining"
	case cpv1.Dataplane_STATE_DOWN:
		return "down"
	case cpv1.Dataplane_STATE_STOPPED:
		return "stopped"
	}
	return "unknown"
}

func dataplaneFromProto(d *cpv1.Dataplane) Dataplane {
	return Dataplane{
		ID:            d.GetDataplaneId(),
		InstanceID:    d.GetInstanceId(),
		Version:       d.GetVersion(),
		ClientListen:  d.GetClientListen(),
		APIAddress:    d.GetApiAddress(),
		State:         dataplaneState(d.GetState()),
		Sessions:      d.GetSessions(),
		Leases:        d.GetLeases(),
		RegisteredAt:  timestamp(d.GetRegisteredAt()),
		LastHeartbeat: timestamp(d.GetLastHeartbeat()),
	}
}

func (a *app) dataplanesTable(w io.Writer, dps []Dataplane) {
	if len(dps) == 0 {
		fmt.Fprintln(w, "No data planes registered.")
		return
	}
	fmt.Fprintln(w, "ID\tSTATE\tSESSIONS\tLEASES\tLAST HEARTBEAT\tCLIENTS CONNECT TO\tAPI\tVERSION")
	for _, d := range dps {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", d.ID, strings.ToUpper(d.State), d.Sessions, d.Leases,
			a.ago(d.LastHeartbeat), orDash(d.ClientListen), orDash(d.APIAddress), orDash(d.Version))
	}
}

// ---- log levels ----

func (a *app) logLevelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log-level LEVEL",
		Short: "Change the controller's log level at run time",
		Long: `Set the controller's log level to debug, info, warn or error, until it
restarts. Prints the previous level. For a data plane: "dataplane log-level".`,
		Example: `  4over6ctl log-level debug
  4over6ctl log-level info`,
		Args: levelArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			level, _ := parseLevel(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.ctrl().SetLogLevel(ctx, &cpv1.SetLogLevelRequest{Level: level})
			if err != nil {
				return a.rpcError(a.controller, err)
			}
			return a.emitLogLevel(LogLevel{Daemon: "controller", Address: a.controller.addressText(), Level: level, Previous: resp.GetPrevious()})
		},
	}
	cmd.ValidArgs = loglevel.Names
	return needs(cmd, needController)
}

// parseLevel reads LEVEL (controlplane/loglevel) and gives the name sent
// to the daemon.
func parseLevel(s string) (string, error) {
	l, err := loglevel.Parse(s)
	if err != nil {
		return "", usageErrorf("invalid LEVEL %q: want one of %s", s, strings.Join(loglevel.Names, ", "))
	}
	return loglevel.Name(l), nil
}

func levelArg(cmd *cobra.Command, args []string) error {
	if err := exactArgs("LEVEL")(cmd, args); err != nil {
		return err
	}
	_, err := parseLevel(args[0])
	return err
}

func (a *app) emitLogLevel(l LogLevel) error {
	return a.emit(l, func(w io.Writer) {
		fmt.Fprintf(w, "%s log level: %s -> %s\n", l.Daemon, orDash(l.Previous), l.Level)
	})
}
