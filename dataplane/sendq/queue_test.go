package sendq

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sys/unix"
)

// failAfter turns a hang into a failure; no assertion depends on timing.
const failAfter = 10 * time.Second

// pair is a queue on the server end of a loopback TCP connection, and the
// client end. Small socket buffers make short writes, queueing and
// hand-overs between the inline writer and the goroutine common.
type pair struct {
	t      *testing.T
	q      *Queue
	server net.Conn
	client net.Conn
	failed chan error // OnFail's argument
}

// How the test's client treats its socket.
type clientMode int

const (
	reading    clientMode = iota // reads; the server's send buffer is small
	notReading                   // reads (next to) nothing: both buffers small, the socket fills after a few messages
	roomy                        // reads; default buffers
)

func newPair(t *testing.T, c Config, mode clientMode) *pair {
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
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	switch mode {
	case reading:
		server.(*net.TCPConn).SetWriteBuffer(32 << 10)
	case notReading:
		server.(*net.TCPConn).SetWriteBuffer(4096)
		// Not for a client that reads: a receive window smaller than
		// loopback's MSS stalls TCP for whole retransmission timeouts.
		client.(*net.TCPConn).SetReadBuffer(4096)
	}
	p := &pair{t: t, server: server, client: client, failed: make(chan error, 2)}
	if c.Target == 0 {
		// Lossless unless a test asks for the delay bounds: these tests
		// are about order, hand-overs and failures, on a busy machine.
		c.Target, c.MaxDelay = failAfter, failAfter
	}
	c.OnFail = func(err error) { t.Logf("OnFail: %v", err); p.failed <- err }
	if p.q, err = New(server, c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		server.Close()
		client.Close()
		p.q.Close()
		p.q.Wait()
	})
	return p
}

// dataMsg is a 103 of size data bytes carrying (sender, seq) and a pattern
// the reader checks.
func dataMsg(sender, seq uint32, size int) *Buf {
	b := Get()
	b.Kind = Data
	wire.PutHeader(b.B, wire.TypeNetResponse, size)
	binary.BigEndian.PutUint32(b.B[5:], sender)
	binary.BigEndian.PutUint32(b.B[9:], seq)
	for i := 13; i < wire.HeaderLen+size; i++ {
		b.B[i] = byte(seq) + byte(i)
	}
	b.N = wire.HeaderLen + size
	return b
}

func checkData(m wire.Msg) (sender, seq uint32, err error) {
	if len(m.Data) < 8 {
		return 0, 0, fmt.Errorf("103 of %d bytes", len(m.Data))
	}
	sender, seq = binary.BigEndian.Uint32(m.Data), binary.BigEndian.Uint32(m.Data[4:])
	for i := 8; i < len(m.Data); i++ {
		if m.Data[i] != byte(seq)+byte(i+wire.HeaderLen) {
			return sender, seq, fmt.Errorf("sender %d seq %d: byte %d corrupt", sender, seq, i)
		}
	}
	return sender, seq, nil
}

var keepalive = Static(wire.Keepalive[:])

// sendAll sends bs, waiting out ErrFull, and fails on ErrClosed.
func (p *pair) sendAll(bs []*Buf) {
	for len(bs) > 0 {
		n, err := p.q.Send(bs)
		bs = bs[n:]
		switch {
		case errors.Is(err, ErrFull):
			time.Sleep(50 * time.Microsecond)
		case err != nil:
			p.t.Errorf("Send: %v", err)
			return
		}
	}
}

// waitIdle waits until nothing waits and no writer holds the role.
func (p *pair) waitIdle() {
	p.t.Helper()
	deadline := time.Now().Add(failAfter)
	for {
		p.q.mu.Lock()
		idle := !p.q.writing && p.q.waiting == 0
		p.q.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatal("the writer role was never given up")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOrderWholeOneWriter: senders on several goroutines, batches of any
// size, shared keepalives in between, a client that reads in fits. Every
// message arrives whole and in each sender's order, and the counters count
// exactly the Data bytes: which is what one writer at a time, hand-overs
// that keep order, and partial writes carried over correctly give. (Two
// writers at once would interleave bytes and break the framing.)
func TestOrderWholeOneWriter(t *testing.T) {
	p := newPair(t, Config{Limit: 64, WriteTimeout: failAfter}, reading)
	const senders, perSender = 4, 1500
	var wantBytes atomic.Uint64
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(s), 1))
			seq := uint32(0)
			var batch []*Buf
			for seq < perSender {
				batch = batch[:0]
				for range 1 + r.IntN(16) {
					if seq == perSender {
						break
					}
					size := 8 + r.IntN(wire.MaxDataLen-8)
					batch = append(batch, dataMsg(uint32(s), seq, size))
					wantBytes.Add(uint64(size))
					seq++
				}
				if r.IntN(4) == 0 {
					batch = append(batch, keepalive)
				}
				p.sendAll(batch)
			}
		})
	}
	done := make(chan error, 1)
	go func() {
		dec := wire.NewDecoder(p.client, 0)
		next := make([]uint32, senders)
		got := 0
		for got < senders*perSender {
			p.client.SetReadDeadline(time.Now().Add(failAfter))
			m, err := dec.Next()
			if err != nil {
				done <- err
				return
			}
			switch m.Type {
			case wire.TypeKeepalive:
				continue
			case wire.TypeNetResponse:
			default:
				done <- fmt.Errorf("message of type %v: the stream is corrupt", m.Type)
				return
			}
			s, seq, err := checkData(m)
			if err == nil && (s >= senders || seq != next[s]) {
				err = fmt.Errorf("sender %d: seq %d, want %d", s, seq, next[s])
			}
			if err != nil {
				done <- err
				return
			}
			next[s]++
			got++
			if got%500 == 0 {
				time.Sleep(5 * time.Millisecond) // a client that lags now and then
			}
		}
		done <- nil
	}()
	wg.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(failAfter):
		t.Fatal("client did not get every message")
	}
	p.waitIdle()
	p.q.mu.Lock()
	handoffs := p.q.handoffs
	p.q.mu.Unlock()
	if handoffs == 0 {
		t.Error("the writer goroutine never ran: the test did not test hand-overs")
	}
	if b, n := p.q.Sent(); b != wantBytes.Load() || n != senders*perSender {
		t.Errorf("Sent = %d bytes, %d packets; want %d, %d", b, n, wantBytes.Load(), senders*perSender)
	}
	if keepalive.off != 0 || keepalive.N != wire.HeaderLen {
		t.Errorf("the shared keepalive was written to: off %d N %d", keepalive.off, keepalive.N)
	}
	select {
	case err := <-p.failed:
		t.Errorf("OnFail(%v) on a healthy connection", err)
	default:
	}
}

// TestFirstQueuedFirstOut: what is queued first arrives first, even when
// the socket is full and later Sends race with the hand-over.
func TestFirstQueuedFirstOut(t *testing.T) {
	for iter := range 20 {
		p := newPair(t, Config{Limit: 1 << 20, WriteTimeout: failAfter}, reading)
		first := Get()
		first.N = copy(first.B, wire.AppendMsg(nil, wire.TypeAddrResponse, []byte("13.8.0.2 0.0.0.0 8.8.8.8 8.8.8.8 8.8.8.8 ")))
		p.sendAll([]*Buf{first})
		var wg sync.WaitGroup
		for s := range 3 {
			wg.Go(func() {
				for seq := range uint32(50) {
					p.sendAll([]*Buf{dataMsg(uint32(s), seq, 3000)})
				}
			})
		}
		dec := wire.NewDecoder(p.client, 0)
		p.client.SetReadDeadline(time.Now().Add(failAfter))
		m, err := dec.Next()
		if err != nil || m.Type != wire.TypeAddrResponse {
			t.Fatalf("iteration %d: first message %v %v, want the 101", iter, m.Type, err)
		}
		for range 150 {
			if _, err := dec.Next(); err != nil {
				t.Fatal(err)
			}
		}
		wg.Wait()
	}
}

// TestBound: a client that reads nothing fills its socket, then the queue;
// Send takes what fits, returns ErrFull with the rest (still the caller's),
// and the queue never holds more than its limit plus one inline remainder.
func TestBound(t *testing.T) {
	const limit = 8
	p := newPair(t, Config{Limit: limit, WriteTimeout: time.Minute}, notReading)
	var refused []*Buf
	for i := 0; len(refused) == 0; i++ {
		if i > 100000 {
			t.Fatal("the queue never filled")
		}
		bs := []*Buf{dataMsg(0, uint32(2*i), 4000), dataMsg(0, uint32(2*i+1), 4000)}
		n, err := p.q.Send(bs)
		if err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
		if (n < len(bs)) != errors.Is(err, ErrFull) {
			t.Fatalf("Send took %d of %d with error %v", n, len(bs), err)
		}
		refused = bs[n:]
	}
	if q := p.q.Len(); q > limit+2 {
		t.Fatalf("Len = %d: past the limit %d by more than one batch", q, limit)
	}
	// Refused buffers are still the caller's: untouched.
	for _, b := range refused {
		if b.N != wire.HeaderLen+4000 || b.off != 0 {
			t.Fatalf("a refused buffer was changed: N %d off %d", b.N, b.off)
		}
		Put(b)
	}
	p.waitRole(true) // a writer waits for the client
}

func (p *pair) waitRole(held bool) {
	p.t.Helper()
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	if p.q.writing != held {
		p.t.Fatalf("writer role held = %v, want %v", p.q.writing, held)
	}
}

// TestWriteTimeout: a client that stops reading is cut after the write
// timeout: OnFail gets os.ErrDeadlineExceeded, the queue closes and every
// waiting buffer goes back to the pool.
func TestWriteTimeout(t *testing.T) {
	p := newPair(t, Config{Limit: 4, WriteTimeout: 50 * time.Millisecond}, notReading)
	var queued []*Buf
	for i := 0; ; i++ {
		b := dataMsg(0, uint32(i), 4000)
		n, err := p.q.Send([]*Buf{b})
		if errors.Is(err, ErrFull) {
			Put(b)
			break
		}
		if n == 1 {
			queued = append(queued, b)
		}
	}
	select {
	case err := <-p.failed:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("OnFail(%v), want the deadline", err)
		}
	case <-time.After(failAfter):
		t.Fatal("a client that reads nothing was not cut")
	}
	if _, err := p.q.Send([]*Buf{keepalive}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after the failure: %v, want ErrClosed", err)
	}
	p.q.Wait()
	if p.q.Len() != 0 {
		t.Errorf("Len = %d after the failure", p.q.Len())
	}
	// Put resets N: every buffer the queue took is back.
	for _, b := range queued {
		if b.N != 0 {
			t.Fatalf("a buffer of the failed queue was not freed")
		}
	}
	select {
	case err := <-p.failed:
		t.Errorf("OnFail called twice (%v)", err)
	default:
	}
}

// TestDeadlineCleared: once the writer goroutine has caught up, no deadline
// is left on the socket: an inline write much later than the write timeout
// still goes out.
func TestDeadlineCleared(t *testing.T) {
	const wto = 200 * time.Millisecond
	p := newPair(t, Config{Limit: 1 << 10, WriteTimeout: wto}, reading)
	// More than the socket buffers take: the goroutine must run.
	var bs []*Buf
	for i := range 64 {
		bs = append(bs, dataMsg(0, uint32(i), 4000))
	}
	p.sendAll(bs)
	dec := wire.NewDecoder(p.client, 0)
	for range 64 {
		p.client.SetReadDeadline(time.Now().Add(failAfter))
		if _, err := dec.Next(); err != nil {
			t.Fatal(err)
		}
	}
	p.waitIdle()
	time.Sleep(3 * wto) // any deadline left behind has passed
	p.sendAll([]*Buf{dataMsg(0, 64, 100)})
	p.client.SetReadDeadline(time.Now().Add(failAfter))
	if m, err := dec.Next(); err != nil || m.Type != wire.TypeNetResponse {
		t.Fatalf("inline write after the goroutine: %v %v", m.Type, err)
	}
	select {
	case err := <-p.failed:
		t.Fatalf("OnFail(%v): a deadline outlived the writer goroutine", err)
	default:
	}
}

// TestCloseWaitsForWriter: Close returns once the writer blocked on a full
// socket has given up the role (here: the connection is closed first, as a
// session does), with nothing left waiting; Wait then returns.
func TestCloseWaitsForWriter(t *testing.T) {
	p := newPair(t, Config{Limit: 16, WriteTimeout: time.Minute}, notReading)
	var taken []*Buf
	for {
		b := dataMsg(0, 0, 4000)
		if _, err := p.q.Send([]*Buf{b}); err != nil {
			Put(b)
			break
		}
		taken = append(taken, b)
	}
	p.waitRole(true)
	p.server.Close()
	p.q.Close()
	p.waitRole(false)
	if p.q.Len() != 0 {
		t.Fatalf("Len = %d after Close", p.q.Len())
	}
	for _, b := range taken {
		if b.N != 0 {
			t.Fatal("a buffer was still held after Close")
		}
	}
	waited := make(chan struct{})
	go func() { p.q.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(failAfter):
		t.Fatal("Wait did not return after Close")
	}
	if _, err := p.q.Send([]*Buf{keepalive}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
}

// TestCloseWithoutClosingWaitsForDeadline: a Close that leaves the
// connection open waits for the blocked writer's deadline; a failure after
// Close is not reported.
func TestCloseWithoutClosingWaitsForDeadline(t *testing.T) {
	p := newPair(t, Config{Limit: 16, WriteTimeout: 50 * time.Millisecond}, notReading)
	for {
		b := dataMsg(0, 0, 4000)
		if _, err := p.q.Send([]*Buf{b}); err != nil {
			Put(b)
			break
		}
	}
	closed := make(chan struct{})
	go func() { p.q.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(failAfter):
		t.Fatal("Close never returned")
	}
	p.q.Wait()
	select {
	case err := <-p.failed:
		// The deadline can pass before Close takes the lock: then the
		// failure came first and is reported; never anything else.
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("OnFail(%v)", err)
		}
	default:
	}
}

// TestCountsOnlyFinished: Control messages never count, Data counts once
// its last byte is written, and dropped messages never.
func TestCountsOnlyFinished(t *testing.T) {
	p := newPair(t, Config{Limit: 4, WriteTimeout: time.Minute}, notReading)
	ctl := Get()
	ctl.N = copy(ctl.B, wire.AppendMsg(nil, wire.TypeAddrResponse, make([]byte, 100)))
	p.sendAll([]*Buf{ctl, keepalive, dataMsg(0, 0, 1000)})
	dec := wire.NewDecoder(p.client, 0)
	for range 3 {
		p.client.SetReadDeadline(time.Now().Add(failAfter))
		if _, err := dec.Next(); err != nil {
			t.Fatal(err)
		}
	}
	p.waitIdle()
	if b, n := p.q.Sent(); b != 1000 || n != 1 {
		t.Fatalf("Sent = %d, %d; want 1000 bytes, 1 packet", b, n)
	}
	// Now nobody reads: whatever was not written when the queue closes
	// is never counted.
	total := 1
	for {
		b := dataMsg(0, 0, 4000)
		if _, err := p.q.Send([]*Buf{b}); err != nil {
			Put(b)
			break
		}
		total++
	}
	p.server.Close()
	p.q.Close()
	p.q.Wait()
	_, n := p.q.Sent()
	if n >= uint64(total) {
		t.Errorf("Sent counts %d packets of %d, though the last ones were dropped", n, total)
	}
	// What was counted did reach the client's socket in full.
	var got uint64
	for {
		p.client.SetReadDeadline(time.Now().Add(failAfter))
		m, err := dec.Next()
		if err != nil {
			break
		}
		if m.Type == wire.TypeNetResponse {
			got++
		}
	}
	if got+1 != n {
		t.Errorf("client got %d whole 103s after the first, Sent counts %d", got, n-1)
	}
}

// TestStaticRest: a write that ends inside a static message leaves the
// shared bytes alone and carries on with a private copy of the rest.
func TestStaticRest(t *testing.T) {
	d := dataMsg(0, 0, 10)
	msgs := []*Buf{keepalive, d}
	w := getWriter()
	defer putWriter(w)
	w.msgs = msgs
	w.iov = w.iov[:0]
	for _, b := range msgs {
		w.iov = append(w.iov, iovec(b.Message()))
	}
	w.i, w.part = 0, 0
	if w.advance(2) {
		t.Fatal("advance(2) of 20 bytes says all written")
	}
	w.keepRest()
	if msgs[0] == keepalive {
		t.Fatal("the static keepalive was kept instead of a copy of its rest")
	}
	if got := string(msgs[0].Message()); got != string(wire.Keepalive[2:]) || msgs[0].Kind != Control {
		t.Fatalf("rest %x kind %v, want %x", got, msgs[0].Kind, wire.Keepalive[2:])
	}
	if keepalive.off != 0 || keepalive.N != wire.HeaderLen {
		t.Fatal("the static keepalive was written to")
	}
	Put(msgs[0])

	// The same inside a pooled message: its offset moves.
	w.msgs = []*Buf{d}
	w.iov = append(w.iov[:0], iovec(d.Message()))
	w.i, w.part = 0, 0
	w.advance(7)
	w.keepRest()
	if d.off != 7 || len(d.Message()) != wire.HeaderLen+10-7 {
		t.Fatalf("offset %d after 7 bytes", d.off)
	}
	Put(d)
}

// TestInlineDoesNotAllocate: a client that keeps up is written to on the
// caller's goroutine without an allocation.
func TestInlineDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	p := newPair(t, Config{Limit: 64, WriteTimeout: time.Minute}, roomy)
	go io.Copy(io.Discard, p.client)
	bs := make([]*Buf, 8)
	allocs := testing.AllocsPerRun(500, func() {
		for i := range bs {
			bs[i] = Get()
			bs[i].Kind = Data
			wire.PutHeader(bs[i].B, wire.TypeNetResponse, 1400)
			bs[i].N = wire.HeaderLen + 1400
		}
		p.sendAll(bs)
		p.sendAll([]*Buf{keepalive})
	})
	if allocs != 0 {
		t.Errorf("%v allocations per Send", allocs)
	}
}

// TestNotSentLowat: the option is set on a TCP socket, refused elsewhere.
func TestNotSentLowat(t *testing.T) {
	p := newPair(t, Config{Limit: 1}, roomy)
	if err := SetNotSentLowat(p.server, NotSentLowat); err != nil {
		t.Fatal(err)
	}
	raw, _ := p.server.(*net.TCPConn).SyscallConn()
	var got int
	var gerr error
	raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT) })
	if gerr != nil || got != NotSentLowat {
		t.Fatalf("TCP_NOTSENT_LOWAT = %d, %v; want %d", got, gerr, NotSentLowat)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := SetNotSentLowat(a, 1); err == nil {
		t.Fatal("set on a pipe")
	}
}

func TestNewNeedsASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := New(a, Config{Limit: 1, OnFail: func(error) {}}); err == nil {
		t.Fatal("New accepted a connection without a socket")
	}
}

// BenchmarkSend: 103s to a client that keeps up, handed over 64 at a time
// as the TUN reader does. One op is one Send of 64 messages.
func BenchmarkSend(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	q, err := New(server, Config{Limit: 4096, WriteTimeout: time.Minute, OnFail: func(err error) { b.Error(err) }})
	if err != nil {
		b.Fatal(err)
	}
	go io.Copy(io.Discard, client)
	const size = 1400
	bs := make([]*Buf, 64)
	b.SetBytes(int64(len(bs)) * size)
	b.ReportAllocs()
	for b.Loop() {
		for i := range bs {
			bs[i] = Get()
			bs[i].Kind = Data
			wire.PutHeader(bs[i].B, wire.TypeNetResponse, size)
			bs[i].N = wire.HeaderLen + size
		}
		for rest := bs; len(rest) > 0; {
			n, err := q.Send(rest)
			rest = rest[n:]
			if err != nil {
				runtime.Gosched() // full: let the writer goroutine drain
			}
		}
	}
	b.StopTimer()
	q.Close() // the client reads on: the writer finishes its turn
	q.Wait()
	server.Close()
}
