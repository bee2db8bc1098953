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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/ctlclient"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// errNoFirstEvent cancels a watch whose stream stays silent for --timeout.
var errNoFirstEvent = errors.New("no first event")

// defaultReconnectFor is how long clients watch tries to get its stream
// back after losing it, by default.
const defaultReconnectFor = 5 * time.Minute

func (a *app) clientsWatchCommand() *cobra.Command {
	var f clientFilter
	reconnectFor := defaultReconnectFor
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

When the stream is lost once it ran (the controller restarts, leadership
moves to another of the --controller addresses), the watch reconnects, as
etcdctl watch does: a note on standard error, then it retries (backoff up to
2s) and resumes where it was, printing as "connected" and "disconnected" what
changed meanwhile (reason "while the watch was reconnecting"), never the
current set again. After --reconnect-for without a stream (0: never) it
gives up with exit 3.

--timeout applies only to the wait for the first event of each connection,
not to the stream.

` + dataplaneFilterNote,
		Example: `  4over6ctl clients watch
  4over6ctl clients watch --dataplane-id dp1 -o json | jq -c 'select(.type=="disconnected")'
  4over6ctl clients watch --reconnect-for 0   # through any outage`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, prefix, err := a.filterValues(cmd, &f)
			if err != nil {
				return err
			}
			if reconnectFor < 0 {
				return usageErrorf("invalid --reconnect-for %v: must not be negative", reconnectFor)
			}
			return a.watchClients(cmd.Context(), &cpv1.WatchClientsRequest{DataplaneId: id, Ipv6Prefix: prefix}, reconnectFor)
		},
	}
	f.addFlags(cmd)
	cmd.Flags().DurationVar(&reconnectFor, "reconnect-for", defaultReconnectFor, "after losing the stream, how long to keep reconnecting before giving up with exit 3 (0: forever)")
	return needs(cmd, needController)
}

// watchState is what a watch knows across its streams: the current set,
// once a stream has sent it.
type watchState struct {
	w      *eventWriter
	synced bool              // a stream sent its whole set (and it was printed)
	known  map[string]Client // IPv4 -> client, since synced
}

func (a *app) watchClients(parent context.Context, req *cpv1.WatchClientsRequest, reconnectFor time.Duration) error {
	if parent == nil {
		parent = context.Background()
	}
	st := &watchState{w: &eventWriter{a: a}, known: map[string]Client{}}
	var lostAt time.Time
	backoff := 100 * time.Millisecond
	for {
		progressed, err := a.watchStream(parent, req, st)
		if progressed { // it had (re)synced: a new outage starts now
			lostAt, backoff = time.Time{}, 100*time.Millisecond
		}
		switch {
		case errors.Is(err, io.EOF):
			return st.w.finish() // the controller ended the stream
		case parent.Err() != nil:
			return st.w.finish() // Ctrl-C: the normal way to stop watching
		}
		var ce *cliError
		if errors.As(err, &ce) { // the writer's
			return err
		}
		if !st.synced {
			// It never ran: fail as any command does.
			return a.watchStartError(err)
		}
		if !watchRetryable(err) {
			return a.rpcError(a.controller, err)
		}
		why := a.watchLostReason(err)
		if lostAt.IsZero() {
			lostAt = time.Now()
			limit := "until Ctrl-C"
			if reconnectFor > 0 {
				limit = "for up to " + reconnectFor.String()
			}
			fmt.Fprintf(a.stderr, "4over6ctl: watch: lost the stream from the controller at %s: %s; reconnecting %s\n", a.controller.addressText(), why, limit)
		}
		if reconnectFor > 0 && time.Since(lostAt) >= reconnectFor {
			return &cliError{code: exitUnreachable, msg: fmt.Sprintf("gave up watching after %v without a stream from the controller: %s", reconnectFor, why)}
		}
		select {
		case <-parent.Done():
			return st.w.finish()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// watchStream runs one WatchClients stream until it ends. The first
// stream's events are printed as they come; a later stream's current set is
// compared with what the watch knew, and only the differences are printed.
// progressed: the stream sent its whole set.
func (a *app) watchStream(parent context.Context, req *cpv1.WatchClientsRequest, st *watchState) (progressed bool, _ error) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// --timeout bounds the wait for the first event only.
	var timer *time.Timer
	if a.timeout > 0 {
		timer = time.AfterFunc(a.timeout, func() { cancel(errNoFirstEvent) })
		defer timer.Stop()
	}
	stream, err := a.ctrl().WatchClients(ctx, req)
	if err != nil {
		return false, a.causeOr(ctx, err)
	}
	fresh := map[string]Client{}
	for {
		m, err := stream.Recv()
		if err != nil {
			return progressed, a.causeOr(ctx, err)
		}
		if timer != nil {
			timer.Stop()
		}
		e := m.GetEvent()
		if e == nil {
			continue
		}
		ev := clientEventFromProto(e)
		switch {
		case ev.Type == "existing" && ev.Client != nil:
			fresh[ev.Client.IPv4] = *ev.Client
			if st.synced {
				continue
			}
		case ev.Type == "synced":
			if st.synced {
				progressed = true
				if err := st.resume(fresh, a.now(), func(n int) {
					fmt.Fprintf(a.stderr, "4over6ctl: watch: resumed at %s (%d change%s meanwhile)\n", a.controller.addressText(), n, plural(n))
				}); err != nil {
					return true, err
				}
				continue
			}
			st.synced, st.known, progressed = true, fresh, true
		case ev.Type == "connected" && ev.Client != nil:
			st.known[ev.Client.IPv4] = *ev.Client
		case ev.Type == "disconnected" && ev.Client != nil:
			if k, ok := st.known[ev.Client.IPv4]; ok && k.Session == ev.Client.Session {
				delete(st.known, ev.Client.IPv4)
			}
		}
		if err := st.w.write(ev); err != nil {
			return progressed, &cliError{code: exitError, msg: err.Error()}
		}
	}
}

// causeOr is errNoFirstEvent when that ended ctx, else err.
func (a *app) causeOr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errNoFirstEvent) {
		return errNoFirstEvent
	}
	return err
}

// resume prints what changed between the set the watch knew and a new
// stream's: who left (disconnected) and who came (connected), after note
// was told how many. A client whose address is held by another session now
// counts as both.
func (st *watchState) resume(fresh map[string]Client, now time.Time, note func(changes int)) error {
	var gone, came []Client
	for ip, k := range st.known {
		if f, ok := fresh[ip]; !ok || f.Session != k.Session || f.Dataplane != k.Dataplane {
			gone = append(gone, k)
		}
	}
	for ip, f := range fresh {
		if k, ok := st.known[ip]; !ok || f.Session != k.Session || f.Dataplane != k.Dataplane {
			came = append(came, f)
		}
	}
	sortClients(gone)
	sortClients(came)
	note(len(gone) + len(came))
	st.known = fresh
	for _, c := range gone {
		c := c
		if err := st.w.write(ClientEvent{Type: "disconnected", Time: now.UTC().Format(time.RFC3339), Client: &c, Reason: reconnectReason}); err != nil {
			return &cliError{code: exitError, msg: err.Error()}
		}
	}
	for _, c := range came {
		c := c
		if err := st.w.write(ClientEvent{Type: "connected", Time: c.ConnectedSince, Client: &c, Reason: ""}); err != nil {
			return &cliError{code: exitError, msg: err.Error()}
		}
	}
	return nil
}

// reconnectReason is the reason of a disconnect the watch learnt of on
// reconnecting (it happened while it had no stream).
const reconnectReason = "while the watch was reconnecting"

// watchRetryable tells a lost stream (controller gone, restarting, no
// longer leading, silent) from an answer that will not change.
func watchRetryable(err error) bool {
	var none *ctlclient.Error
	if errors.Is(err, errNoFirstEvent) || errors.As(err, &none) {
		return true
	}
	if _, ok := ctlclient.IsNotLeader(err); ok {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded, codes.Internal, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}

// watchLostReason is why the stream went, in a few words.
func (a *app) watchLostReason(err error) string {
	if errors.Is(err, errNoFirstEvent) {
		return fmt.Sprintf("nothing sent within %v", a.timeout)
	}
	if leaderID, ok := ctlclient.IsNotLeader(err); ok {
		if leaderID != "" {
			return "it stopped leading (the leader is " + leaderID + ")"
		}
		return "it stopped leading (no leader is elected right now)"
	}
	return asCLIError(a.rpcError(a.controller, err)).msg
}

// watchStartError is the error of a watch whose first stream never sent
// its current set.
func (a *app) watchStartError(err error) error {
	if errors.Is(err, errNoFirstEvent) {
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

func (w *eventWriter) write(ev ClientEvent) error {
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
