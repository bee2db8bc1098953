package session_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// testOver closes the sessions a test leaves open.
var testOver = session.Reason{Cause: session.CauseShutdown, Detail: "test over"}

// kick is a close reason with the given words.
func kick(words string) session.Reason {
	return session.Reason{Cause: session.CauseKicked, Detail: words}
}

// failAfter bounds every wait so that a broken session fails the test
// instead of hanging it. No assertion depends on how long anything takes.
const failAfter = 10 * time.Second

var testLease = wire.AddrResponse{
	Addr:  netip.MustParseAddr("13.8.0.2"),
	Route: netip.IPv4Unspecified(),
	DNS: [3]netip.Addr{
		netip.MustParseAddr("202.38.120.242"),
		netip.MustParseAddr("8.8.8.8"),
		netip.MustParseAddr("202.106.0.20"),
	},
}

const test101 = "13.8.0.2 0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20 "

// fakeTUN records what sessions write to it.
type fakeTUN struct {
	written chan []byte
	closed  chan struct{}
	once    sync.Once
}

func newFakeTUN() *fakeTUN {
	return &fakeTUN{written: make(chan []byte, 64), closed: make(chan struct{})}
}

func (f *fakeTUN) Name() string          { return "fake0" }
func (f *fakeTUN) BatchSize() int        { return 1 }
func (f *fakeTUN) NewWriter() tun.Writer { return tun.NewPacketWriter(f) }
func (f *fakeTUN) Close() error          { f.once.Do(func() { close(f.closed) }); return nil }

func (f *fakeTUN) Read([][]byte, []int, int) (int, error) {
	<-f.closed
	return 0, os.ErrClosed
}

// Write is the packet writer's: one packet per call.
func (f *fakeTUN) Write(p []byte) (int, error) {
	f.written <- append([]byte(nil), p...)
	return len(p), nil
}

type release struct {
	addr   netip.Addr
	reason session.Reason
}

// fakeHost counts every callback.
type fakeHost struct {
	lease func(ctx context.Context, s *session.Session) (wire.AddrResponse, error)

	leaseCalls atomic.Int32
	leased     chan *session.Session // one per Leased call

	mu       sync.Mutex
	releases []release
	closed   []session.Reason
	closedCh chan struct{} // closed by the first Closed call
}

func newFakeHost() *fakeHost {
	return &fakeHost{leased: make(chan *session.Session, 16), closedCh: make(chan struct{})}
}

func (h *fakeHost) Lease(ctx context.Context, s *session.Session) (wire.AddrResponse, error) {
	h.leaseCalls.Add(1)
	if h.lease != nil {
		return h.lease(ctx, s)
	}
	return testLease, nil
}

func (h *fakeHost) Leased(s *session.Session) { h.leased <- s }

func (h *fakeHost) Release(_ *session.Session, addr netip.Addr, reason session.Reason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releases = append(h.releases, release{addr, reason})
}

func (h *fakeHost) Closed(_ *session.Session, reason session.Reason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = append(h.closed, reason)
	if len(h.closed) == 1 {
		close(h.closedCh)
	}
}

func (h *fakeHost) calls() ([]release, []session.Reason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.releases), slices.Clone(h.closed)
}

// pair is a session on the server end of a loopback TCP connection and the
// client end, read through the real decoder.
type pair struct {
	t      *testing.T
	cfg    *session.Config
	host   *fakeHost
	tun    *fakeTUN
	drops  *session.Drops
	s      *session.Session
	client net.Conn
	dec    *wire.Decoder
	served chan struct{} // closed when Serve returns

	// The session's birth on its clock lies in [bornMin, bornMax].
	bornMin, bornMax int64
}

func newPair(t *testing.T, mod func(*session.Config), serve bool) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{t: t, host: newFakeHost(), tun: newFakeTUN(), drops: new(session.Drops), client: client,
		dec: wire.NewDecoder(client, 0), served: make(chan struct{})}
	p.cfg = &session.Config{
		Host: p.host, TUN: p.tun, Drops: p.drops, Logger: slog.New(slog.DiscardHandler),
		KeepaliveInterval: 20 * time.Second, KeepaliveTimeout: 60 * time.Second,
		SendQueueLen: 16, WriteTimeout: 10 * time.Second, ReadBufferSize: 0,
		Epoch: time.Now(),
	}
	if mod != nil {
		mod(p.cfg)
	}
	p.bornMin = p.cfg.Now()
	if p.s, err = session.New(p.cfg, "sess-1", conn); err != nil {
		t.Fatal(err)
	}
	p.bornMax = p.cfg.Now()
	if serve {
		go func() {
			defer close(p.served)
			p.s.Serve()
		}()
		t.Cleanup(func() {
			p.s.Close(testOver)
			p.waitServed()
		})
	} else {
		close(p.served)
		t.Cleanup(func() { p.s.Close(testOver) })
	}
	return p
}

func (p *pair) write(b []byte) {
	p.t.Helper()
	if _, err := p.client.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pair) next() wire.Msg {
	p.t.Helper()
	p.client.SetReadDeadline(time.Now().Add(failAfter))
	m, err := p.dec.Next()
	if err != nil {
		p.t.Fatalf("client read: %v", err)
	}
	return m
}

func (p *pair) expect(typ wire.Type) wire.Msg {
	p.t.Helper()
	m := p.next()
	if m.Type != typ {
		p.t.Fatalf("client got %v (%q), want %v", m.Type, m.Data, typ)
	}
	return m
}

// expectEOF reads until the server closes the connection; allow lists
// message types that may still arrive first.
func (p *pair) expectEOF(allow ...wire.Type) {
	p.t.Helper()
	p.client.SetReadDeadline(time.Now().Add(failAfter))
	for {
		m, err := p.dec.Next()
		if err == nil {
			if slices.Contains(allow, m.Type) {
				continue
			}
			p.t.Fatalf("client got %v (%q), want the connection closed", m.Type, m.Data)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, wire.ErrTruncated) || strings.Contains(err.Error(), "reset") {
			return
		}
		p.t.Fatalf("connection not closed by the server: %v", err)
	}
}

func (p *pair) waitServed() {
	p.t.Helper()
	select {
	case <-p.served:
	case <-time.After(failAfter):
		p.t.Fatal("Serve did not return after the session closed")
	}
}

func (p *pair) waitLeased() {
	p.t.Helper()
	select {
	case s := <-p.host.leased:
		if s != p.s {
			p.t.Fatal("Leased called with another session")
		}
	case <-time.After(failAfter):
		p.t.Fatal("Host.Leased was not called")
	}
}

// lease sends a 100 and returns once the session is Leased, with the clock
// values before the 100 was sent and after the session was leased.
func (p *pair) lease() (before, after int64) {
	p.t.Helper()
	before = p.cfg.Now()
	p.write(wire.AddrRequest[:])
	if m := p.expect(wire.TypeAddrResponse); string(m.Data) != test101 {
		p.t.Fatalf("101 = %q, want %q", m.Data, test101)
	}
	p.waitLeased()
	return before, p.cfg.Now()
}

// marker queues a 103 the test can recognise. The queue is FIFO with a
// single writer: whatever the session queued before the marker reaches the
// client before it, so "the next message is the marker" proves nothing else
// was queued.
func (p *pair) marker(seq uint16) {
	p.t.Helper()
	b := sendq.Get()
	pkt := packet.BuildICMPEcho(netip.MustParseAddr("198.51.100.2"), testLease.Addr, 7, seq, nil, true)
	b.N = len(wire.AppendMsg(b.B[:0], wire.TypeNetResponse, pkt))
	if !p.s.Send(b) {
		p.t.Fatal("Send of the marker failed")
	}
}

func (p *pair) expectMarker(seq uint16) {
	p.t.Helper()
	m := p.expect(wire.TypeNetResponse)
	if got := uint16(m.Data[len(m.Data)-2])<<8 | uint16(m.Data[len(m.Data)-1]); got != seq {
		p.t.Fatalf("marker seq %d, want %d", got, seq)
	}
}

// eventually polls cond; the deadline only turns a hang into a failure.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(failAfter)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func echoFrom(src netip.Addr, seq uint16) []byte {
	return packet.BuildICMPEcho(src, netip.MustParseAddr("198.51.100.2"), 1, seq, []byte("payload"), false)
}

func TestLifecycle(t *testing.T) {
	p := newPair(t, nil, true)
	s := p.s
	if s.State() != session.Accepted || s.Addr().IsValid() || !s.Reason().IsZero() || s.ID() != "sess-1" {
		t.Fatalf("new session: state %v addr %v reason %q id %q", s.State(), s.Addr(), s.Reason(), s.ID())
	}
	if want := p.client.LocalAddr().String(); s.Remote().String() != want {
		t.Errorf("Remote = %s, want %s", s.Remote(), want)
	}
	select {
	case <-s.Done():
		t.Fatal("Done closed on a new session")
	default:
	}

	p.lease()
	if s.State() != session.Leased || s.Addr() != testLease.Addr {
		t.Fatalf("after 101: state %v addr %v, want leased %v", s.State(), s.Addr(), testLease.Addr)
	}
	in := s.Info()
	if in.ID != "sess-1" || in.State != session.Leased || in.Addr != testLease.Addr || in.Remote != s.Remote() {
		t.Errorf("Info = %+v", in)
	}
	// A repeated 100 gets the same 101 without asking the host again.
	p.write(wire.AddrRequest[:])
	if m := p.expect(wire.TypeAddrResponse); string(m.Data) != test101 {
		t.Fatalf("repeated 101 = %q", m.Data)
	}
	if n := p.host.leaseCalls.Load(); n != 1 {
		t.Errorf("Host.Lease called %d times, want 1", n)
	}

	said := kick("operator said so")
	s.Close(said)
	if s.State() != session.Closed || s.Reason() != said || said.String() != "operator said so" {
		t.Errorf("after Close: state %v reason %q", s.State(), s.Reason())
	}
	select {
	case <-s.Done():
	default:
		t.Error("Done not closed after Close")
	}
	p.expectEOF()
	p.waitServed()
	rel, closed := p.host.calls()
	if want := []release{{testLease.Addr, said}}; !slices.Equal(rel, want) {
		t.Errorf("releases = %v, want %v", rel, want)
	}
	if want := []session.Reason{said}; !slices.Equal(closed, want) {
		t.Errorf("Closed calls = %q, want %q", closed, want)
	}
	s.Close(kick("again")) // a no-op
	if rel, closed := p.host.calls(); len(rel) != 1 || len(closed) != 1 || s.Reason() != said {
		t.Errorf("second Close did something: releases %v closed %q reason %q", rel, closed, s.Reason())
	}
}

func TestClientDisconnects(t *testing.T) {
	p := newPair(t, nil, true)
	p.lease()
	p.client.Close()
	p.waitServed()
	if p.s.State() != session.Closed {
		t.Errorf("state %v, want closed", p.s.State())
	}
	rel, closed := p.host.calls()
	if len(rel) != 1 || rel[0].addr != testLease.Addr || len(closed) != 1 {
		t.Fatalf("releases %v, closed %q; want one of each", rel, closed)
	}
	if closed[0].Cause != session.CauseClientClosed || closed[0].String() != "client closed the connection" || rel[0].reason != closed[0] {
		t.Errorf("reasons: release %q closed %q", rel[0].reason, closed[0])
	}
}

func TestClosedBeforeLeaseReleasesNothing(t *testing.T) {
	p := newPair(t, nil, true)
	p.s.Close(kick("bye"))
	p.expectEOF()
	p.waitServed()
	rel, closed := p.host.calls()
	if len(rel) != 0 || len(closed) != 1 || p.host.leaseCalls.Load() != 0 {
		t.Errorf("releases %v, closed %q, lease calls %d; want none, one, none", rel, closed, p.host.leaseCalls.Load())
	}
}

// TestConcurrentClose: whoever notices the end first, and however many
// notice it at once, the address is released once and Closed runs once.
func TestConcurrentClose(t *testing.T) {
	for iter := range 20 {
		p := newPair(t, nil, true)
		p.lease()
		hi := p.cfg.Now()
		const closers = 8
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range closers {
			wg.Go(func() {
				<-start
				p.s.Close(kick(fmt.Sprintf("closer %d", i)))
			})
		}
		wg.Go(func() { <-start; p.client.Close() })                                 // the reader sees EOF
		wg.Go(func() { <-start; p.s.Tick(hi + int64(p.cfg.KeepaliveTimeout) + 1) }) // the sweeper times it out
		close(start)
		wg.Wait()
		p.waitServed()

		rel, closed := p.host.calls()
		if len(rel) != 1 || len(closed) != 1 {
			t.Fatalf("iteration %d: %d releases, %d Closed calls; want 1 and 1", iter, len(rel), len(closed))
		}
		if rel[0].addr != testLease.Addr || rel[0].reason != closed[0] || p.s.Reason() != closed[0] {
			t.Fatalf("iteration %d: release %v, closed %q, Reason %q: want one consistent reason", iter, rel[0], closed[0], p.s.Reason())
		}
		if p.s.State() != session.Closed {
			t.Fatalf("iteration %d: state %v", iter, p.s.State())
		}
	}
}

// TestLeaseCompletesAfterClose: the controller answers after the session
// closed. Nobody else knows about that lease, so the session must give it
// back, once, and never route it.
func TestLeaseCompletesAfterClose(t *testing.T) {
	late := netip.MustParseAddr("13.8.0.9")
	started := make(chan struct{})
	var ctxDone atomic.Bool
	p := newPair(t, nil, true)
	p.host.lease = func(ctx context.Context, s *session.Session) (wire.AddrResponse, error) {
		close(started)
		<-s.Done()
		ctxDone.Store(ctx.Err() != nil)
		l := testLease
		l.Addr = late
		return l, nil
	}
	p.write(wire.AddrRequest[:])
	select {
	case <-started:
	case <-time.After(failAfter):
		t.Fatal("Host.Lease not called")
	}
	p.s.Close(kick("closed during lease"))
	p.expectEOF() // and no 101
	p.waitServed()

	if !ctxDone.Load() {
		t.Error("the context given to Lease was not cancelled by Close")
	}
	rel, closed := p.host.calls()
	if len(rel) != 1 || rel[0].addr != late || rel[0].reason.Cause != session.CauseClosedWhileLeasing {
		t.Fatalf("releases = %v, want exactly one of %s, closed while leasing", rel, late)
	}
	if len(closed) != 1 {
		t.Errorf("Closed calls = %q, want one", closed)
	}
	select {
	case <-p.host.leased:
		t.Error("Leased called for a lease that arrived after Close")
	default:
	}
	if p.s.Addr().IsValid() || p.s.State() != session.Closed {
		t.Errorf("addr %v state %v, want no address and closed", p.s.Addr(), p.s.State())
	}
}

func TestLeaseFails(t *testing.T) {
	p := newPair(t, nil, true)
	p.host.lease = func(context.Context, *session.Session) (wire.AddrResponse, error) {
		return wire.AddrResponse{}, errors.New("pool exhausted, say")
	}
	p.write(wire.AddrRequest[:])
	p.expectEOF()
	p.waitServed()
	rel, closed := p.host.calls()
	if len(rel) != 0 || len(closed) != 1 || closed[0].Cause != session.CauseNoAddress || closed[0].String() != "no address: pool exhausted, say" {
		t.Errorf("releases %v closed %q; want none and one naming the error", rel, closed)
	}
}

// TestTickKeepalive: 104s are due at leasedAt + k × interval, exactly,
// whenever the ticks come: a late one does not move the next ones.
func TestTickKeepalive(t *testing.T) {
	p := newPair(t, func(c *session.Config) { c.KeepaliveTimeout = 10 * c.KeepaliveInterval }, true)
	interval := int64(p.cfg.KeepaliveInterval)
	t0, t1 := p.lease()
	// The first 104 is due one interval after the lease, which happened
	// between t0 and t1; Tick says when.
	due := p.s.Tick(t1)
	if due < t0+interval || due > t1+interval {
		t.Fatalf("first 104 due at %d, want within [%d, %d]", due, t0+interval, t1+interval)
	}
	if again := p.s.Tick(t1); again != due {
		t.Fatalf("a second tick moved the due time from %d to %d", due, again)
	}
	if next := p.s.Tick(due - 1); next != due {
		t.Fatalf("tick just before: due %d, want %d", next, due)
	}
	p.marker(1)
	p.expectMarker(1) // nothing was sent before it

	next := p.s.Tick(due)
	p.expect(wire.TypeKeepalive)
	if next != due+interval {
		t.Fatalf("after the 104 at %d the next is due at %d, want exactly %d", due, next, due+interval)
	}
	p.s.Tick(due) // the same instant again: nothing new is due
	p.marker(2)
	p.expectMarker(2)

	// A tick half an interval late sends the second 104; the third stays
	// anchored to the lease.
	late := due + interval + interval/2
	if next := p.s.Tick(late); next != due+2*interval {
		t.Fatalf("after a late 104 the next is due at %d, want %d", next, due+2*interval)
	}
	p.expect(wire.TypeKeepalive)
	// Two intervals missed at once (a stalled sweeper): one 104, then back
	// on the schedule.
	if next := p.s.Tick(due + 4*interval + 1); next != due+5*interval {
		t.Fatalf("after a stall the next is due at %d, want %d", next, due+5*interval)
	}
	p.expect(wire.TypeKeepalive)
	p.marker(3)
	p.expectMarker(3)

	if p.s.State() != session.Leased {
		t.Fatalf("state %v after keepalives, want leased", p.s.State())
	}
	if _, closed := p.host.calls(); len(closed) != 0 {
		t.Fatalf("closed: %q", closed)
	}
}

func TestTickAcceptedTimeout(t *testing.T) {
	p := newPair(t, nil, true)
	timeout := int64(p.cfg.KeepaliveTimeout)
	// Not yet past the timeout: still open, and no 104 before a lease
	// (the 101 must be the first message a client gets).
	p.s.Tick(p.bornMin + 2*int64(p.cfg.KeepaliveInterval))
	p.s.Tick(p.bornMin + timeout)
	if p.s.State() != session.Accepted {
		t.Fatalf("state %v at exactly the timeout, want accepted", p.s.State())
	}
	p.marker(1)
	p.expectMarker(1)

	p.s.Tick(p.bornMax + timeout + 1)
	if p.s.State() != session.Closed {
		t.Fatalf("state %v past the timeout without a 100, want closed", p.s.State())
	}
	if r := p.s.Reason(); r.Cause != session.CauseNoAddrRequest || r.String() != "no address request (100): none within 1m0s" {
		t.Errorf("reason %v (%q)", r.Cause, r)
	}
	p.expectEOF()
	p.waitServed()
	if rel, closed := p.host.calls(); len(rel) != 0 || len(closed) != 1 {
		t.Errorf("releases %v closed %q", rel, closed)
	}
}

// TestTickLeasedTimeout: a leased client silent for longer than the timeout
// is dropped; any message (here a 102) counts as a sign of life.
func TestTickLeasedTimeout(t *testing.T) {
	p := newPair(t, nil, true)
	timeout := int64(p.cfg.KeepaliveTimeout)
	t0, t1 := p.lease()
	p.s.Tick(t0 + timeout) // last heard at t0 or later: not yet silent too long
	if p.s.State() != session.Leased {
		t.Fatalf("state %v, want leased", p.s.State())
	}

	for p.cfg.Now() <= t1 {
		// make sure the 102 is heard strictly after the 100
	}
	t2 := p.cfg.Now()
	pkt := echoFrom(testLease.Addr, 1)
	p.write(wire.AppendMsg(nil, wire.TypeNetRequest, pkt))
	select {
	case got := <-p.tun.written:
		if string(got) != string(pkt) {
			t.Fatalf("TUN got %x, want %x", got, pkt)
		}
	case <-time.After(failAfter):
		t.Fatal("102 never reached the TUN")
	}
	t3 := p.cfg.Now()
	// The counters follow the TUN write on the reader goroutine.
	eventually(t, "counters to count the 102", func() bool {
		c := p.s.Traffic()
		return c.PacketsFromClient == 1 && c.BytesFromClient == uint64(len(pkt))
	})
	// Silent since t1 would be too long at t2+timeout; the 102 keeps it.
	p.s.Tick(t2 + timeout)
	if p.s.State() != session.Leased {
		t.Fatalf("state %v: the 102 did not count as a sign of life", p.s.State())
	}

	p.s.Tick(t3 + timeout + 1)
	if p.s.State() != session.Closed {
		t.Fatalf("state %v after the timeout, want closed", p.s.State())
	}
	if r := p.s.Reason(); r.Cause != session.CauseKeepaliveTimeout || r.String() != "keepalive timeout: silent for more than 1m0s" {
		t.Errorf("reason %v (%q)", r.Cause, r)
	}
	p.expectEOF(wire.TypeKeepalive)
	p.waitServed()
	rel, closed := p.host.calls()
	if len(rel) != 1 || rel[0].addr != testLease.Addr || len(closed) != 1 {
		t.Errorf("releases %v closed %q; want one of each", rel, closed)
	}
	// A closed session ignores ticks.
	p.s.Tick(t3 + 10*timeout)
	if rel, closed := p.host.calls(); len(rel) != 1 || len(closed) != 1 {
		t.Errorf("tick after close: releases %v closed %q", rel, closed)
	}
}

func TestSendAfterClose(t *testing.T) {
	p := newPair(t, nil, true)
	p.lease()
	p.s.Close(kick("done"))
	b := sendq.Get()
	b.N = copy(b.B, wire.Keepalive[:])
	if p.s.Send(b) {
		t.Error("Send returned true after Close")
	}
	if p.s.SendData([]*sendq.Buf{b}) != 0 {
		t.Error("SendData returned true after Close")
	}
	if n := p.drops.Get(session.DropSendQueueFull); n != 0 {
		t.Errorf("a send to a closed session counted %d send_queue_full drops", n)
	}
	sendq.Put(b)
}

func TestSendQueueFull(t *testing.T) {
	p := newPair(t, func(c *session.Config) {
		c.SendQueueLen = 2
		c.WriteTimeout = time.Minute
	}, false)
	t.Cleanup(func() { p.s.Close(testOver) })
	// The client reads nothing: writes fill its socket, then the queue.
	for i := 0; ; i++ {
		if i > 100000 {
			t.Fatal("the queue never filled")
		}
		b := sendq.Get()
		wire.PutHeader(b.B, wire.TypeNetResponse, 4000)
		b.N = wire.HeaderLen + 4000
		if p.s.SendData([]*sendq.Buf{b}) == 0 {
			sendq.Put(b)
			break
		}
	}
	if n := p.drops.Get(session.DropSendQueueFull); n != 1 {
		t.Errorf("send_queue_full = %d after one refused SendData, want 1", n)
	}
	// The kernel may still grow the socket's buffers, letting the blocked
	// writer take the queue once more; it fills again at once.
	ka := sendq.Get()
	ka.N = copy(ka.B, wire.Keepalive[:])
	refused := false
	for i := 0; i < 100000 && !refused; i++ {
		refused = !p.s.Send(ka)
		if !refused {
			ka = sendq.Get()
			ka.N = copy(ka.B, wire.Keepalive[:])
		}
	}
	if !refused {
		t.Fatal("Send to a full queue kept succeeding")
	}
	if n := p.drops.Get(session.DropSendQueueFull); n != 1 {
		t.Fatalf("Send counted drops (%d); only SendData counts", n)
	}
	if q := p.s.Info().SendQueue; q > 2 {
		t.Errorf("Info().SendQueue = %d: the queue outgrew its bound of 2", q)
	}
	sendq.Put(ka)
}

// TestDataChecks: 102s reach the TUN only once leased and only from the
// leased address; odd messages are counted and skipped.
func TestDataChecks(t *testing.T) {
	p := newPair(t, nil, true)
	var stream []byte
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, echoFrom(testLease.Addr, 1)) // before the lease
	stream = wire.AppendMsg(stream, wire.Type(199), []byte("some fork's extension"))
	p.write(stream)
	p.lease()

	stream = stream[:0]
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, echoFrom(netip.MustParseAddr("13.8.0.66"), 2)) // spoofed
	bad := echoFrom(testLease.Addr, 3)
	bad[0] = 0x65 // IPv6 version nibble
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, bad)
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, []byte{0x45, 0}) // too short
	stream = wire.AppendMsg(stream, wire.TypeNetResponse, echoFrom(testLease.Addr, 4))
	good := echoFrom(testLease.Addr, 5)
	stream = wire.AppendMsg(stream, wire.TypeNetRequest, good)
	p.write(stream)
	select {
	case got := <-p.tun.written:
		if string(got) != string(good) {
			t.Fatalf("TUN got %x, want only the good packet %x", got, good)
		}
	case <-time.After(failAfter):
		t.Fatal("good 102 never reached the TUN")
	}
	want := map[session.Drop]uint64{
		session.DropBeforeLease:    1,
		session.DropUnknownType:    1,
		session.DropSpoofedSource:  1,
		session.DropIPv4BadVersion: 1,
		session.DropIPv4TooShort:   1,
		session.DropUnexpectedType: 1,
	}
	for d := range session.NumDrops {
		if got := p.drops.Get(d); got != want[d] {
			t.Errorf("drop %s = %d, want %d", d, got, want[d])
		}
	}
	if p.s.State() != session.Leased {
		t.Errorf("state %v: drops must not close the session", p.s.State())
	}

	// A length beyond 4101 cannot be trusted: the connection closes.
	p.write([]byte{0xff, 0xff, 0, 0, 102})
	p.expectEOF(wire.TypeKeepalive)
	p.waitServed()
	if c := p.s.Traffic(); c.PacketsFromClient != 1 || c.BytesFromClient != uint64(len(good)) {
		t.Errorf("counters %+v: want only the good packet (%d bytes) counted", c, len(good))
	}
	if got := p.drops.Get(session.DropFrameError); got != 1 {
		t.Errorf("frame_error = %d, want 1", got)
	}
	if rel, closed := p.host.calls(); len(rel) != 1 || len(closed) != 1 {
		t.Errorf("releases %v closed %q after a framing error", rel, closed)
	}
}

func TestDropNames(t *testing.T) {
	seen := map[string]session.Drop{}
	for d := range session.NumDrops {
		name := d.String()
		if name == "" || name == "unknown" || strings.ContainsAny(name, " \t") {
			t.Errorf("drop %d has name %q", d, name)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("drops %d and %d share the name %q", prev, d, name)
		}
		seen[name] = d
	}
	if got := session.NumDrops.String(); got != "unknown" {
		t.Errorf("NumDrops.String() = %q, want unknown", got)
	}

	var ds session.Drops
	if m := ds.Map(); len(m) != 0 {
		t.Errorf("empty Drops map = %v", m)
	}
	ds.Add(session.DropNoRoute)
	ds.Add(session.DropNoRoute)
	ds.Add(session.DropFrameError)
	m := ds.Map()
	if len(m) != 2 || m["no_route"] != 2 || m["frame_error"] != 1 {
		t.Errorf("Map = %v, want no_route:2 frame_error:1", m)
	}
}

func TestStateNames(t *testing.T) {
	want := map[session.State]string{session.Accepted: "accepted", session.Leased: "leased", session.Closing: "closing", session.Closed: "closed", 99: "unknown"}
	for s, name := range want {
		if s.String() != name {
			t.Errorf("State(%d) = %q, want %q", s, s.String(), name)
		}
	}
}

func TestCountersAdd(t *testing.T) {
	a := session.Traffic{BytesFromClient: 1, PacketsFromClient: 2, BytesToClient: 3, PacketsToClient: 4}
	if got := a.Add(a); got != (session.Traffic{BytesFromClient: 2, PacketsFromClient: 4, BytesToClient: 6, PacketsToClient: 8}) {
		t.Errorf("Add = %+v", got)
	}
}

func data103(seq uint16, size int) *sendq.Buf {
	b := sendq.Get()
	pkt := packet.BuildICMPEcho(netip.MustParseAddr("198.51.100.2"), testLease.Addr, 9, seq, make([]byte, size), true)
	b.N = len(wire.AppendMsg(b.B[:0], wire.TypeNetResponse, pkt))
	return b
}

// TestTrafficToClient: 103s count as traffic to the client (IPv4 bytes,
// without the header) once written; 101s and 104s do not.
func TestTrafficToClient(t *testing.T) {
	p := newPair(t, nil, true)
	_, t1 := p.lease()
	a, b := data103(1, 100), data103(2, 1000)
	want := uint64(a.N + b.N - 2*wire.HeaderLen)
	if n := p.s.SendData([]*sendq.Buf{a, b}); n != 2 {
		t.Fatalf("SendData took %d of 2", n)
	}
	p.s.Tick(t1 + int64(p.cfg.KeepaliveInterval))
	p.expect(wire.TypeNetResponse)
	p.expect(wire.TypeNetResponse)
	p.expect(wire.TypeKeepalive)
	eventually(t, "to-client counters", func() bool {
		c := p.s.Traffic()
		return c.PacketsToClient == 2 && c.BytesToClient == want
	})
	if c := p.s.Info().Traffic; c.PacketsToClient != 2 || c.BytesToClient != want {
		t.Errorf("Info().Traffic = %+v, want 2 packets of %d bytes", c, want)
	}
}

// TestStoppedReaderIsCut: a leased client that reads nothing is cut once a
// write to it has been blocked for the write timeout, and its address is
// released with that reason.
func TestStoppedReaderIsCut(t *testing.T) {
	p := newPair(t, func(c *session.Config) {
		c.WriteTimeout = 100 * time.Millisecond
		c.SendQueueLen = 4
	}, true)
	p.lease()
	deadline := time.Now().Add(failAfter)
	for seq := uint16(0); p.s.State() == session.Leased; seq++ {
		if time.Now().After(deadline) {
			t.Fatal("a client that reads nothing was never cut")
		}
		b := data103(seq, 3000)
		if p.s.SendData([]*sendq.Buf{b}) == 0 {
			sendq.Put(b)
			time.Sleep(time.Millisecond)
		}
	}
	p.waitServed()
	rel, closed := p.host.calls()
	if len(closed) != 1 || closed[0].Cause != session.CauseWriteTimeout ||
		closed[0].String() != "client stopped reading: write blocked for 100ms" {
		t.Fatalf("Closed calls %v, want one: client stopped reading", closed)
	}
	if len(rel) != 1 || rel[0].addr != testLease.Addr || rel[0].reason != closed[0] {
		t.Fatalf("releases %v, want one of %s with the same reason", rel, testLease.Addr)
	}
	if p.drops.Get(session.DropSendQueueFull) == 0 {
		t.Error("no send_queue_full drops counted while the client was not reading")
	}
}

// TestFailed101Write: the client resets the connection while the
// controller answers; the 101's write fails, which closes the session from
// inside the lease path without deadlocking it, and the lease is given back.
func TestFailed101Write(t *testing.T) {
	p := newPair(t, nil, true)
	answer := make(chan struct{})
	p.host.lease = func(context.Context, *session.Session) (wire.AddrResponse, error) {
		<-answer
		return testLease, nil
	}
	p.write(wire.AddrRequest[:])
	eventually(t, "the 100 to reach the host", func() bool { return p.host.leaseCalls.Load() == 1 })
	p.client.(*net.TCPConn).SetLinger(0)
	p.client.Close() // a reset
	// Give the reset time to arrive, so that (almost always) the 101's
	// write is what notices it. Either way the outcome below holds.
	time.Sleep(50 * time.Millisecond)
	close(answer)
	p.waitServed()
	rel, closed := p.host.calls()
	if len(closed) != 1 || closed[0].Cause != session.CauseReset {
		t.Fatalf("Closed calls %v, want one: connection reset", closed)
	}
	if len(rel) != 1 || rel[0].addr != testLease.Addr {
		t.Fatalf("releases %v, want %s given back once", rel, testLease.Addr)
	}
}

func TestCauseNames(t *testing.T) {
	seen := map[string]session.Cause{}
	for c := range session.NumCauses {
		name := c.String()
		if name == "" || strings.ContainsAny(name, " \t") || (name == "unknown" && c != session.CauseUnknown) {
			t.Errorf("cause %d has name %q", c, name)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("causes %d and %d share the name %q", prev, c, name)
		}
		seen[name] = c
		if s := (session.Reason{Cause: c}).String(); s == "" {
			t.Errorf("cause %s reads as nothing", name)
		}
	}
	if got := session.NumCauses.String(); got != "unknown" {
		t.Errorf("NumCauses.String() = %q", got)
	}
	for r, want := range map[session.Reason]string{
		{Cause: session.CauseClientClosed}:                             "client closed the connection",
		{session.CauseKeepaliveTimeout, "silent for more than 1m0s"}:   "keepalive timeout: silent for more than 1m0s",
		{session.CauseWriteTimeout, "write blocked for 10s"}:           "client stopped reading: write blocked for 10s",
		{session.CauseAddressConflict, "leased to session 7"}:          "address conflict: leased to session 7",
		{Cause: session.CauseKicked}:                                   "kicked by operator",
		{session.CauseKicked, "maintenance"}:                           "maintenance",
		{session.CauseFrameError, "length field 9999 outside 5..4101"}: "framing error: length field 9999 outside 5..4101",
		{session.CauseUnknown, "something odd"}:                        "something odd",
		{Cause: session.CauseShutdown}:                                 "data plane shutting down",
		{session.CauseNoAddress, "pool exhausted"}:                     "no address: pool exhausted",
		{Cause: session.CauseClosedWhileLeasing}:                       "closed while leasing",
		{Cause: session.CauseReset}:                                    "connection reset by client",
		{session.CauseReadError, "read tcp: bad"}:                      "read error: read tcp: bad",
		{session.CauseNoAddrRequest, "none within 3s"}:                 "no address request (100): none within 3s",
		{Cause: session.CauseClientTruncated}:                          "client closed the connection inside a message",
	} {
		if got := r.String(); got != want {
			t.Errorf("%v %q: String() = %q, want %q", r.Cause, r.Detail, got, want)
		}
	}
}

// TestRepeated100WhilePending: the reader goes on while the controller is
// slow. 100s that arrive while the lease is pending are answered by the
// one 101 (a lab client exits on a second one); a 104 meanwhile is a sign
// of life; a 100 after the 101 gets the 101 again, as the protocol says.
func TestRepeated100WhilePending(t *testing.T) {
	var merged atomic.Uint64
	p := newPair(t, func(c *session.Config) { c.Merged = &merged }, true)
	answer := make(chan struct{})
	p.host.lease = func(ctx context.Context, _ *session.Session) (wire.AddrResponse, error) {
		select {
		case <-answer:
			return testLease, nil
		case <-ctx.Done():
			return wire.AddrResponse{}, ctx.Err()
		}
	}
	p.write(wire.AddrRequest[:])
	eventually(t, "the lease to be asked for", func() bool { return p.host.leaseCalls.Load() == 1 })
	heard := p.s.Info().LastHeard
	p.write(wire.AddrRequest[:])
	p.write(wire.Keepalive[:])
	p.write(wire.AddrRequest[:])
	eventually(t, "the repeated 100s to be read while the lease is pending", func() bool { return merged.Load() == 2 })
	if !p.s.Info().LastHeard.After(heard) {
		t.Error("messages read while the lease was pending are no sign of life")
	}
	close(answer)
	if m := p.expect(wire.TypeAddrResponse); string(m.Data) != test101 {
		t.Fatalf("101 = %q", m.Data)
	}
	p.waitLeased()
	p.marker(1)
	p.expectMarker(1) // one 101 only
	if n := p.host.leaseCalls.Load(); n != 1 {
		t.Fatalf("%d leases asked for, want 1", n)
	}

	// After the 101: a repeat gets it again, once per 100.
	p.write(wire.AddrRequest[:])
	if m := p.expect(wire.TypeAddrResponse); string(m.Data) != test101 {
		t.Fatalf("repeated 101 = %q", m.Data)
	}
	p.marker(2)
	p.expectMarker(2)
	if merged.Load() != 2 {
		t.Errorf("%d 100s merged, want 2", merged.Load())
	}
}

// TestSessionClosedWhilePending: a client that leaves while its lease is
// pending is closed at once; the lease that arrives later is given back.
func TestSessionClosedWhilePending(t *testing.T) {
	p := newPair(t, nil, true)
	answer := make(chan struct{})
	p.host.lease = func(context.Context, *session.Session) (wire.AddrResponse, error) {
		<-answer // a controller that answers whatever happens
		return testLease, nil
	}
	p.write(wire.AddrRequest[:])
	eventually(t, "the lease to be asked for", func() bool { return p.host.leaseCalls.Load() == 1 })
	p.client.Close()
	select {
	case <-p.host.closedCh:
	case <-time.After(failAfter):
		t.Fatal("session not closed while its lease was pending")
	}
	close(answer)
	p.waitServed()
	rel, closed := p.host.calls()
	if len(rel) != 1 || rel[0].addr != testLease.Addr || rel[0].reason.Cause != session.CauseClosedWhileLeasing || len(closed) != 1 {
		t.Fatalf("releases %v closed %v; want the late lease released", rel, closed)
	}
}

// TestRefusalCause: a Host.Lease error that is a *session.Refusal closes
// the session with its cause.
func TestRefusalCause(t *testing.T) {
	p := newPair(t, nil, true)
	p.host.lease = func(context.Context, *session.Session) (wire.AddrResponse, error) {
		return wire.AddrResponse{}, &session.Refusal{Cause: session.CauseLeaseLimit, Err: errors.New("prefix fd00::/64 holds 4 leases")}
	}
	p.write(wire.AddrRequest[:])
	p.expectEOF()
	p.waitServed()
	if r := p.s.Reason(); r.Cause != session.CauseLeaseLimit || r.String() != "lease limit: prefix fd00::/64 holds 4 leases" {
		t.Fatalf("reason %v %q", r.Cause, r)
	}
}

// TestSweeperKeepsTheSchedule: on a real Sweeper, each session's 104s come
// at leased_at + k × interval: the k-th 104 of a client arrives k-1
// intervals after its first, with no drift however many there are. (The
// periodic sweep it replaced sent each 104 at the first sweep after it was
// due and counted the next interval from there: a drift of up to a sweep
// step, interval/4, per 104.)
func TestSweeperKeepsTheSchedule(t *testing.T) {
	const interval = 200 * time.Millisecond
	const n = 10
	epoch := time.Now()
	now := func() int64 { return int64(time.Since(epoch)) }
	w := session.NewSweeper(now)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.Run(ctx)
	pairs := make([]*pair, 3)
	for i := range pairs {
		pairs[i] = newPair(t, func(c *session.Config) {
			c.Epoch, c.Sweeper = epoch, w
			c.KeepaliveInterval, c.KeepaliveTimeout = interval, time.Minute
		}, true)
		pairs[i].lease()
		time.Sleep(interval / 3)
	}
	if w.Len() != 3 {
		t.Fatalf("%d sessions scheduled, want 3", w.Len())
	}
	// Each client is read on its own goroutine, so that arrival times are
	// read times.
	arrivals := make([][]time.Time, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() {
			for len(arrivals[i]) < n {
				p.client.SetReadDeadline(time.Now().Add(failAfter))
				m, err := p.dec.Next()
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				if m.Type == wire.TypeKeepalive {
					arrivals[i] = append(arrivals[i], time.Now())
				}
			}
		})
	}
	wg.Wait()
	// A loaded machine delays a wake-up now and then (by more than an
	// interval, the late 104 is sent and the one it ran into skipped: see
	// TestTickKeepalive); what must not happen is drift. Each arrival is
	// measured against the nearest point of its client's schedule: on time
	// they are all close to one, drifting they spread over the interval.
	var offs []time.Duration
	skipped := 0
	for _, at := range arrivals {
		for k := 1; k < len(at); k++ {
			since := at[k].Sub(at[0])
			j := (since + interval/2) / interval // the schedule point it is nearest
			skipped += int(j) - k
			offs = append(offs, (since - j*interval).Abs())
		}
	}
	slices.Sort(offs)
	median, worst := offs[len(offs)/2], offs[len(offs)-1]
	if median > 15*time.Millisecond {
		t.Errorf("median deviation from the schedule %v: the 104s drift", median)
	}
	t.Logf("deviation from the schedule over %d 104s of 3 clients: median %v, worst %v; %d skipped by a stall", len(offs), median, worst, skipped)
	for _, p := range pairs {
		p.s.Close(testOver)
	}
	eventually(t, "closed sessions to leave the sweeper", func() bool { return w.Len() == 0 })
}

// TestNotSilentWhilePending: a client waiting for its 101 is not cut for
// silence, however long the controller takes; its silence counts from the
// 101.
func TestNotSilentWhilePending(t *testing.T) {
	p := newPair(t, nil, true)
	timeout := int64(p.cfg.KeepaliveTimeout)
	answer := make(chan struct{})
	p.host.lease = func(context.Context, *session.Session) (wire.AddrResponse, error) {
		<-answer
		return testLease, nil
	}
	p.write(wire.AddrRequest[:])
	eventually(t, "the lease to be asked for", func() bool { return p.host.leaseCalls.Load() == 1 })
	p.s.Tick(p.bornMax + 2*timeout)
	if p.s.State() != session.Accepted {
		t.Fatalf("state %v while the lease is pending, want accepted", p.s.State())
	}
	before := p.cfg.Now()
	close(answer)
	p.expect(wire.TypeAddrResponse)
	p.waitLeased()
	after := p.cfg.Now()
	p.s.Tick(before + timeout - 1)
	if p.s.State() != session.Leased {
		t.Fatalf("state %v within the timeout of the 101, want leased", p.s.State())
	}
	p.s.Tick(after + timeout + 1)
	if p.s.State() != session.Closed || p.s.Reason().Cause != session.CauseKeepaliveTimeout {
		t.Fatalf("state %v (%v) past the timeout of the 101, want closed for silence", p.s.State(), p.s.Reason())
	}
}
