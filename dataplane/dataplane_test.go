package dataplane_test

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

type (
	harness = dataplanetest.Harness
	client  = dataplanetest.Client
)

func start(t *testing.T, mod func(*dataplane.Config)) *harness {
	return dataplanetest.Start(t, nil, mod)
}

var eventually = dataplanetest.Eventually

func echo(src netip.Addr, seq uint16) []byte {
	return packet.BuildICMPEcho(src, netip.MustParseAddr("13.8.0.1"), 1, seq, []byte("payload"), false)
}

func TestAddrResponseExactBytes(t *testing.T) {
	h := start(t, nil)
	c := h.Dial()
	c.Write(wire.AddrRequest[:])
	m := c.Next()
	want := "13.8.0.2 0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20 "
	if m.Type != wire.TypeAddrResponse || string(m.Data) != want {
		t.Fatalf("101 = %v %q, want %q", m.Type, m.Data, want)
	}
	// A repeated 100 gets the same address again.
	c.Write(wire.AddrRequest[:])
	if m := c.NextOf(wire.TypeAddrResponse); string(m.Data) != want {
		t.Fatalf("second 101 = %q", m.Data)
	}
	if h.Ctl.Leased() != 1 {
		t.Fatalf("controller holds %d leases, want 1", h.Ctl.Leased())
	}
}

func TestByteByByteKeepaliveFirstAndBatches(t *testing.T) {
	h := start(t, nil)
	c := h.Dial()
	var stream []byte
	stream = append(stream, wire.Keepalive[:]...)
	stream = append(stream, wire.AddrRequest[:]...)
	for _, b := range stream {
		c.Write([]byte{b})
		time.Sleep(time.Millisecond)
	}
	m := c.Next()
	if m.Type != wire.TypeAddrResponse {
		t.Fatalf("first message %v, want 101", m.Type)
	}
	addr, _ := wire.ParseAddrResponse(m.Data)
	// 16 data messages in one write.
	var batch []byte
	for i := 0; i < 16; i++ {
		batch = wire.AppendMsg(batch, wire.TypeNetRequest, echo(addr.Addr, uint16(i)))
	}
	c.Write(batch)
	for i := 0; i < 16; i++ {
		select {
		case p := <-h.TUN.Written:
			if !bytes.Equal(p, echo(addr.Addr, uint16(i))) {
				t.Fatalf("packet %d differs", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of 16 packets reached the TUN", i)
		}
	}
	// And one 102 byte by byte.
	for _, b := range wire.AppendMsg(nil, wire.TypeNetRequest, echo(addr.Addr, 99)) {
		c.Write([]byte{b})
	}
	select {
	case p := <-h.TUN.Written:
		if !bytes.Equal(p, echo(addr.Addr, 99)) {
			t.Fatal("byte-by-byte packet differs")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("byte-by-byte 102 never reached the TUN")
	}
}

func TestTUNToRightClient(t *testing.T) {
	h := start(t, nil)
	a, b := h.Dial(), h.Dial()
	addrA, addrB := h.LeaseRouted(a), h.LeaseRouted(b)
	if addrA == addrB {
		t.Fatal("two clients got one address")
	}
	for i, dst := range []netip.Addr{addrB, addrA, addrB} {
		h.TUN.Inject(packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.1"), dst, 2, uint16(i), nil, true))
	}
	for _, c := range []*client{b, a, b} {
		m := c.NextOf(wire.TypeNetResponse)
		if _, prob := packet.CheckIPv4(m.Data); prob != packet.OK {
			t.Fatalf("103 carries a bad packet: %v", prob)
		}
	}
	// A packet for nobody is dropped and counted.
	h.TUN.Inject(packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.1"), netip.MustParseAddr("13.8.0.200"), 2, 9, nil, true))
	eventually(t, "no_route drop", func() bool { return h.DP.Drops()["no_route"] == 1 })
	st := h.DP.Status()
	if st.Traffic.PacketsToClient != 3 || st.LeasedSessions != 2 {
		t.Fatalf("status counters %+v leased %d", st.Traffic, st.LeasedSessions)
	}
}

func TestChecksOnDataFromClient(t *testing.T) {
	h := start(t, nil)
	c := h.Dial()
	// 102 before the lease.
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, echo(netip.MustParseAddr("13.8.0.2"), 1)))
	addr := c.Lease().Addr
	good := echo(addr, 2)
	spoofed := echo(netip.MustParseAddr("13.8.0.77"), 3)
	v6 := append([]byte{0x60}, good[1:]...)
	shortTotal := append([]byte(nil), good...)
	shortTotal[3] = 10
	var stream []byte
	for _, p := range [][]byte{spoofed, v6, shortTotal, good[:10]} {
		stream = wire.AppendMsg(stream, wire.TypeNetRequest, p)
	}
	stream = wire.AppendMsg(stream, 199, []byte("fork extension"))
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, good)
	c.Write(stream)
	select {
	case p := <-h.TUN.Written:
		if !bytes.Equal(p, good) {
			t.Fatal("a bad packet reached the TUN")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the good packet never reached the TUN")
	}
	want := map[string]uint64{"data_before_lease": 1, "spoofed_source": 1, "ipv4_bad_version": 1, "ipv4_bad_total_len": 1, "ipv4_too_short": 1, "unknown_type": 1}
	eventually(t, "drop counters", func() bool {
		got := h.DP.Drops()
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return true
	})
	if len(h.TUN.Written) != 0 {
		t.Fatal("extra packets reached the TUN")
	}
}

func TestKeepaliveAndTimeout(t *testing.T) {
	h := start(t, func(c *dataplane.Config) {
		// A timeout of ten intervals: a loaded machine may hold the
		// sweeper up for a few hundred milliseconds.
		c.KeepaliveInterval = 100 * time.Millisecond
		c.KeepaliveTimeout = time.Second
	})
	c := h.Dial()
	c.Lease()
	if m := c.Next(); m.Type != wire.TypeKeepalive || len(m.Data) != 0 {
		t.Fatalf("got %v, want 104", m.Type)
	}
	// Stay silent: the server must cut us and release the address,
	// telling the controller why in words.
	c.ExpectClosed()
	select {
	case r := <-h.Ctl.Released:
		if r.Reason != "keepalive timeout: silent for more than 1s" {
			t.Errorf("release reason %q", r.Reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("address not released after timeout")
	}
	eventually(t, "pool empty", func() bool { return h.Ctl.Leased() == 0 })
	// Counted by cause, not by the words.
	eventually(t, "the close counted", func() bool { return h.DP.Status().Closed == 1 })
	if n := h.DP.KeepaliveTimeouts(); n != 1 {
		t.Errorf("KeepaliveTimeouts = %d, want 1", n)
	}
	if by := h.DP.Status().ClosedBy; by["keepalive_timeout"] != 1 || len(by) != int(session.NumCauses) {
		t.Errorf("ClosedBy = %v", by)
	}
}

func TestAnyMessageKeepsClientAlive(t *testing.T) {
	h := start(t, func(c *dataplane.Config) {
		c.KeepaliveInterval = 50 * time.Millisecond
		c.KeepaliveTimeout = 300 * time.Millisecond
	})
	c := h.Dial()
	addr := c.Lease().Addr
	go func() { // drain
		for {
			c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Dec.Next(); err != nil {
				return
			}
		}
	}()
	for i := 0; i < 15; i++ { // 1.5 s of 102s only, never a 104
		if _, err := c.Conn.Write(wire.AppendMsg(nil, wire.TypeNetRequest, echo(addr, uint16(i)))); err != nil {
			t.Fatalf("client cut while sending data: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := h.DP.Status(); st.LeasedSessions != 1 {
		t.Fatalf("client dropped although it sent data: %+v", st)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	h := start(t, func(c *dataplane.Config) {
		c.KeepaliveInterval = 50 * time.Millisecond
		c.KeepaliveTimeout = 300 * time.Millisecond
	})
	c := h.Dial()
	stop := make(chan struct{})
	go func() { // 104s but never a 100
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				c.Conn.Write(wire.Keepalive[:])
			}
		}
	}()
	defer close(stop)
	c.ExpectClosed()
}

func TestDisconnectReleasesAtOnce(t *testing.T) {
	h := start(t, nil)
	c := h.Dial()
	c.Lease()
	c.Conn.Close()
	select {
	case <-h.Ctl.Released:
	case <-time.After(10 * time.Second):
		t.Fatal("no release after disconnect")
	}
	eventually(t, "session gone", func() bool { return h.DP.Status().Sessions == 0 })
}

func TestFrameErrorClosesOnlyThatConnection(t *testing.T) {
	h := start(t, nil)
	good, bad := h.Dial(), h.Dial()
	gaddr := good.Lease().Addr
	bad.Lease()
	bad.Write([]byte{0xff, 0xff, 0, 0, 102, 1, 2, 3})
	bad.ExpectClosed()
	good.Write(wire.AppendMsg(nil, wire.TypeNetRequest, echo(gaddr, 1)))
	select {
	case <-h.TUN.Written:
	case <-time.After(10 * time.Second):
		t.Fatal("good client lost service")
	}
	if h.DP.Drops()["frame_error"] != 1 {
		t.Fatalf("drops %v", h.DP.Drops())
	}
}

func TestPoolExhaustedClosesConnection(t *testing.T) {
	h := start(t, nil)
	h.Ctl.SetSize(1)
	a := h.Dial()
	a.Lease()
	b := h.Dial()
	b.Write(wire.AddrRequest[:])
	b.ExpectClosed()
}

func TestControllerDownFailsAfterRetries(t *testing.T) {
	h := start(t, func(c *dataplane.Config) { c.AllocateTimeout = 300 * time.Millisecond })
	h.Ctl.SetDown(true)
	c := h.Dial()
	c.Write(wire.AddrRequest[:])
	c.ExpectClosed()
	if h.DP.Status().ControllerConnected {
		t.Fatal("status still claims the controller is reachable")
	}
}

func TestConcurrentClientsDistinctAddresses(t *testing.T) {
	h := start(t, nil)
	const n = 200
	addrs := make(chan netip.Addr, n)
	var wg, leased sync.WaitGroup
	leased.Add(n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held := false
			defer func() {
				if !held {
					leased.Done()
				}
			}()
			c, err := net.Dial("tcp", h.Addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.Write(wire.AddrRequest[:])
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, err := wire.NewDecoder(c, 0).Next()
			if err != nil {
				t.Error(err)
				return
			}
			r, err := wire.ParseAddrResponse(m.Data)
			if err != nil {
				t.Error(err)
				return
			}
			addrs <- r.Addr
			// Hold the lease until everyone has one: released addresses
			// are rightly reused.
			held = true
			leased.Done()
			leased.Wait()
		}()
	}
	wg.Wait()
	close(addrs)
	seen := map[netip.Addr]bool{}
	for a := range addrs {
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct addresses, want %d", len(seen), n)
	}
}

func TestSlowReaderIsCutOthersUnaffected(t *testing.T) {
	h := start(t, func(c *dataplane.Config) {
		c.WriteTimeout = 500 * time.Millisecond
		c.SendQueueLen = 16
	})
	slow, fast := h.Dial(), h.Dial()
	slowAddr, fastAddr := h.LeaseRouted(slow), h.LeaseRouted(fast)
	// Flood the slow client, which never reads; interleave packets for the
	// fast one, which must get every one.
	big := make([]byte, 1400)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			m := fast.NextOf(wire.TypeNetResponse)
			if len(m.Data) != 20+8+len(big) {
				t.Errorf("fast client got %d bytes", len(m.Data))
				return
			}
		}
	}()
	gw := netip.MustParseAddr("13.8.0.1")
	for i := 0; i < 200; i++ {
		for j := 0; j < 50; j++ {
			h.TUN.Inject(packet.BuildICMPEcho(gw, slowAddr, 3, uint16(i), big, true))
		}
		h.TUN.Inject(packet.BuildICMPEcho(gw, fastAddr, 3, uint16(i), big, true))
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("fast client starved")
	}
	eventually(t, "slow client cut", func() bool {
		for _, s := range h.DP.Sessions() {
			if s.Addr == slowAddr {
				return false
			}
		}
		return true
	})
	if h.DP.Drops()[session.DropSendQueueFull.String()] == 0 {
		t.Fatal("no send_queue_full drops counted")
	}
}

func TestLimitsDrainingAndKick(t *testing.T) {
	h := start(t, func(c *dataplane.Config) { c.Limits.MaxConnsPerIP = 2 })
	a, b := h.Dial(), h.Dial()
	addrA := h.LeaseRouted(a)
	h.LeaseRouted(b)
	c := h.Dial()
	c.ExpectClosed()
	if got := h.DP.Refused()["max_conns_per_ip"]; got != 1 {
		t.Fatalf("refused %v", h.DP.Refused())
	}
	// Kicking by address through the controller's command stream.
	h.Ctl.Commands <- dataplane.Directive{Kick: &dataplane.KickDirective{Addr: addrA, Reason: "test kick"}}
	a.ExpectClosed()
	select {
	case r := <-h.Ctl.Released:
		if r.Reason != "test kick" {
			t.Errorf("release reason %q, want the kick's words", r.Reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("kicked client's address not released")
	}
	eventually(t, "the kick counted", func() bool { return h.DP.Status().ClosedBy["kicked"] == 1 })
	if n := h.DP.KeepaliveTimeouts(); n != 0 {
		t.Errorf("KeepaliveTimeouts = %d after a kick", n)
	}
	// Draining refuses new clients; b keeps working.
	on := true
	h.Ctl.Commands <- dataplane.Directive{Drain: &on}
	eventually(t, "draining", h.DP.Draining)
	d := h.Dial()
	d.ExpectClosed()
	if h.DP.Refused()["draining"] != 1 {
		t.Fatalf("refused %v", h.DP.Refused())
	}
	b.Write(wire.Keepalive[:])
	if st := h.DP.Status(); st.LeasedSessions != 1 || !st.Draining {
		t.Fatalf("status %+v", st)
	}
	if _, err := h.DP.Kick(netip.MustParseAddr("13.8.0.200"), "", ""); err != dataplane.ErrNoSession {
		t.Fatalf("kick of nobody: %v", err)
	}
}

// TestLateReaderGetsEveryMessageInOrder: a client that stops reading for a
// while fills its socket; the TUN reader's non-blocking writes then hand
// the rest to the queue. When the client reads again, it gets every 103
// that was queued, whole and in order.
func TestLateReaderGetsEveryMessageInOrder(t *testing.T) {
	h := start(t, func(c *dataplane.Config) {
		c.SendQueueLen = 4096
		c.WriteTimeout = time.Minute
		// Large enough in bytes and time, too: nothing is dropped.
		c.SendQueueBytes = 64 << 20
		c.SendQueueDelay, c.SendQueueTarget = time.Minute, time.Minute
	})
	c := h.Dial()
	c.Conn.(*net.TCPConn).SetReadBuffer(65536)
	addr := h.LeaseRouted(c)
	gw := netip.MustParseAddr("13.8.0.1")
	const n = 4000 // about 5 MB: more than the socket buffers hold
	for i := 0; i < n; i++ {
		h.TUN.Inject(packet.BuildICMPEcho(gw, addr, 9, uint16(i), make([]byte, 1300), true))
	}
	// The socket fills, so part of the stream waits in the queue.
	eventually(t, "messages queued behind a full socket", func() bool {
		for _, in := range h.DP.Sessions() {
			if in.Addr == addr && in.SendQueue > 0 {
				return true
			}
		}
		return false
	})
	for i := 0; i < n; i++ {
		m := c.NextOf(wire.TypeNetResponse)
		if _, prob := packet.CheckIPv4(m.Data); prob != packet.OK || len(m.Data) != 20+8+1300 {
			t.Fatalf("message %d: %v, %d bytes", i, prob, len(m.Data))
		}
		if seq := int(m.Data[26])<<8 | int(m.Data[27]); seq != i {
			t.Fatalf("message %d carries sequence %d: order lost", i, seq)
		}
	}
	if d := h.DP.Drops()["send_queue_full"] + h.DP.Drops()["send_queue_delay"]; d != 0 {
		t.Fatalf("%d drops with a queue large enough", d)
	}
}
