package main

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

func (a *app) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a data plane's settings, health and counters",
		Long: `Show the status of the data plane at --dataplane: its settings, whether it
reaches the controller, its sessions, traffic totals and drops by reason.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := dpv1.NewDataplaneServiceClient(a.dataplane.conn).GetStatus(ctx, &dpv1.GetStatusRequest{})
			if err != nil {
				return a.rpcError(a.dataplane, err)
			}
			s := statusFromProto(resp.GetStatus())
			return a.emit(s, func(w io.Writer) { a.statusTable(w, s) })
		},
	}
	return needs(cmd, needDataplane)
}

func (a *app) sessionsCommand() *cobra.Command {
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List a data plane's client connections",
		Long: `List every client connection of the data plane at --dataplane, leased or
not, sorted by IPv4 address (unleased last). With -o json: a JSON array of
session objects ([] when there are none).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sessions, err := a.listSessions(cmd)
			if err != nil {
				return err
			}
			return a.emit(sessions, func(w io.Writer) { a.sessionsTable(w, sessions) })
		},
	}
	return groupCommand("sessions", "Client connections on one data plane", needs(list, needDataplane))
}

func (a *app) listSessions(cmd *cobra.Command) ([]Session, error) {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	stream, err := dpv1.NewDataplaneServiceClient(a.dataplane.conn).ListSessions(ctx, &dpv1.ListSessionsRequest{})
	if err != nil {
		return nil, a.rpcError(a.dataplane, err)
	}
	sessions := []Session{}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, a.rpcError(a.dataplane, err)
		}
		if m.GetSession() != nil {
			sessions = append(sessions, sessionFromProto(m.GetSession()))
		}
	}
	sort.SliceStable(sessions, func(i, j int) bool {
		x, y := sessions[i], sessions[j]
		if x.IPv4 != y.IPv4 {
			return addrLess(x.IPv4, y.IPv4)
		}
		return x.Session < y.Session
	})
	return sessions, nil
}

func sessionState(s dpv1.SessionState) string {
	switch s {
	case dpv1.SessionState_SESSION_STATE_ACCEPTED:
		return "accepted"
	case dpv1.SessionState_SESSION_STATE_LEASED:
		return "leased"
	case dpv1.SessionState_SESSION_STATE_CLOSING:
		return "closing"
	}
	return "unknown"
}

func dpCounters(k *dpv1.Counters) Counters {
	return Counters{
		BytesFromClient:   k.GetBytesFromClient(),
		PacketsFromClient: k.GetPacketsFromClient(),
		BytesToClient:     k.GetBytesToClient(),
		PacketsToClient:   k.GetPacketsToClient(),
	}
}

func sessionFromProto(s *dpv1.Session) Session {
	return Session{
		IPv4:           s.GetAddress(),
		IPv6:           s.GetClientIpv6(),
		Port:           s.GetClientPort(),
		Session:        s.GetSessionId(),
		Dataplane:      s.GetDataplaneId(),
		State:          sessionState(s.GetState()),
		ConnectedSince: timestamp(s.GetConnectedAt()),
		LastHeard:      timestamp(s.GetLastHeard()),
		Counters:       dpCounters(s.GetCounters()),
		SendQueue:      s.GetSendQueue(),
	}
}

func statusFromProto(s *dpv1.Status) Status {
	drops := make(map[string]uint64, len(s.GetDrops())) // never nil: {} in JSON
	for k, v := range s.GetDrops() {
		drops[k] = v
	}
	return Status{
		Dataplane:           s.GetDataplaneId(),
		Version:             s.GetVersion(),
		ClientListen:        s.GetClientListen(),
		TUN:                 s.GetTun(),
		MTU:                 s.GetMtu(),
		Gateway:             s.GetGateway(),
		Pool:                s.GetPool(),
		Controller:          s.GetController(),
		ControllerConnected: s.GetControllerConnected(),
		StartedAt:           timestamp(s.GetStartedAt()),
		Sessions:            s.GetSessions(),
		LeasedSessions:      s.GetLeasedSessions(),
		AcceptedTotal:       s.GetAcceptedTotal(),
		ClosedTotal:         s.GetClosedTotal(),
		Counters:            dpCounters(s.GetCounters()),
		Drops:               drops,
		KeepaliveInterval:   msDuration(s.GetKeepaliveIntervalMs()),
		KeepaliveTimeout:    msDuration(s.GetKeepaliveTimeoutMs()),
	}
}

func msDuration(ms uint64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

func (a *app) statusTable(w io.Writer, s Status) {
	fmt.Fprintf(w, "Data plane:\t%s (version %s)\n", orDash(s.Dataplane), orDash(s.Version))
	fmt.Fprintf(w, "Clients connect to:\t%s\n", orDash(s.ClientListen))
	fmt.Fprintf(w, "TUN:\t%s, MTU %d, gateway %s, pool %s\n", orDash(s.TUN), s.MTU, orDash(s.Gateway), orDash(s.Pool))
	conn := "NOT connected"
	if s.ControllerConnected {
		conn = "connected"
	}
	fmt.Fprintf(w, "Controller:\t%s (%s)\n", orDash(s.Controller), conn)
	up := "-"
	if t, err := time.Parse(time.RFC3339, s.StartedAt); err == nil {
		up = t.UTC().Format("2006-01-02 15:04:05 UTC") + " (up " + shortDuration(a.now().Sub(t)) + ")"
	}
	fmt.Fprintf(w, "Started:\t%s\n", up)
	fmt.Fprintf(w, "Sessions:\t%d open, %d leased; %d accepted, %d closed since start\n",
		s.Sessions, s.LeasedSessions, s.AcceptedTotal, s.ClosedTotal)
	fmt.Fprintf(w, "From clients:\t%s\n", traffic(s.BytesFromClient, s.PacketsFromClient))
	fmt.Fprintf(w, "To clients:\t%s\n", traffic(s.BytesToClient, s.PacketsToClient))
	fmt.Fprintf(w, "Keepalive:\tevery %s, timeout %s\n", s.KeepaliveInterval, s.KeepaliveTimeout)
	if len(s.Drops) == 0 {
		fmt.Fprintf(w, "Drops:\tnone\n")
		return
	}
	reasons := make([]string, 0, len(s.Drops))
	for r := range s.Drops {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s %d", r, s.Drops[r])
	}
	fmt.Fprintf(w, "Drops:\t%s\n", strings.Join(parts, ", "))
}

func (a *app) sessionsTable(w io.Writer, sessions []Session) {
	if len(sessions) == 0 {
		fmt.Fprintln(w, "No sessions.")
		return
	}
	fmt.Fprintln(w, "IPV4\tIPV6\tPORT\tSTATE\tSESSION\tCONNECTED\tLAST HEARD\tFROM CLIENT\tTO CLIENT\tQUEUE")
	for _, s := range sessions {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n",
			orDash(s.IPv4), orDash(s.IPv6), s.Port, s.State, orDash(s.Session),
			a.ago(s.ConnectedSince), a.ago(s.LastHeard),
			traffic(s.BytesFromClient, s.PacketsFromClient), traffic(s.BytesToClient, s.PacketsToClient),
			s.SendQueue)
	}
}
