package main

import (
	"sync/atomic"

	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// These tests run the real client (real TUN, real netlink, real TCP) in a
// network namespace of their own, against a fake lab server on [::1]. The
// namespace has a pre-existing IPv4 default route (via 192.0.2.254 on a
// veth) so that taking and restoring it can be checked.

const (
	// lease101 is the 101 of PROTOCOL.md, byte for byte.
	lease101 = "13.8.0.2 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1 "
	tunName  = "4o6c"
	// patience bounds every wait: a broken client fails the test instead of
	// hanging it. Nothing asserts on how long things take.
	patience = 10 * time.Second
)

var (
	gateway = netip.MustParseAddr("13.8.0.1")
	oldGW   = netip.MustParseAddr("192.0.2.254")
)

type testNet struct {
	ns netns.NsHandle
	ln *net.TCPListener
}

// newTestNet creates the namespace: lo up, veth v0/v1 with 192.0.2.1/24 on
// v0, default route via 192.0.2.254, and the fake server's listener.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	tn := &testNet{}
	tn.ns = netnstest.Do(t, func(netns.NsHandle) {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Errorf("lo up: %v", err)
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Errorf("add veth: %v", err)
			return
		}
		for _, n := range []string{"v0", "v1"} {
			l, err := netlink.LinkByName(n)
			if err == nil {
				err = netlink.LinkSetUp(l)
			}
			if err != nil {
				t.Errorf("%s up: %v", n, err)
				return
			}
		}
		v0, _ := netlink.LinkByName("v0")
		a, _ := netlink.ParseAddr("192.0.2.1/24")
		if err := netlink.AddrAdd(v0, a); err != nil {
			t.Errorf("address v0: %v", err)
			return
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: v0.Attrs().Index, Gw: oldGW.AsSlice()}); err != nil {
			t.Errorf("default route: %v", err)
			return
		}
		ln, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Errorf("listen: %v", err)
			return
		}
		tn.ln = ln.(*net.TCPListener)
	})
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { tn.ln.Close() })
	return tn
}

func (tn *testNet) in(t *testing.T, fn func()) { t.Helper(); netnstest.In(t, tn.ns, fn) }

// testConfig is the client's default configuration pointed at the fake server.
func (tn *testNet) testConfig() config {
	return config{
		server:            tn.ln.Addr().String(),
		tunName:           tunName,
		tunBackend:        tun.BackendWater,
		mtu:               1500,
		keepaliveInterval: 20 * time.Second,
		keepaliveTimeout:  60 * time.Second,
		reconnectMin:      50 * time.Millisecond,
		reconnectMax:      200 * time.Millisecond,
		helloResend:       helloResend,
	}
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runningClient is a client whose run goroutine lives in the test namespace.
type runningClient struct {
	c      *client
	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
	err    error
}

func (tn *testNet) startClient(t *testing.T, cfg config) *runningClient {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rc := &runningClient{c: newClient(cfg, log), errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	rc.cancel = cancel
	go func() {
		// run does its netlink work on its own thread, so that thread goes
		// into the namespace. It is never unlocked: the runtime discards it
		// when this goroutine ends instead of reusing it elsewhere.
		runtime.LockOSThread()
		if err := netns.Set(tn.ns); err != nil {
			rc.errc <- err
			return
		}
		rc.errc <- rc.c.run(ctx)
	}()
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

// stop cancels the client (like SIGINT) and returns what run returned.
func (rc *runningClient) stop(t *testing.T) error {
	rc.once.Do(func() {
		rc.cancel()
		select {
		case rc.err = <-rc.errc:
		case <-time.After(patience):
			t.Error("client did not stop after cancel")
		}
	})
	return rc.err
}

// wait returns run's result without cancelling (for --once).
func (rc *runningClient) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-rc.errc:
		rc.once.Do(func() { rc.err = err })
		return err
	case <-time.After(patience):
		t.Fatal("client did not return")
		return nil
	}
}

// srvConn is one connection of the fake lab server.
type srvConn struct {
	t   *testing.T
	c   *net.TCPConn
	dec *wire.Decoder
}

func (tn *testNet) accept(t *testing.T) *srvConn {
	t.Helper()
	_ = tn.ln.SetDeadline(time.Now().Add(patience))
	c, err := tn.ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &srvConn{t: t, c: c, dec: wire.NewDecoder(c, 0)}
}

func (s *srvConn) next() wire.Msg {
	s.t.Helper()
	_ = s.c.SetReadDeadline(time.Now().Add(patience))
	m, err := s.dec.Next()
	if err != nil {
		s.t.Fatalf("server read: %v", err)
	}
	return m
}

// expect returns the next message of type typ, skipping 104s.
func (s *srvConn) expect(typ wire.Type) wire.Msg {
	s.t.Helper()
	for {
		m := s.next()
		if m.Type == typ {
			return m
		}
		if m.Type != wire.TypeKeepalive {
			s.t.Fatalf("got %v, want %v", m.Type, typ)
		}
	}
}

func (s *srvConn) send(typ wire.Type, data []byte) {
	s.t.Helper()
	if _, err := s.c.Write(wire.AppendMsg(nil, typ, data)); err != nil {
		s.t.Fatalf("server write: %v", err)
	}
}

// ping sends a 103 with an ICMP echo request from the gateway to dst and
// waits for the kernel's echo reply as a 102: that crosses 103 -> TUN ->
// kernel -> TUN -> 102.
func (s *srvConn) ping(dst netip.Addr, seq uint16) {
	s.t.Helper()
	payload := []byte("4over6 client test")
	s.send(wire.TypeNetResponse, packet.BuildICMPEcho(gateway, dst, 0x4646, seq, payload, false))
	for {
		m := s.next()
		switch m.Type {
		case wire.TypeKeepalive, wire.TypeAddrRequest:
			// A 100 the client resent before our 101 reached it (a
			// busy machine) may still be on its way: not traffic.
			continue
		case wire.TypeNetRequest:
		default:
			s.t.Fatalf("got %v, want %v", m.Type, wire.TypeNetRequest)
		}
		p := m.Data
		if _, prob := packet.CheckIPv4(p); prob != packet.OK {
			s.t.Fatalf("102 is not IPv4: %v", prob)
		}
		if p[9] != 1 || p[20] != 0 { // not an ICMP echo reply: unrelated traffic
			continue
		}
		if packet.Src(p) != dst || packet.Dst(p) != gateway ||
			binary.BigEndian.Uint16(p[24:]) != 0x4646 || binary.BigEndian.Uint16(p[26:]) != seq ||
			!bytes.Equal(p[28:], payload) {
			s.t.Fatalf("unexpected echo reply % x", p)
		}
		return
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// netView is what the namespace looks like.
type netView struct {
	tunIndex int // 0: no TUN
	tunAddrs []netip.Prefix
	defaults []netlink.Route
	routes   []netlink.Route // IPv4 main table, through the TUN
}

func (tn *testNet) view(t *testing.T) netView {
	t.Helper()
	var v netView
	tn.in(t, func() {
		if l, err := netlink.LinkByName(tunName); err == nil {
			v.tunIndex = l.Attrs().Index
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, a := range addrs {
				ip, _ := netip.AddrFromSlice(a.IP)
				ones, _ := a.Mask.Size()
				v.tunAddrs = append(v.tunAddrs, netip.PrefixFrom(ip.Unmap(), ones))
			}
			v.routes, _ = netlink.RouteList(l, netlink.FAMILY_V4)
		}
		v.defaults, _ = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{}, netlink.RT_FILTER_DST)
	})
	return v
}

// hasLease: the TUN holds addr/32 and exactly one default route, through it.
func (v netView) hasDefaultLease(addr netip.Addr) bool {
	return slices.Equal(v.tunAddrs, []netip.Prefix{netip.PrefixFrom(addr, 32)}) &&
		len(v.defaults) == 1 && v.defaults[0].LinkIndex == v.tunIndex && v.defaults[0].Gw == nil
}

// hasOldDefault: the default route is the one the test set up.
func (v netView) hasOldDefault() bool {
	if len(v.defaults) != 1 {
		return false
	}
	gw, _ := netip.AddrFromSlice(v.defaults[0].Gw)
	return gw.Unmap() == oldGW && v.defaults[0].LinkIndex != v.tunIndex
}

func (v netView) routeDsts() []string {
	var s []string
	for _, r := range v.routes {
		if r.Dst != nil && r.Scope == netlink.SCOPE_LINK && r.Protocol != 2 /* kernel */ {
			s = append(s, r.Dst.String())
		}
	}
	slices.Sort(s)
	return s
}

// TestLeaseTrafficDNSAndRestore: the 101 of PROTOCOL.md is applied (address,
// default route, DNS), traffic crosses both ways, and stopping the client
// puts the namespace and resolv.conf back as they were.
func TestLeaseTrafficDNSAndRestore(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	if v := tn.view(t); !v.hasOldDefault() {
		t.Fatalf("setup: default routes %v", v.defaults)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	const original = "nameserver 192.0.2.53\nsearch example.org\n"
	if err := os.WriteFile(resolv, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := tn.testConfig()
	cfg.resolvConf = resolv
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	if m := sc.expect(wire.TypeAddrRequest); len(m.Data) != 0 {
		t.Errorf("100 carries data %q", m.Data)
	}
	sc.send(wire.TypeAddrResponse, []byte(lease101))

	// (a) address and default route.
	addr := netip.MustParseAddr("13.8.0.2")
	waitFor(t, "the lease on the TUN with the default route through it", func() bool {
		return tn.view(t).hasDefaultLease(addr)
	})
	if v := tn.view(t); len(v.routes) == 0 {
		t.Errorf("no routes via the TUN")
	}

	// (d) the three DNS servers, in order.
	got, err := os.ReadFile(resolv)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for line := range strings.Lines(string(got)) {
		if rest, ok := strings.CutPrefix(line, "nameserver "); ok {
			ns = append(ns, strings.TrimSpace(rest))
		}
	}
	if !slices.Equal(ns, []string{"8.8.8.8", "8.8.4.4", "1.1.1.1"}) {
		t.Errorf("resolv.conf:\n%s", got)
	}

	// (b) 103 -> TUN -> kernel -> TUN -> 102.
	sc.ping(addr, 1)
	sc.ping(addr, 2)
	// Counted once Send returns, which may be after the reply is back.
	waitFor(t, "two packets counted up", func() bool { return rc.c.stats.up.Load() >= 2 })

	// (e) stop: the old default route is back, the TUN is gone, resolv.conf
	// holds its old content.
	if err := rc.stop(t); err != nil {
		t.Errorf("run returned %v on cancel", err)
	}
	v := tn.view(t)
	if !v.hasOldDefault() {
		t.Errorf("default route not restored: %v", v.defaults)
	}
	if v.tunIndex != 0 {
		t.Errorf("TUN %s still exists", tunName)
	}
	if got, _ := os.ReadFile(resolv); string(got) != original {
		t.Errorf("resolv.conf not restored:\n%s", got)
	}
	// The server sees the connection closed.
	_ = sc.c.SetReadDeadline(time.Now().Add(patience))
	for {
		if _, err := sc.dec.Next(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Error("connection still open after stop")
			}
			break
		}
	}
}

// TestKeepaliveSilenceReconnect: 104s flow; a server that goes silent while
// keeping the socket open is dropped after the keepalive timeout; the client
// reconnects, and a new address is applied to the same TUN.
func TestKeepaliveSilenceReconnect(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.keepaliveInterval = 200 * time.Millisecond
	cfg.keepaliveTimeout = time.Second
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	sc.send(wire.TypeAddrResponse, []byte(lease101))
	waitFor(t, "first lease", func() bool { return tn.view(t).hasDefaultLease(netip.MustParseAddr("13.8.0.2")) })
	index := tn.view(t).tunIndex

	// (c) keepalives arrive.
	for range 3 {
		if m := sc.next(); m.Type != wire.TypeKeepalive {
			t.Fatalf("got %v, want 104s", m.Type)
		}
	}
	// Now the server goes silent: no reads, no writes, socket open (sc stays
	// referenced until cleanup). The client must give up and come back.
	sc2 := tn.accept(t)
	sc2.expect(wire.TypeAddrRequest)
	sc2.send(wire.TypeAddrResponse, []byte("13.8.0.3 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1 "))
	addr := netip.MustParseAddr("13.8.0.3")
	waitFor(t, "second lease", func() bool { return tn.view(t).hasDefaultLease(addr) })
	if v := tn.view(t); v.tunIndex != index {
		t.Errorf("TUN re-created (index %d -> %d): it must be kept across reconnects", index, v.tunIndex)
	}
	sc2.ping(addr, 1)

	if err := rc.stop(t); err != nil {
		t.Errorf("run returned %v on cancel", err)
	}
	if v := tn.view(t); !v.hasOldDefault() {
		t.Errorf("default route not restored: %v", v.defaults)
	}
}

// TestHandshakeQuirksAndLeaseChange: 100 is repeated until answered, a 104
// before the 101 is ignored, a 101 split over several segments is
// reassembled, unknown types are skipped, a repeated 101 changes nothing,
// and a 101 with a new address re-applies without reconnecting. With
// --keep-default-route only the pool goes through the TUN.
func TestHandshakeQuirksAndLeaseChange(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.helloResend = 100 * time.Millisecond
	cfg.keepDefaultRoute = true
	cfg.routes = pfx("198.51.100.0/24")
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	sc.send(wire.TypeKeepalive, nil)
	sc.expect(wire.TypeAddrRequest) // the resend: answer this one
	msg := wire.AppendMsg(nil, wire.TypeAddrResponse, []byte(lease101))
	for _, part := range [][]byte{msg[:3], msg[3:12], msg[12:]} {
		if _, err := sc.c.Write(part); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // separate segments (not a timing assertion)
	}
	sc.send(199, []byte("fork extension"))

	addr := netip.MustParseAddr("13.8.0.2")
	want := []string{"13.8.0.0/24", "198.51.100.0/24"}
	waitFor(t, "lease with pool routes", func() bool {
		v := tn.view(t)
		return slices.Equal(v.tunAddrs, []netip.Prefix{netip.PrefixFrom(addr, 32)}) && slices.Equal(v.routeDsts(), want)
	})
	if v := tn.view(t); !v.hasOldDefault() {
		t.Errorf("--keep-default-route: default route changed: %v", v.defaults)
	}
	sc.ping(addr, 1)

	// Same address again: ignored. Then a new address, same connection.
	sc.send(wire.TypeAddrResponse, []byte(lease101))
	sc.send(wire.TypeAddrResponse, []byte("13.8.0.7 0.0.0.0 8.8.8.8 8.8.4.4 1.1.1.1 "))
	addr = netip.MustParseAddr("13.8.0.7")
	want = []string{"13.8.0.0/24", "198.51.100.0/24"}
	waitFor(t, "new address and pool", func() bool {
		v := tn.view(t)
		return slices.Equal(v.tunAddrs, []netip.Prefix{netip.PrefixFrom(addr, 32)}) && slices.Equal(v.routeDsts(), want)
	})
	sc.ping(addr, 2)

	if err := rc.stop(t); err != nil {
		t.Errorf("run returned %v on cancel", err)
	}
	if v := tn.view(t); !v.hasOldDefault() {
		t.Errorf("default route: %v", v.defaults)
	}
}

// TestOnceFailsWhenServerCloses: with --once the client does not reconnect
// and reports the failed session (main exits non-zero on it).
func TestOnceFailsWhenServerCloses(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.once = true
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	sc.send(wire.TypeAddrResponse, []byte(lease101))
	waitFor(t, "lease", func() bool { return tn.view(t).hasDefaultLease(netip.MustParseAddr("13.8.0.2")) })
	sc.c.Close()
	if err := rc.wait(t); !errors.Is(err, errServerClosed) {
		t.Errorf("run returned %v, want %v", err, errServerClosed)
	}
	v := tn.view(t)
	if !v.hasOldDefault() || v.tunIndex != 0 {
		t.Errorf("not cleaned up: default %v, TUN index %d", v.defaults, v.tunIndex)
	}
}

// TestOnceNoLease: a server that never answers the 100 fails the session
// after the keepalive timeout.
func TestOnceNoLease(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.once = true
	cfg.keepaliveTimeout = 300 * time.Millisecond
	rc := tn.startClient(t, cfg)
	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	err := rc.wait(t)
	if err == nil || !strings.Contains(err.Error(), "no 101") {
		t.Errorf("run returned %v", err)
	}
}

// fakeDev and fakeConn let the forwarding functions run without I/O.
type fakeDev struct{ tun.Device }

func (fakeDev) NewWriter() tun.Writer { return tun.NewPacketWriter(io.Discard) }
func (fakeDev) BatchSize() int        { return 1 }

// tcpPair is a loopback TCP connection whose far end counts what it reads.
func tcpPair(t *testing.T) (net.Conn, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	far, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := far.Read(buf)
			n.Add(int64(k))
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); far.Close() })
	return conn, &n
}

// TestForwardingDoesNotAllocate: the per-packet paths (TUN -> 102 framed in
// place, 103 -> TUN) allocate nothing.
func TestForwardingDoesNotAllocate(t *testing.T) {
	addr := netip.MustParseAddr("13.8.0.2")
	c := &client{dev: fakeDev{}, out: make([]*sendq.Buf, 0, 2)}
	conn, written := tcpPair(t)
	s, err := newSession(conn, &c.stats)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.close(errStopping); s.q.Close(); s.q.Wait() }()
	s.addr4.Store(packet.Addr4(addr))
	c.cur.Store(s)

	up := packet.BuildICMPEcho(addr, gateway, 1, 1, make([]byte, 56), true)
	bufs := make([]*sendq.Buf, 2)
	sizes := []int{len(up), len(up)}
	fill := func(k int) {
		for i := range k {
			bufs[i] = sendq.Get()
			copy(bufs[i].B[wire.HeaderLen:], up)
		}
	}
	if a := testing.AllocsPerRun(200, func() { fill(1); c.up(bufs[:1], sizes[:1]) }); a != 0 && !raceEnabled {
		t.Errorf("TUN -> 102, one packet: %v allocations per packet", a)
	}
	if a := testing.AllocsPerRun(200, func() { fill(2); c.up(bufs, sizes) }); a != 0 && !raceEnabled {
		t.Errorf("TUN -> 102, batch: %v allocations per batch", a)
	}
	// The frame is the 102 header followed by the packet, sent as is.
	fill(1)
	b := bufs[0]
	c.up(bufs[:1], sizes[:1])
	if bufs[0] != nil {
		t.Error("the queue did not take the buffer")
	}
	_ = b // back in the pool: its bytes are not ours to look at
	want := wire.AppendMsg(nil, wire.TypeNetRequest, up)
	deadline := time.Now().Add(10 * time.Second)
	// AllocsPerRun runs each function once more than asked.
	const sent = 201 + 2*201 + 1
	for written.Load() < int64(len(want))*sent && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := written.Load(); got != int64(len(want))*sent || c.stats.up.Load() != sent {
		t.Errorf("%d bytes reached the server, want %d 102s of %d (%d counted)", got, sent, len(want), c.stats.up.Load())
	}

	down := packet.BuildICMPEcho(gateway, addr, 1, 1, make([]byte, 56), false)
	wb := c.dev.NewWriter()
	before := c.stats.down.Load()
	if a := testing.AllocsPerRun(200, func() { c.down(s, wb, down) }); a != 0 {
		t.Errorf("103 -> TUN: %v allocations per packet", a)
	}
	if c.stats.down.Load() == before {
		t.Error("103 not delivered")
	}
	// Not for our address: dropped.
	other := packet.BuildICMPEcho(gateway, netip.MustParseAddr("13.8.0.9"), 1, 1, nil, false)
	dropped := c.stats.downDropped.Load()
	c.down(s, wb, other)
	if c.stats.downDropped.Load() != dropped+1 {
		t.Error("103 for another address not dropped")
	}
}

// linkChanges records every IPv4 address and route removal in the test
// namespace until the test ends.
type linkChanges struct {
	mu      sync.Mutex
	removed []string
}

func (tn *testNet) watchRemovals(t *testing.T) *linkChanges {
	t.Helper()
	lc := &linkChanges{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	routes := make(chan netlink.RouteUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.RouteSubscribeAt(tn.ns, routes, done); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeAt(tn.ns, addrs, done); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			select {
			case <-done:
				return
			case u := <-routes:
				if u.Type == unix.RTM_DELROUTE && u.Family == netlink.FAMILY_V4 {
					lc.mu.Lock()
					lc.removed = append(lc.removed, "route "+fmt.Sprint(u.Dst))
					lc.mu.Unlock()
				}
			case u := <-addrs:
				if !u.NewAddr && u.LinkAddress.IP.To4() != nil {
					lc.mu.Lock()
					lc.removed = append(lc.removed, "address "+u.LinkAddress.String())
					lc.mu.Unlock()
				}
			}
		}
	}()
	return lc
}

func (lc *linkChanges) list() []string {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return slices.Clone(lc.removed)
}

// TestReconnectSameLeaseKeepsRoutes: a broken connection is retried, and a
// 101 with the address the client already has changes nothing on the host:
// no address or route is removed in between, so connections inside the
// tunnel survive the blip.
func TestReconnectSameLeaseKeepsRoutes(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.routeHold = time.Minute
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	sc.send(wire.TypeAddrResponse, []byte(lease101))
	addr := netip.MustParseAddr("13.8.0.2")
	waitFor(t, "first lease", func() bool { return tn.view(t).hasDefaultLease(addr) })
	sc.ping(addr, 1)
	removals := tn.watchRemovals(t)

	// The server drops the connection (a kick, a data-plane restart).
	sc.c.Close()
	sc2 := tn.accept(t)
	sc2.expect(wire.TypeAddrRequest)
	if v := tn.view(t); !v.hasDefaultLease(addr) {
		t.Errorf("while reconnecting: address or default route gone: %+v", v)
	}
	sc2.send(wire.TypeAddrResponse, []byte(lease101))
	waitFor(t, "the new connection in use", func() bool { return rc.c.cur.Load() != nil })
	sc2.ping(addr, 2) // traffic flows on the new connection
	if r := removals.list(); len(r) != 0 {
		t.Errorf("the host's addresses or routes changed across the reconnect: %v", r)
	}
	if err := rc.stop(t); err != nil {
		t.Errorf("run returned %v on cancel", err)
	}
	if v := tn.view(t); !v.hasOldDefault() {
		t.Errorf("default route not restored: %v", v.defaults)
	}
}

// TestRouteHoldExpires: when no lease comes back within --route-hold, the
// host gets its own default route back while the client keeps trying; a
// later lease takes it again.
func TestRouteHoldExpires(t *testing.T) {
	t.Parallel() // each test has its own namespace
	tn := newTestNet(t)
	cfg := tn.testConfig()
	cfg.routeHold = 300 * time.Millisecond
	rc := tn.startClient(t, cfg)

	sc := tn.accept(t)
	sc.expect(wire.TypeAddrRequest)
	sc.send(wire.TypeAddrResponse, []byte(lease101))
	addr := netip.MustParseAddr("13.8.0.2")
	waitFor(t, "first lease", func() bool { return tn.view(t).hasDefaultLease(addr) })

	// Reconnected, but no 101 answers: after the hold the old default route
	// is back.
	sc.c.Close()
	sc2 := tn.accept(t)
	sc2.expect(wire.TypeAddrRequest)
	waitFor(t, "the host's default route back after --route-hold", func() bool { return tn.view(t).hasOldDefault() })
	sc2.send(wire.TypeAddrResponse, []byte(lease101))
	waitFor(t, "the lease applied again", func() bool { return tn.view(t).hasDefaultLease(addr) })
	sc2.ping(addr, 1)
	if err := rc.stop(t); err != nil {
		t.Errorf("run returned %v on cancel", err)
	}
}
