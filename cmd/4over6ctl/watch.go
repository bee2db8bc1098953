package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// errNoFirstEvent cancels a watch whose stream stays silent for --timeout.
var errNoFirstEvent = errors.New("no first event")

func (a *app) clientsWatchCommand() *cobra.Command {
	var f clientFilter
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print the clients, then every connect and disconnect as it happens",
		Long: `Print the clients holding an address, then one line per client that connects
or disconnects, until Ctrl-C (exit 0) or until the controller ends the stream.
The filters are those of "clients list".

-o table: the current clients as a table, then one line per event.
-o json: JSON Lines, one event object per line: first one "existing" event
per current client, then one "synced", then "connected"/"disconnected" events.
-o yaml: the same events as YAML documents separated by "---".

--timeout applies only to the wait for the first event, not to the stream.

` + dataplaneFilterNote,
		Example: `  4over6ctl clients watch
  4over6ctl clients watch --dataplane-id dp1 -o json | jq -c 'select(.type=="disconnected")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, prefix, err := a.filterValues(cmd, &f)
			if err != nil {
				return err
			}
			return a.watchClients(cmd.Context(), &cpv1.WatchClientsRequest{DataplaneId: id, Ipv6Prefix: prefix})
		},
	}
	f.addFlags(cmd)
	return needs(cmd, needController)
}

func (a *app) watchClients(parent context.Context, req *cpv1.WatchClientsRequest) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// --timeout bounds the wait for the first event only.
	var timer *time.Timer
	if a.timeout > 0 {
		timer = time.AfterFunc(a.timeout, func() { cancel(errNoFirstEvent) })
		defer timer.Stop()
	}
	w := &eventWriter{a: a}
	stream, err := a.ctrl().WatchClients(ctx, req)
	for err == nil {
		var m *cpv1.WatchClientsResponse
		m, err = stream.Recv()
		if err != nil {
			break
		}
		if timer != nil {
			timer.Stop()
		}
		if m.GetEvent() == nil {
			continue
		}
		if werr := w.write(m.GetEvent()); werr != nil {
			return werr
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		return w.finish() // the controller ended the stream
	case parent.Err() != nil:
		return w.finish() // Ctrl-C: the normal way to stop watching
	case errors.Is(context.Cause(ctx), errNoFirstEvent):
		if !a.controller.connected() {
			return a.unreachable(a.controller, a.controller.addressText(), fmt.Sprintf("no connection within %v", a.timeout))
		}
		return &cliError{code: exitError, msg: fmt.Sprintf("controller at %s sent nothing within %v", a.controller.addressText(), a.timeout)}
	}
	return a.rpcError(a.controller, err)
}

func eventType(t cpv1.ClientEvent_Type) string {
	switch t {
	case cpv1.ClientEvent_TYPE_EXISTING:
		return "existing"
	case cpv1.ClientEvent_TYPE_SYNCED:
		return "synced"
	case cpv1.ClientEvent_TYPE_CONNECTED:
		return "connected"
	case cpv1.ClientEvent_TYPE_DISCONNECTED:
		return "disconnected"
	}
	return "unknown"
}

func clientEventFromProto(e *cpv1.ClientEvent) ClientEvent {
	ev := ClientEvent{Type: eventType(e.GetType()), Time: timestamp(e.GetTime()), Reason: e.GetReason()}
	if e.GetClient() != nil && e.GetType() != cpv1.ClientEvent_TYPE_SYNCED {
		c := clientFromProto(e.GetClient())
		ev.Client = &c
	}
	return ev
}

// eventWriter prints a watch as it goes: JSON Lines, YAML documents, or a
// table of the current set followed by one line per event.
type eventWriter struct {
	a       *app
	docs    int      // YAML documents written
	pending []Client // table: the current set, until it is complete
	synced  bool     // table: the current set was printed
}

func (w *eventWriter) write(e *cpv1.ClientEvent) error {
	ev := clientEventFromProto(e)
	out := w.a.stdout
	switch w.a.format {
	case formatJSON:
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	case formatYAML:
		if w.docs > 0 {
			if _, err := io.WriteString(out, "---\n"); err != nil {
				return err
			}
		}
		w.docs++
		return writeFormatted(out, formatYAML, ev, nil)
	}
	switch {
	case ev.Type == "existing" && !w.synced:
		w.pending = append(w.pending, *ev.Client)
		return nil
	case ev.Type == "synced":
		if w.synced {
			return nil
		}
		if err := w.printSet(); err != nil {
			return err
		}
		_, err := fmt.Fprintln(out, "Watching for connects and disconnects (Ctrl-C to stop).")
		return err
	}
	if err := w.printSet(); err != nil {
		return err
	}
	return w.line(ev)
}

// printSet prints the current set once, as "clients list" does.
func (w *eventWriter) printSet() error {
	if w.synced {
		return nil
	}
	w.synced = true
	sortClients(w.pending)
	tw := tabwriter.NewWriter(w.a.stdout, 0, 0, 2, ' ', 0)
	w.a.clientsTable(tw, w.pending)
	w.pending = nil
	return tw.Flush()
}

// line prints one event: time, type, address, client, data plane/session, reason.
func (w *eventWriter) line(ev ClientEvent) error {
	t := ev.Time
	if t == "" {
		t = w.a.now().UTC().Format(time.RFC3339)
	}
	c := Client{}
	if ev.Client != nil {
		c = *ev.Client
	}
	where := orDash(c.Dataplane)
	if c.Session != "" {
		where += "/" + c.Session
	}
	reason := ""
	if ev.Reason != "" {
		reason = "  (" + ev.Reason + ")"
	}
	_, err := fmt.Fprintf(w.a.stdout, "%-20s  %-12s  %-15s  %s  %s%s\n", t, strings.ToUpper(ev.Type), orDash(c.IPv4),
		fmt.Sprintf("%s port %d", orDash(c.IPv6), c.Port), where, reason)
	return err
}

// finish prints the current set if the stream ended before it was complete.
func (w *eventWriter) finish() error {
	if w.a.format != formatTable || w.synced {
		return nil
	}
	return w.printSet()
}
