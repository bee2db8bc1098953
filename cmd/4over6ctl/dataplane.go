package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

func (a *app) dataplaneStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local data plane's settings, health and counters",
		Long: `Show the status of the data plane at --dataplane (not through the controller):
its settings, whether it reaches the controller, whether it is draining, its
sessions, traffic totals, drops by reason, limits and refused connections,
and, with BGP on, each BGP session (state, uptime, prefixes sent).
This is what "4over6ctl status" printed before it showed the whole system.`,
		Example: `  4over6ctl dataplane status
  4over6ctl --dataplane '[2001:db8::1]:5679' dataplane status -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			s, err := a.dataplaneStatus(ctx)
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { a.statusTable(w, s) })
		},
	}
	return needs(cmd, needDataplane)
}

func (a *app) dataplaneStatus(ctx context.Context) (Status, error) {
	resp, err := a.dp().GetStatus(ctx, &dpv1.GetStatusRequest{})
	if err != nil {
		return Status{}, a.rpcError(a.dataplane, err)
	}
	return statusFromProto(resp.GetStatus()), nil
}

func (a *app) sessionsCommand() *cobra.Command {
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List a data plane's client connections",
		Long: `List every client connection of the data plane at --dataplane, leased or
not, sorted by IPv4 address (unleased last). With -o json: a JSON array of
session objects ([] when there are none).`,
		Example: `  4over6ctl sessions list
  4over6ctl --dataplane unix:///run/fourover6/dp2.sock sessions list -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sessions, err := a.listSessions(cmd)
			if err != nil {
				return err
			}
			return a.emit(sessions, func(w io.Writer) { a.sessionsTable(w, sessions) })
		},
	}
	var reason string
	kick := &cobra.Command{
		Use:   "kick ADDR|SESSION",
		Short: "Close one client connection on the data plane directly",
		Long: `Have the data plane at --dataplane close one client connection, given by its
IPv4 address or its session id, without going through the controller (which
"clients kick" does). Its address is released. Exits 4 when there is no such
session.`,
		Example: `  4over6ctl sessions kick 13.8.0.2
  4over6ctl sessions kick s-9`,
		Args: exactArgs("ADDR|SESSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &dpv1.KickSessionRequest{SessionId: args[0], Reason: reason}
			if addr, err := netip.ParseAddr(args[0]); err == nil {
				if !addr.Is4() {
					return usageErrorf("invalid ADDR %q: want an IPv4 address or a session id", args[0])
				}
				req = &dpv1.KickSessionRequest{Address: addr.String(), Reason: reason}
			}
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.dp().KickSession(ctx, req)
			if err != nil {
				return notFound(a.rpcError(a.dataplane, err), "no session %s on data plane at %s", args[0], a.dataplane.addressText())
			}
			out := SessionKick{IPv4: resp.GetAddress(), Session: resp.GetSessionId()}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "Closed session %s (%s).\n", orDash(out.Session), orDash(out.IPv4))
			})
		},
	}
	kick.Flags().StringVar(&reason, "reason", "", "why, for the data plane's log")
	return groupCommand("sessions", "Client connections on one data plane (--dataplane)",
		needs(list, needDataplane), needs(kick, needDataplane))
}

func (a *app) listSessions(cmd *cobra.Command) ([]Session, error) {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	stream, err := a.dp().ListSessions(ctx, &dpv1.ListSessionsRequest{})
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
	refused := make(map[string]uint64, len(s.GetRefused()))
	for k, v := range s.GetRefused() {
		refused[k] = v
	}
	l := s.GetLimits()
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
		Draining:            s.GetDraining(),
		InstanceID:          s.GetInstanceId(),
		Goroutines:          s.GetGoroutines(),
		OpenFDs:             s.GetOpenFds(),
		Refused:             refused,
		PID:                 s.GetPid(),
		ProcessStartedAt:    timestamp(s.GetProcessStartedAt()),
		HandoffsTotal:       s.GetHandoffsTotal(),
		Limits: Limits{
			MaxClients:        l.GetMaxClients(),
			MaxConnsPerIP:     l.GetMaxConnsPerIp(),
			MaxConnsPerPrefix: l.GetMaxConnsPerPrefix(),
			PrefixLength:      l.GetPrefixLength(),
			AcceptRate:        l.GetAcceptRate(),
			AcceptBurst:       l.GetAcceptBurst(),
		},
		BGP: bgpFromProto(s.GetBgp()),
	}
}

func bgpFromProto(b *dpv1.Bgp) BGP {
	out := BGP{Sessions: []BGPSession{}, HoldTime: "0s", GracefulRestart: "0s"} // never null in JSON
	if b == nil {
		return out
	}
	out.Enabled = true
	out.ASN, out.RouterID, out.NextHop = b.GetAsn(), b.GetRouterId(), b.GetNextHop()
	out.HoldTime, out.GracefulRestart = msDuration(b.GetHoldTimeMs()), msDuration(b.GetGracefulRestartMs())
	out.Announced, out.Aggregate, out.Pending, out.FailedTotal = b.GetAnnounced(), b.GetAggregate(), b.GetPending(), b.GetFailedTotal()
	for _, p := range b.GetSessions() {
		out.Sessions = append(out.Sessions, BGPSession{
			Peer: p.GetPeerAddress(), PeerPort: p.GetPeerPort(), PeerASN: p.GetPeerAsn(), State: p.GetState(),
			EstablishedSince: timestamp(p.GetEstablishedAt()), Uptime: msDuration(p.GetUptimeMs()),
			PrefixesSent: p.GetPrefixesSent(), PrefixesReceived: p.GetPrefixesReceived(),
			LocalAddress: p.GetLocalAddress(), RouterID: p.GetRouterId(), Flaps: p.GetFlaps(),
			GracefulRestart: p.GetGracefulRestart(), LastError: p.GetLastError(),
		})
	}
	return out
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
	if s.Draining {
		fmt.Fprintf(w, "Draining:\tyes, accepting no new clients\n")
	} else {
		fmt.Fprintf(w, "Draining:\tno\n")
	}
	fmt.Fprintf(w, "Limits:\t%s\n", limitsText(s.Limits))
	fmt.Fprintf(w, "Refused:\t%s\n", countsText(s.Refused))
	fmt.Fprintf(w, "Drops:\t%s\n", countsText(s.Drops))
	if s.PID > 0 {
		fmt.Fprintf(w, "Process:\t%d, %d hand-offs\n", s.PID, s.HandoffsTotal)
	}
	if s.Goroutines > 0 || s.OpenFDs > 0 {
		fmt.Fprintf(w, "Resources:\t%d goroutines, %d open files\n", s.Goroutines, s.OpenFDs)
	}
	bgpTable(w, s.BGP)
}

// bgpTable prints the speaker on one line and each session on its own.
func bgpTable(w io.Writer, b BGP) {
	if !b.Enabled {
		fmt.Fprintf(w, "BGP:\toff\n")
		return
	}
	nh := b.NextHop
	if nh == "" {
		nh = "each session's local address"
	}
	gr := "off"
	if b.GracefulRestart != "0s" && b.GracefulRestart != "" {
		gr = b.GracefulRestart
	}
	routes := fmt.Sprintf("%d client routes", b.Announced)
	if b.Aggregate != "" {
		routes += " and the pool " + b.Aggregate
	}
	fmt.Fprintf(w, "BGP:\tAS %d, router id %s, next hop %s, hold time %s, graceful restart %s; %s announced",
		b.ASN, orDash(b.RouterID), nh, b.HoldTime, gr, routes)
	if b.Pending > 0 {
		fmt.Fprintf(w, ", %d changes pending", b.Pending)
	}
	if b.FailedTotal > 0 {
		fmt.Fprintf(w, ", %d changes failed", b.FailedTotal)
	}
	fmt.Fprintln(w)
	for _, p := range b.Sessions {
		peer := p.Peer
		if p.PeerPort != 0 && p.PeerPort != 179 {
			peer = net.JoinHostPort(p.Peer, fmt.Sprint(p.PeerPort))
		}
		line := fmt.Sprintf("%s AS %d: %s", peer, p.PeerASN, p.State)
		if p.State == "established" {
			up := p.Uptime
			if d, err := time.ParseDuration(p.Uptime); err == nil {
				up = shortDuration(d)
			}
			line += fmt.Sprintf(" for %s, %d prefixes sent, local address %s", up, p.PrefixesSent, orDash(p.LocalAddress))
			if p.GracefulRestart {
				line += ", graceful restart"
			}
		} else if p.LastError != "" {
			line += " (last down: " + p.LastError + ")"
		}
		fmt.Fprintf(w, "BGP peer:\t%s\n", line)
	}
}

// countsText renders reason -> count as "a 1, b 5" (sorted), "none" when empty.
func countsText(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	reasons := make([]string, 0, len(m))
	for r := range m {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s %d", r, m[r])
	}
	return strings.Join(parts, ", ")
}

func limitsText(l Limits) string {
	num := func(n uint32) string {
		if n == 0 {
			return "unlimited"
		}
		return fmt.Sprint(n)
	}
	rate := "unlimited"
	if l.AcceptRate > 0 {
		rate = fmt.Sprintf("%g/s (burst %d)", l.AcceptRate, l.AcceptBurst)
	}
	perPrefix := num(l.MaxConnsPerPrefix)
	if l.PrefixLength > 0 {
		perPrefix += fmt.Sprintf(" per /%d", l.PrefixLength)
	}
	return fmt.Sprintf("clients %s, per IPv6 address %s, per prefix %s, accept rate %s",
		num(l.MaxClients), num(l.MaxConnsPerIP), perPrefix, rate)
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

func (a *app) dataplaneUpgradeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Hand the local data plane over, live, to a new process of its binary",
		Long: `Have the data plane at --dataplane hand over to a new process of the binary at
its path, started with the same arguments (what SIGUSR2 does): the listeners,
the TUN, every client connection and each session's state go to the new
process, which carries on the same instance at the controller; the old one
exits. Clients stay connected, with the same addresses; their traffic stands
still for the pause printed. Install the new binary first (rename it over the
old one). When the new process fails to start or is not ready in time, the
old one serves on and this exits 1 with the reason.`,
		Example: `  install -m 755 4over6-dataplane.new /usr/local/bin/4over6-dataplane && 4over6ctl dataplane upgrade
  4over6ctl dataplane upgrade -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.dp().Upgrade(ctx, &dpv1.UpgradeRequest{})
			if err != nil {
				return a.rpcError(a.dataplane, err)
			}
			out := DataplaneUpgrade{
				OldPID: resp.GetOldPid(), NewPID: resp.GetNewPid(), OldVersion: resp.GetOldVersion(),
				Sessions: resp.GetSessions(), TookMs: resp.GetTookMs(), PausedMs: resp.GetPausedMs(),
			}
			// The new process answers on the same socket once it serves.
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
				st, err := a.dataplaneStatus(ctx)
				if err == nil && st.PID == out.NewPID {
					out.NewVersion = st.Version
					break
				}
			}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "Handed over: process %d (version %s) to %d (version %s): %d sessions, traffic paused %d ms, took %d ms.\n",
					out.OldPID, orDash(out.OldVersion), out.NewPID, orDash(out.NewVersion), out.Sessions, out.PausedMs, out.TookMs)
			})
		},
	}
	return needs(cmd, needDataplane)
}
