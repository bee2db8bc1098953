// Package bgp is the data plane's BGP speaker: it tells the routers of the
// access network that each client address it holds is reachable through
// this host, by announcing a /32 per client (and, optionally, the pool as
// an aggregate) to configured peers, and withdraws them when the clients
// go or the data plane stops.
//
// The protocol is GoBGP's (github.com/osrg/gobgp/v4), used as a library:
// no hand-written speaker. Only BGP sessions are opened: GoBGP's gRPC API
// is never started, nothing listens unless Config.ListenPort asks for it
// (we dial out to configured peers), and routes learnt from peers are
// dropped on import, so the data plane never carries or re-advertises
// other routes.
//
// Announce and Withdraw are what the data plane's lease path calls: they
// record the wish and return at once; one worker applies the wishes to
// GoBGP in batches. See changes for what happens under churn.
//
// # Graceful restart and hand-off
//
// With Config.RestartTime set, every session negotiates graceful restart
// (RFC 4724) for IPv4 unicast. A live hand-off to a successor process goes:
//
//  1. The successor takes over the clients, creates its speaker with
//     Restarting set, calls Announce for every client address it now
//     holds, then Start.
//  2. The predecessor calls Handoff: its sessions close without a
//     NOTIFICATION and without withdrawing anything, so each router keeps
//     the routes, marked stale, for the restart time.
//  3. The successor's sessions come up with the Restart State bit set.
//     GoBGP waits for each router's End-of-RIB, then sends the full table
//     and its own End-of-RIB; the router drops whatever stale route the
//     successor did not announce again. Traffic toward clients that stayed
//     never stops.
//
// A crash (the process killed) looks the same to the routers as step 2, so
// a restarted data plane started with Restarting keeps the routes of
// clients that reconnect to it in time. Stop, in contrast, withdraws
// everything and says goodbye with a Cease NOTIFICATION.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Errors of the speaker's life cycle.
var (
	ErrStopped           = errors.New("BGP speaker stopped")
	ErrNoGracefulRestart = errors.New("BGP graceful restart is off (restart time 0): a hand-off would drop the routes; use Stop")
)

// batchSize bounds the paths handed to GoBGP in one call: each call holds
// GoBGP's management loop, which peer events and Status also need.
const batchSize = 512

// importPolicy accepts our own routes into GoBGP's table and nothing that
// peers send: the data plane is no transit router.
const importPolicy = "fourover6-local-only"

type lifecycle int32

const (
	created lifecycle = iota
	running
	stopped
)

// Speaker announces client addresses over BGP. Create it with New, then
// Start; Announce, Withdraw and SetAggregate work in any state (before
// Start they are applied at Start; after Stop they are refused).
type Speaker struct {
	cfg     Config
	log     *slog.Logger
	srv     *server.BgpServer
	pending *changes

	// mu serialises Start, Stop and Handoff; state is also read without
	// it, so that Announce never waits for a Start that is loading a big
	// table.
	mu    sync.Mutex
	state atomic.Int32 // lifecycle
	// cancelWatch ends the peer event watcher; set by Start.
	cancelWatch context.CancelFunc

	small   sync.Mutex            // held only briefly; guards agg and lastErr
	agg     netip.Prefix          // the aggregate last asked for
	lastErr map[netip.Addr]string // why each session last went down

	// rib is what is in GoBGP's table; only the worker (or Start, before
	// the worker runs) touches it.
	rib        map[netip.Prefix]struct{}
	announced  atomic.Int64                 // /32s in rib
	aggApplied atomic.Pointer[netip.Prefix] // the aggregate in rib, if any

	applied, failed atomic.Uint64

	quit chan struct{} // closed by Stop/Handoff: the worker returns
	done chan struct{} // closed by the worker
}

// New checks cfg and returns a speaker ready to Start. The router id
// defaults to DefaultRouterID.
func New(cfg Config) (*Speaker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !cfg.RouterID.IsValid() {
		id, err := DefaultRouterID()
		if err != nil {
			return nil, err
		}
		cfg.RouterID = id
	}
	cfg.Peers = slices.Clone(cfg.Peers)
	cfg.Communities = slices.Clone(cfg.Communities)
	s := &Speaker{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "bgp"),
		pending: newChanges(),
		rib:     make(map[netip.Prefix]struct{}),
		lastErr: make(map[netip.Addr]string),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if cfg.Aggregate.IsValid() {
		s.agg = cfg.Aggregate
		s.pending.set(cfg.Aggregate, true)
	}
	return s, nil
}

// Config returns the speaker's configuration with its defaults filled in.
func (s *Speaker) Config() Config {
	c := s.cfg
	c.Peers = slices.Clone(c.Peers)
	c.Communities = slices.Clone(c.Communities)
	return c
}

// Start brings up GoBGP, puts every route asked for so far into its table
// and adds the peers; sessions come up in the background (Status shows
// them). ctx bounds the start only; Stop or Handoff end the speaker.
func (s *Speaker) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch lifecycle(s.state.Load()) {
	case running:
		return errors.New("BGP speaker already started")
	case stopped:
		return ErrStopped
	}
	s.srv = server.NewBgpServer(server.LoggerOption(slog.New(demoteInfo{s.log.Handler()}), nil))
	go s.srv.Serve()
	if err := s.startBGP(ctx); err != nil {
		s.srv.Stop()
		s.state.Store(int32(stopped))
		close(s.done)
		return err
	}
	// The routes go in before the peers, so that the first UPDATEs of each
	// session carry the whole table: a restarting speaker's End-of-RIB
	// must not come before routes that the data plane already holds.
	s.flush()
	for _, p := range s.cfg.Peers {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConf(p)}); err != nil {
			s.cancelWatch()
			s.srv.Stop()
			s.state.Store(int32(stopped))
			close(s.done)
			return fmt.Errorf("BGP peer %s: %v", p, err)
		}
	}
	s.state.Store(int32(running))
	go s.run()
	s.log.Info("BGP speaker started", "asn", s.cfg.ASN, "router_id", s.cfg.RouterID,
		"peers", len(s.cfg.Peers), "routes", s.announced.Load(), "listen_port", s.cfg.ListenPort,
		"graceful_restart", s.cfg.RestartTime, "restarting", s.cfg.Restarting)
	return nil
}

func (s *Speaker) startBGP(ctx context.Context) error {
	port := int32(-1) // GoBGP: no listener
	if s.cfg.ListenPort != 0 {
		port = int32(s.cfg.ListenPort)
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: s.cfg.ASN, RouterId: s.cfg.RouterID.String(), ListenPort: port,
	}}); err != nil {
		return fmt.Errorf("BGP: start: %v", err)
	}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: importPolicy,
		Statements: []*api.Statement{{
			Name:       importPolicy + "-accept",
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}},
	}}); err != nil {
		return fmt.Errorf("BGP: import policy: %v", err)
	}
	if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Direction:     api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		Policies:      []*api.Policy{{Name: importPolicy}},
		DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}}); err != nil {
		return fmt.Errorf("BGP: import policy: %v", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	if err := s.srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.peerEvent}, server.WatchPeer()); err != nil {
		cancel()
		return fmt.Errorf("BGP: watch peers: %v", err)
	}
	s.cancelWatch = cancel
	return nil
}

func (s *Speaker) peerConf(p Peer) *api.Peer {
	ipv4 := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	secs := func(d time.Duration) uint64 { return uint64(d / time.Second) }
	hold := secs(s.cfg.HoldTime)
	keepalive := hold / 3
	pc := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Addr.String(), PeerAsn: p.ASN},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry: secs(s.cfg.ConnectRetry), HoldTime: hold, KeepaliveInterval: keepalive,
			IdleHoldTimeAfterReset: secs(s.cfg.ConnectRetry),
		}},
		Transport: &api.Transport{RemotePort: uint32(p.port())},
		// IPv4 unicast on every session, IPv6 ones included (GoBGP would
		// pick IPv6 unicast for an IPv6 neighbour).
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: ipv4, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: s.cfg.RestartTime > 0}},
		}},
	}
	if hold == 0 {
		// GoBGP reads 0 as "default (90 s)"; RFC 4271 lets the smaller
		// proposal win, and 0 means no keepalives at all.
		pc.Timers.Config.HoldTime, pc.Timers.Config.KeepaliveInterval = 0, 0
	}
	if s.cfg.RestartTime > 0 {
		pc.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(secs(s.cfg.RestartTime)),
			LocalRestarting: s.cfg.Restarting,
			// A restarting speaker defers its UPDATEs until every peer
			// sent End-of-RIB, or this many seconds (RFC 4724 4.1), so
			// that its best paths include the peers' routes. Ours never
			// do (we import nothing): one second is all the wait a peer
			// that is down or slow should cost the others.
			DeferralTime: 1,
		}
	}
	return pc
}

func (s *Speaker) peerEvent(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	attrs := []any{"peer", st.NeighborAddress, "peer_asn", st.PeerASN, "state", stateName(st.SessionState)}
	switch st.SessionState {
	case bgppkt.BGP_FSM_ESTABLISHED:
		s.log.Info("BGP session up", append(attrs, "router_id", st.RouterID)...)
	case bgppkt.BGP_FSM_IDLE, bgppkt.BGP_FSM_ACTIVE:
		if st.DisconnectReason != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
			why := disconnectReason(st.DisconnectReason)
			if m := st.DisconnectMessage; m != "" && strings.ReplaceAll(m, "-", " ") != why {
				why += ": " + m
			}
			s.small.Lock()
			s.lastErr[st.NeighborAddress] = why
			s.small.Unlock()
			if lifecycle(s.state.Load()) == stopped {
				s.log.Debug("BGP session closed", append(attrs, "reason", why)...) // by Stop or Handoff
				return
			}
			s.log.Warn("BGP session down", append(attrs, "reason", why)...)
			return
		}
		s.log.Debug("BGP session state", attrs...)
	default:
		s.log.Debug("BGP session state", attrs...)
	}
}

// Announce asks for addr/32 to be announced. It never blocks: the route
// reaches the routers after the worker's next batch. Only IPv4 addresses
// are accepted.
func (s *Speaker) Announce(addr netip.Addr) error { return s.want(addr, true) }

// Withdraw asks for addr/32 to be withdrawn; like Announce, it never
// blocks. Withdrawing an address that is not announced does nothing.
func (s *Speaker) Withdraw(addr netip.Addr) error { return s.want(addr, false) }

func (s *Speaker) want(addr netip.Addr, on bool) error {
	addr = addr.Unmap()
	if !addr.Is4() || addr.IsUnspecified() {
		return fmt.Errorf("BGP: %v is not an IPv4 client address", addr)
	}
	if lifecycle(s.state.Load()) == stopped {
		return ErrStopped
	}
	s.pending.set(netip.PrefixFrom(addr, 32), on)
	return nil
}

// SetAggregate replaces the aggregate announced besides the /32s (see
// Config.Aggregate); the zero prefix withdraws it. Like Announce, it
// returns at once.
func (s *Speaker) SetAggregate(p netip.Prefix) error {
	if err := checkAggregate(p); err != nil {
		return err
	}
	if lifecycle(s.state.Load()) == stopped {
		return ErrStopped
	}
	s.small.Lock()
	defer s.small.Unlock()
	if p == s.agg {
		return nil
	}
	if s.agg.IsValid() {
		s.pending.set(s.agg, false)
	}
	if p.IsValid() {
		s.pending.set(p, true)
	}
	s.agg = p
	return nil
}

// run applies pending changes until Stop or Handoff.
func (s *Speaker) run() {
	defer close(s.done)
	for {
		select {
		case <-s.quit:
			return
		case <-s.pending.kick:
			s.flush()
		}
	}
}

// flush moves every pending change into GoBGP's table, in batches.
func (s *Speaker) flush() {
	m := s.pending.take()
	if len(m) == 0 {
		return
	}
	defer s.pending.done()
	var add, del []netip.Prefix
	for p, on := range m {
		_, in := s.rib[p]
		switch {
		case on && !in:
			add = append(add, p)
		case !on && in:
			del = append(del, p)
		}
	}
	// Withdrawals first: an address that moved to another data plane must
	// not linger here, and an aggregate swap never shows two aggregates.
	for chunk := range slices.Chunk(del, batchSize) {
		paths := make([]*apiutil.Path, len(chunk))
		for i, p := range chunk {
			paths[i] = s.path(p, true)
		}
		if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: paths}); err != nil {
			s.failed.Add(uint64(len(chunk)))
			s.log.Error("BGP: withdraw failed; the routes stay announced until withdrawn again", "routes", len(chunk), "err", err)
			continue
		}
		for _, p := range chunk {
			delete(s.rib, p)
			s.applied.Add(1)
			if p.Bits() == 32 {
				s.announced.Add(-1)
			} else {
				s.aggApplied.Store(nil)
			}
		}
	}
	for chunk := range slices.Chunk(add, batchSize) {
		paths := make([]*apiutil.Path, len(chunk))
		for i, p := range chunk {
			paths[i] = s.path(p, false)
		}
		resps, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: paths})
		for i, p := range chunk {
			if err != nil && (len(resps) != len(chunk) || resps[i].Error != nil) {
				s.failed.Add(1)
				continue
			}
			s.rib[p] = struct{}{}
			s.applied.Add(1)
			if p.Bits() == 32 {
				s.announced.Add(1)
			} else {
				s.aggApplied.Store(&p)
			}
		}
		if err != nil {
			s.log.Error("BGP: announce failed; the routes are not announced until asked again", "routes", len(chunk), "err", err)
		}
	}
	s.log.Debug("BGP routes updated", "announced", len(add), "withdrawn", len(del), "coalesced", len(m)-len(add)-len(del))
}

// path builds the GoBGP path for p. With no configured next hop it is
// 0.0.0.0, which GoBGP replaces per session by the session's local address.
func (s *Speaker) path(p netip.Prefix, withdraw bool) *apiutil.Path {
	nlri, _ := bgppkt.NewIPAddrPrefix(p) // p is a valid IPv4 prefix: cannot fail
	nh := s.cfg.NextHop
	if !nh.IsValid() {
		nh = netip.IPv4Unspecified()
	}
	nhAttr, _ := bgppkt.NewPathAttributeNextHop(nh) // valid address: cannot fail
	attrs := []bgppkt.PathAttributeInterface{bgppkt.NewPathAttributeOrigin(bgppkt.BGP_ORIGIN_ATTR_TYPE_IGP), nhAttr}
	if len(s.cfg.Communities) > 0 {
		cs := make([]uint32, len(s.cfg.Communities))
		for i, c := range s.cfg.Communities {
			cs[i] = uint32(c)
		}
		attrs = append(attrs, bgppkt.NewPathAttributeCommunities(cs))
	}
	return &apiutil.Path{Family: bgppkt.RF_IPv4_UC, Nlri: nlri, Attrs: attrs, Withdrawal: withdraw}
}

// end marks the speaker stopped and tells the worker to return. It
// reports whether the speaker was running: then the caller, after the
// worker is done, shuts GoBGP down.
func (s *Speaker) end() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch lifecycle(s.state.Load()) {
	case created:
		s.state.Store(int32(stopped))
		close(s.done)
		return false, nil
	case stopped:
		return false, ErrStopped
	}
	s.state.Store(int32(stopped))
	close(s.quit)
	return true, nil
}

// Stop withdraws every route, waits (bounded by ctx, at most a second when
// ctx has no deadline) for the withdrawals to go out, then closes every
// session with a Cease NOTIFICATION (administrative shutdown), after which
// a router drops whatever it still had from us anyway. Pending changes are
// discarded.
func (s *Speaker) Stop(ctx context.Context) error {
	wasRunning, err := s.end()
	if !wasRunning {
		return err
	}
	<-s.done
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Second)
		defer cancel()
	}
	before := s.sentUpdates()
	if err := s.srv.DeletePath(apiutil.DeletePathRequest{DeleteAll: true}); err != nil {
		s.log.Warn("BGP: withdraw all failed; closing the sessions withdraws the routes anyway", "err", err)
	} else {
		s.awaitSent(ctx, before)
	}
	n := s.announced.Swap(0)
	s.aggApplied.Store(nil)
	for _, p := range s.cfg.Peers {
		// Administrative shutdown (RFC 8203) says why, and keeps GoBGP
		// from dialling again before StopBgp removes the peer.
		if err := s.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: p.Addr.String(), Communication: "fourover6 data plane stopping"}); err != nil {
			s.log.Warn("BGP: shut down session", "peer", p.Addr, "err", err)
		}
	}
	s.awaitDown(ctx)
	s.shutdown(false)
	s.log.Info("BGP speaker stopped: routes withdrawn, sessions closed", "withdrawn", n)
	return nil
}

// Handoff closes every session without NOTIFICATION and without
// withdrawing, so that the routers keep the routes (stale, for the restart
// time) until a successor started with Config.Restarting takes over; see
// the package documentation. It needs graceful restart.
func (s *Speaker) Handoff() error {
	if s.cfg.RestartTime == 0 {
		return ErrNoGracefulRestart
	}
	wasRunning, err := s.end()
	if !wasRunning {
		return err
	}
	<-s.done
	s.shutdown(true)
	s.log.Info("BGP speaker handed off: sessions closed, routes left to the successor",
		"routes", s.announced.Load(), "restart_time", s.cfg.RestartTime)
	return nil
}

func (s *Speaker) shutdown(keepRoutes bool) {
	s.mu.Lock()
	cancel := s.cancelWatch
	s.mu.Unlock()
	if err := s.srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: keepRoutes}); err != nil {
		s.log.Warn("BGP: stop", "err", err)
	}
	cancel()
}

// sentUpdates counts the UPDATE messages sent on each established session
// that has routes to withdraw.
func (s *Speaker) sentUpdates() map[string]uint64 {
	m := make(map[string]uint64)
	_ = s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if p.State.GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED {
			return
		}
		var adv uint64
		for _, af := range p.AfiSafis {
			adv += af.GetState().GetAdvertised()
		}
		if adv > 0 {
			m[p.Conf.NeighborAddress] = p.State.GetMessages().GetSent().GetUpdate()
		}
	})
	return m
}

// awaitSent waits until every session in before has sent UPDATEs since
// (the withdrawals, which GoBGP packs into several) and its count has
// stayed put for a few polls, or ctx ends.
func (s *Speaker) awaitSent(ctx context.Context, before map[string]uint64) {
	if len(before) == 0 {
		return
	}
	const settle = 3 // polls without a new UPDATE
	last, quiet := map[string]uint64{}, 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for quiet < settle {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := map[string]uint64{}
		sent := true
		_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			addr := p.Conf.NeighborAddress
			n, ok := before[addr]
			if !ok || p.State.GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED {
				return // gone down: nothing more to wait for there
			}
			now[addr] = p.State.GetMessages().GetSent().GetUpdate()
			if now[addr] <= n {
				sent = false
			}
		})
		if sent && maps.Equal(now, last) {
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
}

// awaitDown waits until no session is established, or ctx ends.
func (s *Speaker) awaitDown(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		up := false
		_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			up = up || p.State.GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
		})
		if !up {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
