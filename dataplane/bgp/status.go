package bgp

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// Status is the speaker at a glance, for `4over6ctl dataplane status` and
// the metrics.
type Status struct {
	ASN         uint32
	RouterID    netip.Addr
	Running     bool
	NextHop     netip.Addr    // configured; zero: each session's local address
	RestartTime time.Duration // graceful restart; 0: off
	Restarting  bool
	Announced   int          // /32s in the table, sent to every established session
	Aggregate   netip.Prefix // the aggregate in the table, if any
	Pending     int          // changes asked for and not yet in the table
	Applied     uint64       // route changes put into the table since New
	Failed      uint64       // route changes GoBGP refused (logged)
	Peers       []PeerStatus // in configuration order
}

// PeerStatus is one session.
type PeerStatus struct {
	Peer
	State        string    // idle, connect, active, opensent, openconfirm, established
	Since        time.Time // established at; zero unless established
	Uptime       time.Duration
	LocalAddress netip.Addr // our end of the session: the default next hop
	RouterID     netip.Addr // the peer's
	PrefixesSent uint64     // routes the peer has from us
	// PrefixesReceived counts what the peer sent us; it is all dropped.
	PrefixesReceived uint64
	Flaps            uint32
	// GracefulRestart: both sides announced the capability, so a hand-off
	// keeps the routes at this peer.
	GracefulRestart bool
	LastError       string // why the session last went down, if it did
}

// Established reports whether the session is up.
func (p PeerStatus) Established() bool { return p.State == "established" }

// Status returns a snapshot. It asks GoBGP for the session states, which
// takes a turn of GoBGP's management loop.
func (s *Speaker) Status() Status {
	st := Status{
		ASN: s.cfg.ASN, RouterID: s.cfg.RouterID, NextHop: s.cfg.NextHop,
		RestartTime: s.cfg.RestartTime, Restarting: s.cfg.Restarting,
		Announced: int(s.announced.Load()), Pending: s.pending.len(),
		Applied: s.applied.Load(), Failed: s.failed.Load(),
	}
	if p := s.aggApplied.Load(); p != nil {
		st.Aggregate = *p
	}
	st.Running = lifecycle(s.state.Load()) == running
	s.small.Lock()
	lastErr := maps.Clone(s.lastErr)
	s.small.Unlock()
	byAddr := make(map[netip.Addr]PeerStatus, len(s.cfg.Peers))
	if st.Running {
		now := time.Now()
		_ = s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			if err != nil {
				return
			}
			byAddr[addr] = peerStatus(p, now)
		})
	}
	for _, p := range s.cfg.Peers {
		ps, ok := byAddr[p.Addr]
		if !ok {
			ps = PeerStatus{State: "idle"}
		}
		ps.Peer = p
		ps.LastError = lastErr[p.Addr]
		st.Peers = append(st.Peers, ps)
	}
	return st
}

func peerStatus(p *api.Peer, now time.Time) PeerStatus {
	state := p.GetState()
	ps := PeerStatus{
		State: strings.ToLower(strings.TrimPrefix(state.GetSessionState().String(), "SESSION_STATE_")),
		Flaps: state.GetFlops(),
	}
	if !ps.Established() {
		return ps
	}
	if up := p.GetTimers().GetState().GetUptime(); up != nil {
		ps.Since = up.AsTime()
		ps.Uptime = now.Sub(ps.Since).Truncate(time.Second)
	}
	ps.LocalAddress, _ = netip.ParseAddr(p.GetTransport().GetLocalAddress())
	ps.RouterID, _ = netip.ParseAddr(state.GetRouterId())
	for _, af := range p.GetAfiSafis() {
		ps.PrefixesSent += af.GetState().GetAdvertised()
		ps.PrefixesReceived += af.GetState().GetReceived()
	}
	if p.GetGracefulRestart().GetEnabled() {
		if caps, err := apiutil.UnmarshalCapabilities(state.GetRemoteCap()); err == nil {
			ps.GracefulRestart = slices.ContainsFunc(caps, func(c bgppkt.ParameterCapabilityInterface) bool {
				return c.Code() == bgppkt.BGP_CAP_GRACEFUL_RESTART
			})
		}
	}
	return ps
}

func stateName(s bgppkt.FSMState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BGP_FSM_"))
}

func disconnectReason(r api.PeerState_DisconnectReason) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(r.String(), "DISCONNECT_REASON_")), "_", " ")
}

// demoteInfo hands GoBGP's records to our handler with info lowered to
// debug: GoBGP narrates every state change at info, which the speaker logs
// itself in the data plane's terms. Warnings and errors pass unchanged.
type demoteInfo struct{ h slog.Handler }

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

func (d demoteInfo) Enabled(ctx context.Context, l slog.Level) bool {
	return d.h.Enabled(ctx, demote(l))
}

func (d demoteInfo) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return d.h.Handle(ctx, r)
}

func (d demoteInfo) WithAttrs(as []slog.Attr) slog.Handler { return demoteInfo{d.h.WithAttrs(as)} }
func (d demoteInfo) WithGroup(g string) slog.Handler       { return demoteInfo{d.h.WithGroup(g)} }
