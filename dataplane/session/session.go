// Package session runs one client connection: a reader goroutine that
// decodes the stream, checks 102s and hands them to the TUN, and a writer
// goroutine that drains a bounded send queue with one writev per batch.
//
// A session moves Accepted -> Leased -> Closing -> Closed. Every exit path
// goes through Close, which runs once: it releases the lease (if any) and
// all resources exactly once, whichever goroutine notices the end first.
package session

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
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sys/unix"
)

// State of a session.
type State int32

// States.
const (
	Accepted State = iota // connected, no 101 sent yet
	Leased                // 101 sent: traffic flows
	Closing               // being torn down
	Closed
)

func (s State) String() string {
	switch s {
	case Accepted:
		return "accepted"
	case Leased:
		return "leased"
	case Closing:
		return "closing"
	case Closed:
		return "closed"
	}
	return "unknown"
}

// ReasonKeepaliveTimeout starts the close reason of a session cut for
// silence, so the data plane can count them.
const ReasonKeepaliveTimeout = "keepalive timeout"

// Host is what a session needs from its data plane.
type Host interface {
	// Lease obtains the 101 for s on its first 100. It may block (it asks
	// the controller); ctx ends when s closes.
	Lease(ctx context.Context, s *Session) (wire.AddrResponse, error)
	// Leased is called once the 101 is queued: from now on packets for
	// s.Addr() go to s. It runs under the session's lock, so a concurrent
	// Close waits for it; it must be quick.
	Leased(s *Session)
	// Release gives up addr: remove the route, return the address to the
	// pool. Called once per lease, never under a lock; must not block long.
	Release(s *Session, addr netip.Addr, reason string)
	// Closed is called last, once, when s is gone.
	Closed(s *Session, reason string)
}

// Config is shared by all sessions of a data plane. Every field but the
// durations and sizes is required.
type Config struct {
	Host   Host
	TUN    tun.Device
	Drops  *Drops
	Logger *slog.Logger

	KeepaliveInterval time.Duration // 104 every interval once leased
	KeepaliveTimeout  time.Duration // silence (or no 100) longer than this closes
	SendQueueLen      int           // messages waiting per client; more are dropped
	WriteTimeout      time.Duration // a client that does not read for this long is cut
	ReadBufferSize    int           // decoder buffer per client, to start with
	MaxReadBufferSize int           // ... growing up to this for busy clients

	// Epoch is the base of the monotonic clock sessions keep (Now).
	Epoch time.Time

	// tunWriters recycles TUN writers: a session holds one only while it
	// has decoded 102s to write, so idle sessions cost nothing.
	tunWriters sync.Pool
}

func (c *Config) getTUNWriter() tun.Writer {
	if w, ok := c.tunWriters.Get().(tun.Writer); ok {
		return w
	}
	return c.TUN.NewWriter()
}

// Now returns nanoseconds since c.Epoch (monotonic).
func (c *Config) Now() int64 { return int64(time.Since(c.Epoch)) }

// Session is one client connection.
type Session struct {
	cfg    *Config
	id     string
	conn   net.Conn
	remote netip.AddrPort
	since  time.Time
	born   int64 // cfg.Now() at accept

	raw    syscall.RawConn // for non-blocking writes from the TUN reader; nil if unavailable
	ctx    context.Context // ends when the session closes
	cancel context.CancelFunc
	done   chan struct{}

	// The send queue. A writer goroutine runs only while there is
	// something to write, so an idle client costs no goroutine and no
	// buffers; one that does not read fills the queue and is dropped.
	qmu     sync.Mutex
	queue   []*Buf // oldest first, at most cfg.SendQueueLen
	writing bool   // a writer goroutine is draining queue
	qclosed bool
	writers sync.WaitGroup

	state     atomic.Int32
	addr4     atomic.Uint32 // leased address as packet.Addr4, 0 before
	lastHeard atomic.Int64  // cfg.Now() of the last complete message
	nextKA    atomic.Int64  // cfg.Now() when the next 104 is due
	logged    atomic.Uint32 // drop reasons already logged (bit per Drop)
	c         counters

	mu     sync.Mutex // guards the transitions below
	lease  wire.AddrResponse
	reason string

	tunw tun.Writer // reader goroutine: 102s on their way to the TUN; nil when none
}

// New wraps an accepted connection. Call Serve to run it.
func New(cfg *Config, id string, conn net.Conn) *Session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		cfg: cfg, id: id, conn: conn,
		since: time.Now(), born: cfg.Now(),
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}),
	}
	if sc, ok := conn.(syscall.Conn); ok {
		s.raw, _ = sc.SyscallConn()
	}
	if ap, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil {
		s.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	s.lastHeard.Store(s.born)
	return s
}

// ID is unique among the data plane's sessions.
func (s *Session) ID() string { return s.id }

// Remote is the client's IPv6 address and port.
func (s *Session) Remote() netip.AddrPort { return s.remote }

// State returns the current state.
func (s *Session) State() State { return State(s.state.Load()) }

// Addr returns the leased address, or the zero Addr before the lease.
func (s *Session) Addr() netip.Addr {
	a := s.addr4.Load()
	if a == 0 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
}

// Done is closed when the session starts closing.
func (s *Session) Done() <-chan struct{} { return s.done }

// Info is a snapshot of a session for status output and reports.
type Info struct {
	ID          string
	State       State
	Addr        netip.Addr
	Remote      netip.AddrPort
	ConnectedAt time.Time
	LastHeard   time.Time
	Traffic     Traffic
	SendQueue   int
}

// Info returns a snapshot.
func (s *Session) Info() Info {
	return Info{
		ID: s.id, State: s.State(), Addr: s.Addr(), Remote: s.remote,
		ConnectedAt: s.since,
		LastHeard:   s.cfg.Epoch.Add(time.Duration(s.lastHeard.Load())),
		Traffic:     s.c.snapshot(),
		SendQueue:   s.queueLen(),
	}
}

// Traffic returns the session's traffic counters.
func (s *Session) Traffic() Traffic { return s.c.snapshot() }

// Serve runs the session's reader in this goroutine until the session
// closes, then waits for its writer.
func (s *Session) Serve() {
	s.readLoop()
	s.writers.Wait()
}

// Send queues a framed message for the client without blocking. It returns
// false (and the caller keeps the buffer) when the session is closing or its
// queue is full.
func (s *Session) Send(b *Buf) bool {
	one := [1]*Buf{b}
	// An idle client's keepalive goes out from the caller without waking
	// a writer goroutine (ten thousand idle clients send 500 a second).
	if _, ok := s.writeInline(one[:]); ok {
		return true
	}
	return s.enqueue(one[:]) == 1
}

// SendData queues 103s that the caller framed, counting a drop for each
// that does not fit; it returns how many were queued (a prefix of bs, which
// the session now owns; the caller keeps the rest).
//
// When nothing is waiting for the client, SendData first tries to write
// the messages at once without blocking: a busy flow is forwarded without
// handing each batch to another goroutine (a thread wake-up per batch),
// while a client whose socket is full still only costs the caller the
// attempt: what does not fit goes to the queue and the writer goroutine.
func (s *Session) SendData(bs []*Buf) int {
	if n, ok := s.writeInline(bs); ok {
		return n
	}
	n := s.enqueue(bs)
	if n < len(bs) && s.state.Load() < int32(Closing) {
		for range len(bs) - n {
			s.drop(DropSendQueueFull, nil)
		}
	}
	return n
}

// writeInline writes bs without blocking when the session has no writer at
// work, and queues what did not fit. ok is false when it did not try.
func (s *Session) writeInline(bs []*Buf) (n int, ok bool) {
	if s.raw == nil || len(bs) == 0 {
		return 0, false
	}
	s.qmu.Lock()
	if s.qclosed || s.writing || len(s.queue) > 0 {
		s.qmu.Unlock()
		return 0, false
	}
	s.writing = true // the writer role is ours while we write
	s.qmu.Unlock()

	w := writers.Get().(*writer)
	written, err := w.writevNonblock(s.raw, bs)
	writers.Put(w)

	var bytes, pkts uint64
	done := 0
	for i, b := range bs {
		m := b.N - b.Off
		if written < m {
			if b.static && written > 0 {
				// Shared bytes (a keepalive) cannot carry this session's
				// offset: the rest goes in a private copy.
				c := GetBuf()
				c.N = copy(c.B, b.B[b.Off+written:b.N])
				bs[i] = c
			} else {
				b.Off += written
			}
			break
		}
		written -= m
		if b.N > wire.HeaderLen && b.B[4] == byte(wire.TypeNetResponse) {
			bytes += uint64(b.N - wire.HeaderLen)
			pkts++
		}
		PutBuf(b)
		done++
	}
	s.c.bytesTo.Add(bytes)
	s.c.pktsTo.Add(pkts)
	rest := bs[done:]

	s.qmu.Lock()
	if s.qclosed || err != nil {
		// Closed under us, or a hard error (the writer will see it too):
		// nothing more goes out.
		s.writing = false
		s.qmu.Unlock()
		for _, b := range rest {
			PutBuf(b)
		}
		if err != nil {
			s.Close(writeErrReason(err))
		}
		return len(bs), true
	}
	if len(rest) > 0 {
		// Ahead of whatever was queued meanwhile, so order is kept (the
		// queue may exceed its bound by this one batch). rest belongs to
		// the caller's slice: copy it, never keep it.
		old := len(s.queue)
		s.queue = slices.Grow(s.queue, len(rest))[:old+len(rest)]
		copy(s.queue[len(rest):], s.queue[:old])
		copy(s.queue, rest)
	}
	start := len(s.queue) > 0
	if start {
		s.writers.Add(1)
	} else {
		s.writing = false
	}
	s.qmu.Unlock()
	if start {
		go s.writeLoop()
	}
	return len(bs), true
}

func (s *Session) enqueue(bs []*Buf) int {
	s.qmu.Lock()
	if s.qclosed {
		s.qmu.Unlock()
		return 0
	}
	n := min(len(bs), s.cfg.SendQueueLen-len(s.queue))
	s.queue = append(s.queue, bs[:n]...)
	start := n > 0 && !s.writing
	if start {
		s.writing = true
		s.writers.Add(1)
	}
	s.qmu.Unlock()
	if start {
		go s.writeLoop()
	}
	return n
}

func (s *Session) queueLen() int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.queue)
}

// Close ends the session; only the first call does anything.
func (s *Session) Close(reason string) {
	s.mu.Lock()
	if s.state.Load() >= int32(Closing) {
		s.mu.Unlock()
		return
	}
	s.state.Store(int32(Closing))
	s.reason = reason
	leased := s.Addr()
	s.mu.Unlock()

	s.cancel()
	close(s.done)
	s.conn.Close() // unblocks the reader and the writer
	s.qmu.Lock()
	s.qclosed = true
	pending := s.queue
	s.queue = nil
	s.qmu.Unlock()
	for _, b := range pending {
		PutBuf(b)
	}
	if leased.IsValid() {
		s.cfg.Host.Release(s, leased, reason)
	}
	s.state.Store(int32(Closed))
	s.cfg.Host.Closed(s, reason)
}

// Reason returns why the session closed ("" while open).
func (s *Session) Reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Tick runs the keepalive rules at time now (cfg.Now()); one sweeper calls
// it for every session, like the seed's once-a-second keepalive thread.
func (s *Session) Tick(now int64) {
	st := State(s.state.Load())
	if st >= Closing {
		return
	}
	timeout := int64(s.cfg.KeepaliveTimeout)
	if st == Accepted && now-s.born > timeout {
		s.Close(fmt.Sprintf("no address request (100) within %s", s.cfg.KeepaliveTimeout))
		return
	}
	if now-s.lastHeard.Load() > timeout {
		s.Close(fmt.Sprintf("%s: silent for more than %s", ReasonKeepaliveTimeout, s.cfg.KeepaliveTimeout))
		return
	}
	if st == Leased && now >= s.nextKA.Load() {
		s.nextKA.Store(now + int64(s.cfg.KeepaliveInterval))
		if !s.Send(keepaliveBuf) && s.state.Load() < int32(Closing) {
			s.drop(DropSendQueueFull, nil)
		}
	}
}

func (s *Session) readLoop() {
	dec := wire.NewDecoder(s.conn, s.cfg.ReadBufferSize)
	dec.SetMaxSize(s.cfg.MaxReadBufferSize)
	defer s.flushTUN()
	for {
		if s.tunw != nil && !dec.Ready() {
			// Next would block: hand what the last read carried to the TUN.
			s.flushTUN()
		}
		m, err := dec.Next()
		if err != nil {
			var fe *wire.FrameError
			if errors.As(err, &fe) {
				s.drop(DropFrameError, []any{"length", fe.Length})
			}
			s.Close(readErrReason(err))
			return
		}
		s.lastHeard.Store(s.cfg.Now())
		switch m.Type {
		case wire.TypeAddrRequest:
			if !s.addrRequest() {
				return
			}
		case wire.TypeNetRequest:
			s.netRequest(m.Data)
		case wire.TypeKeepalive:
			// Liveness is all it carries; noted above.
		case wire.TypeAddrResponse, wire.TypeNetResponse:
			s.drop(DropUnexpectedType, []any{"type", m.Type})
		default:
			s.drop(DropUnknownType, []any{"type", m.Type, "length", wire.HeaderLen + len(m.Data)})
		}
	}
}

func readErrReason(err error) string {
	var fe *wire.FrameError
	switch {
	case errors.Is(err, io.EOF):
		return "client closed the connection"
	case errors.As(err, &fe):
		return fe.Error()
	case errors.Is(err, wire.ErrTruncated):
		return "client closed the connection inside a message"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by client"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "read timeout"
	}
	return "read error: " + err.Error()
}

// addrRequest answers a 100. It returns false when the session closed.
func (s *Session) addrRequest() bool {
	if s.State() == Leased {
		// A repeated 100 gets the same address again.
		s.mu.Lock()
		lease := s.lease
		s.mu.Unlock()
		s.send101(lease)
		return true
	}
	lease, err := s.cfg.Host.Lease(s.ctx, s)
	if err != nil {
		if s.ctx.Err() == nil {
			s.Close("no address: " + err.Error())
		}
		return false
	}
	s.mu.Lock()
	if s.state.Load() >= int32(Closing) {
		// Closed while the controller answered: nobody else knows about
		// this lease, so give it back here.
		s.mu.Unlock()
		s.cfg.Host.Release(s, lease.Addr, "closed while leasing")
		return false
	}
	s.lease = lease
	// The 101 goes into the queue before the session can receive 103s or
	// 104s, so it is the first message the client gets.
	s.send101(lease)
	s.addr4.Store(packet.Addr4(lease.Addr))
	s.nextKA.Store(s.cfg.Now() + int64(s.cfg.KeepaliveInterval))
	s.state.Store(int32(Leased))
	s.cfg.Host.Leased(s)
	s.mu.Unlock()
	return true
}

func (s *Session) send101(lease wire.AddrResponse) {
	b := GetBuf()
	msg, err := wire.AppendAddrResponse(b.B[:0], lease)
	if err != nil {
		PutBuf(b)
		s.cfg.Logger.Error("cannot format 101", "session", s.id, "err", err)
		return
	}
	b.N = len(msg)
	if !s.Send(b) {
		PutBuf(b)
		s.drop(DropSendQueueFull, nil)
	}
}

// netRequest checks a 102 and writes its packet to the TUN.
func (s *Session) netRequest(p []byte) {
	addr := s.addr4.Load()
	if addr == 0 {
		s.drop(DropBeforeLease, nil)
		return
	}
	n, prob := packet.CheckIPv4(p)
	if prob != packet.OK {
		s.drop(dropFor(prob), nil)
		return
	}
	if packet.Src4(p) != addr {
		s.drop(DropSpoofedSource, []any{"src", packet.Src(p)})
		return
	}
	if s.tunw == nil {
		s.tunw = s.cfg.getTUNWriter()
	}
	if err := s.tunw.WritePacket(p[:n]); err != nil {
		s.drop(DropTUNWriteError, []any{"err", err})
	}
	s.c.bytesFrom.Add(uint64(n))
	s.c.pktsFrom.Add(1)
}

// flushTUN writes the 102 packets the TUN writer holds and gives it back.
func (s *Session) flushTUN() {
	if s.tunw == nil {
		return
	}
	if err := s.tunw.Flush(); err != nil {
		s.drop(DropTUNWriteError, []any{"err", err})
	}
	s.cfg.tunWriters.Put(s.tunw)
	s.tunw = nil
}

// drop counts a drop and logs the first of each reason per connection.
func (s *Session) drop(r Drop, attrs []any) {
	s.cfg.Drops.Add(r)
	bit := uint32(1) << r
	if s.logged.Or(bit)&bit != 0 {
		return
	}
	args := append([]any{"session", s.id, "client", s.remote, "addr", s.Addr(), "reason", r.String()}, attrs...)
	s.cfg.Logger.Warn("dropped message from or to client (further drops of this kind on this connection are only counted)", args...)
}

// writer is the scratch space of one writer goroutine run, pooled so a
// burst of writes allocates nothing.
type writer struct {
	bufs []*Buf
	vec  [][]byte
	nb   net.Buffers
	iov  []unix.Iovec
}

// writevNonblock writes as much of bs as the socket takes now, without
// waiting, and returns the bytes written. EAGAIN is not an error.
func (w *writer) writevNonblock(raw syscall.RawConn, bs []*Buf) (int, error) {
	w.iov = w.iov[:0]
	for _, b := range bs {
		m := b.Message()
		if len(m) == 0 {
			continue
		}
		var v unix.Iovec
		v.Base = &m[0]
		v.SetLen(len(m))
		w.iov = append(w.iov, v)
		if len(w.iov) == 1024 { // IOV_MAX: the rest waits for the writer
			break
		}
	}
	if len(w.iov) == 0 {
		return 0, nil
	}
	var n int
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		switch {
		case e == 0:
			n = int(r)
		case e == unix.EAGAIN || e == unix.EINTR:
		default:
			werr = e
		}
		return true // never wait: that is the writer goroutine's job
	})
	clear(w.iov)
	if werr == nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// A deadline left by the writer goroutine is not this write's
		// business: nothing was written, the writer takes over.
		werr = err
	}
	return n, werr
}

var writers = sync.Pool{New: func() any { return new(writer) }}

// writeLoop drains the queue with one writev per turn and exits when the
// queue is empty (the next Send starts a new one).
func (s *Session) writeLoop() {
	defer s.writers.Done()
	w := writers.Get().(*writer)
	defer writers.Put(w)
	for {
		s.qmu.Lock()
		if len(s.queue) == 0 || s.qclosed {
			if s.cfg.WriteTimeout > 0 {
				// No deadline outlives the writes it guards (the TUN
				// reader's non-blocking writes would trip over it).
				// Under the lock: the next writer sets its own after.
				s.conn.SetWriteDeadline(time.Time{})
			}
			s.writing = false
			if cap(s.queue) > 64 {
				s.queue = nil // a burst is over: give its memory back
			}
			s.qmu.Unlock()
			return
		}
		w.bufs = append(w.bufs[:0], s.queue...)
		clear(s.queue)
		s.queue = s.queue[:0]
		s.qmu.Unlock()

		w.vec = w.vec[:0]
		for _, b := range w.bufs {
			w.vec = append(w.vec, b.Message())
		}
		w.nb = w.vec
		if s.cfg.WriteTimeout > 0 {
			s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		}
		_, err := w.nb.WriteTo(s.conn)
		var bytes, pkts uint64
		for i, b := range w.bufs {
			if b.N > wire.HeaderLen && b.B[4] == byte(wire.TypeNetResponse) {
				bytes += uint64(b.N - wire.HeaderLen)
				pkts++
			}
			PutBuf(b)
			w.bufs[i] = nil
		}
		clear(w.vec)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.Close(fmt.Sprintf("client stopped reading: write blocked for %s", s.cfg.WriteTimeout))
			} else {
				s.Close(writeErrReason(err))
			}
			s.qmu.Lock()
			s.writing = false
			s.qmu.Unlock()
			return
		}
		s.c.bytesTo.Add(bytes)
		s.c.pktsTo.Add(pkts)
	}
}

func writeErrReason(err error) string {
	switch {
	case errors.Is(err, net.ErrClosed):
		return "closed"
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return "connection reset by client"
	}
	return "write error: " + err.Error()
}
