package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// defaultPoolWarn is check's --pool-warn: a pool this full (in percent of
// its client addresses neither free) is a problem.
const defaultPoolWarn = 90.0

func (a *app) checkCommand() *cobra.Command {
	warn := percentFlag{v: defaultPoolWarn}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Exit non-zero, one line per problem, unless the whole system is healthy",
		Long: `Check the system as a health check would: the controller answers and a leader
is elected, its store's last write succeeded, every data plane the controller
knows is up (or draining), at least one is registered, and the pool is less
than --pool-warn full (leased and idle reserved addresses, of the range's size).

Prints "OK: ..." and exits 0 when all is well. Otherwise prints one line per
problem on standard output and exits 6, whatever the problem, including a
controller that cannot be reached. -o json: {"ok": ..., "summary": ...,
"problems": [{"check": ..., "subject": ..., "message": ...}]}.
Bad flags exit 2 as for any command.`,
		Example: `  4over6ctl check
  4over6ctl check --pool-warn 95%
  4over6ctl check -o json | jq -r '.problems[].message'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res := a.check(cmd, warn.v)
			err := a.emit(res, func(w io.Writer) {
				if res.OK {
					fmt.Fprintf(w, "OK: %s\n", res.Summary)
					return
				}
				for _, p := range res.Problems {
					fmt.Fprintln(w, p.line())
				}
			})
			if err != nil {
				return err
			}
			if !res.OK {
				return &cliError{code: exitCheckFailed, msg: fmt.Sprintf("%d problem%s", len(res.Problems), plural(len(res.Problems))), silent: true}
			}
			return nil
		},
	}
	cmd.Flags().Var(&warn, "pool-warn", "a pool this full or fuller is a problem, in percent of its client addresses (e.g. 90% or 90; 0 turns the check off)")
	return needs(cmd, needController)
}

// check asks the controller for its status, pool and data planes, each
// within --timeout, and lists what is wrong.
func (a *app) check(cmd *cobra.Command, poolWarn float64) Check {
	res := Check{Problems: []CheckProblem{}}
	problem := func(check, subject, format string, args ...any) {
		res.Problems = append(res.Problems, CheckProblem{Check: check, Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	ctx, cancel := a.callContext(cmd)
	defer cancel()

	resp, err := a.ctrl().GetStatus(ctx, &cpv1.GetStatusRequest{})
	if err != nil {
		problem("controller", "", "%s", asCLIError(a.rpcError(a.controller, err)).msg)
		return res.done()
	}
	st := resp.GetStatus()
	res.Controller = a.controller.addressText()
	if !st.GetLeader() {
		if st.GetLeaderId() == "" {
			problem("leader", "", "no controller leads: %s at %s is a standby and knows of no leader", orDash(st.GetControllerId()), res.Controller)
		} else {
			problem("leader", "", "controller %s at %s is a standby (the leader is %s): give every controller's address, e.g. --controller a,b,c",
				orDash(st.GetControllerId()), res.Controller, st.GetLeaderId())
		}
		return res.done()
	}
	var parts []string
	parts = append(parts, fmt.Sprintf("controller %s leads", orDash(st.GetControllerId())))
	if e := st.GetStoreError(); e != "" {
		problem("store", st.GetStore(), "store %s is failing: %s", orDash(st.GetStore()), e)
	} else {
		parts = append(parts, "store ok")
	}

	if dps, err := a.listDataplanes(ctx); err != nil {
		problem("dataplane", "", "cannot list the data planes: %s", asCLIError(err).msg)
	} else {
		up := 0
		for _, d := range dps {
			switch d.State {
			case "up", "draining":
				up++
			case "down":
				problem("dataplane", d.ID, "data plane %s is down: last heard %s (its API: %s)", d.ID, a.ago(d.LastHeartbeat), orDash(d.APIAddress))
			case "stopped":
				problem("dataplane", d.ID, "data plane %s is stopped (it said so); start it, or \"4over6ctl dataplane remove %s\" if it is gone for good", d.ID, d.ID)
			default:
				problem("dataplane", d.ID, "data plane %s is in a state this 4over6ctl does not know", d.ID)
			}
		}
		if len(dps) == 0 {
			problem("dataplane", "", "no data plane is registered: clients have nowhere to connect")
		} else {
			parts = append(parts, fmt.Sprintf("%d of %d data plane%s up", up, len(dps), plural(len(dps))))
		}
	}

	if p, err := a.getPool(ctx); err != nil {
		problem("pool", "", "cannot read the pool: %s", asCLIError(err).msg)
	} else {
		used := p.Size - min(p.Free, p.Size)
		switch {
		case p.Size == 0:
			problem("pool", p.Prefix, "the pool's client range is empty")
		case poolWarn > 0 && 100*float64(used) >= poolWarn*float64(p.Size):
			problem("pool", p.Prefix, "pool %s is %.1f%% full: %d of %d addresses leased or reserved, %d free (--pool-warn %s)",
				p.Prefix, 100*float64(used)/float64(p.Size), used, p.Size, p.Free, formatPercent(poolWarn))
		default:
			parts = append(parts, fmt.Sprintf("pool %.1f%% full (%d free)", 100*float64(used)/float64(p.Size), p.Free))
		}
	}
	res.Summary = strings.Join(parts, ", ")
	return res.done()
}

// done sets OK, and the summary of a failed check.
func (c Check) done() Check {
	c.OK = len(c.Problems) == 0
	if !c.OK {
		c.Summary = fmt.Sprintf("%d problem%s", len(c.Problems), plural(len(c.Problems)))
	}
	return c
}

// line is a problem in table mode: "dataplane dp2: ...".
func (p CheckProblem) line() string {
	return "PROBLEM " + p.Check + ": " + p.Message
}

// percentFlag is a percentage flag: "90%", "90" or "92.5".
type percentFlag struct{ v float64 }

func (f *percentFlag) String() string { return formatPercent(f.v) }
func (f *percentFlag) Type() string   { return "percent" }

func (f *percentFlag) Set(s string) error {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || !(v >= 0 && v <= 100) { // NaN fails both
		return fmt.Errorf("want a percentage from 0 to 100, e.g. 90%%")
	}
	f.v = v
	return nil
}

func formatPercent(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + "%" }
