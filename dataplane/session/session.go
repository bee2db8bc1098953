// Package session runs one client connection: a reader goroutine that
// decodes the stream, checks 102s and hands them to the TUN, and the
// client's send queue (sendq), which writes 101s, 103s and 104s to it.
//
// A session moves Accepted -> Leased -> Closing -> Closed. Every exit path
// goes through Close, which runs once: it releases the lease (if any) and
// all resources exactly once, whichever goroutine notices the end first.
//
// The reader never waits for the controller: the first 100 starts the
// lease on a goroutine of its own, and the reader goes on reading (104s
// count as signs of life, a 102 before the 101 is dropped). A 100 that
// arrives while the lease is pending is answered by the same, single 101;
// one that arrives after the 101 went out gets the 101 again.
//
// Keepalives run on a Sweeper: each session is visited when its next 104
// (due at leased_at + k × interval) or its timeout is due, not on a
// periodic sweep of every session.
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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/dataplane/capture"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/policy"
	"github.com/fourover6/fourover6/dataplane/rcvwin"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
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

// Host is what a session needs from its data plane.
type Host interface {
	// Lease obtains the 101 for s on its first 100. It may block (it asks
	// the controller; the reader goes on meanwhile); ctx ends when s
	// closes. An error that is a *Refusal closes s with its Cause, any
	// other with CauseNoAddress.
	Lease(ctx context.Context, s *Session) (wire.AddrResponse, error)
	// Leased is called once the 101 is queued: from now on packets for
	// s.Addr() go to s. It runs under the session's lock, so a concurrent
	// Close waits for it; it must be quick.
	Leased(s *Session)
	// Release gives up addr: remove the route, return the address to the
	// pool. Called once per lease, never under a lock; must not block long.
	Release(s *Session, addr netip.Addr, why Reason)
	// Closed is called last, once, when s is gone.
	Closed(s *Session, why Reason)
}

// Config is shared by all sessions of a data plane. Every field but the
// durations and sizes is required.
type Config struct {
	Host   Host
	TUN    tun.Device
	Drops  *Drops
	Logger *slog.Logger
	Policy *policy.Policy // where 102s may go; nil: anywhere

	KeepaliveInterval time.Duration // 104 every interval once leased
	KeepaliveTimeout  time.Duration // silence (or no 100) longer than this closes
	SendQueueLen      int           // messages waiting per client; more are dropped
	SendQueueBytes    int           // message bytes waiting per client (0: sendq's default)
	SendQueueDelay    time.Duration // longest wait of a 103 in the queue (0: sendq's default)
	SendQueueTarget   time.Duration // the queue's CoDel target (0: sendq's default)
	WriteTimeout      time.Duration // a client that does not read for this long is cut
	ReadBufferSize    int           // decoder buffer per client, to start with
	MaxReadBufferSize int           // ... growing up to this for busy clients

	// Epoch is the base of the monotonic clock sessions keep (Now).
	Epoch time.Time

	// Sweeper, when set, runs every session's keepalive rules when they
	// are due; without one the caller calls Tick.
	Sweeper *Sweeper
	// Merged, when set, counts 100s answered by a pending lease's 101.
	Merged *atomic.Uint64

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

	ctx    context.Context // ends when the session closes
	cancel context.CancelFunc
	done   chan struct{}

	// out is what goes to the client. Its writer goroutine runs only while
	// the client's socket is full, so an idle client costs no goroutine
	// and no buffers; one that does not read is cut after WriteTimeout.
	out *sendq.Queue

	state     atomic.Int32
	addr4     atomic.Uint32 // leased address as packet.Addr4, 0 before
	src4      atomic.Uint32 // the source 102s must carry: set just before the 101 goes out
	lastHeard atomic.Int64  // cfg.Now() of the last complete message
	leasedAt  atomic.Int64  // cfg.Now() when the 101 went out: 104s are due at leasedAt + k × interval
	nextKA    atomic.Int64  // cfg.Now() when the next 104 is due
	asked     atomic.Bool   // a 100 arrived
	logged    atomic.Uint32 // drop reasons already logged (bit per Drop)
	c         counters
	sched     schedEntry // the Sweeper's, under its lock

	mu     sync.Mutex // guards the transitions below
	reason Reason

	// A hand-off freezes the session (Freeze, Thaw); under mu.
	frozen   bool
	deferred *Reason       // a Close asked for while frozen
	parked   chan struct{} // closed by the reader when it stopped
	thaw     chan bool     // Thaw's word to the parked reader: resume?

	dec   *wire.Decoder // the reader's; read by Export once it parked
	inbuf []byte        // bytes another process had read: decoded first

	// leaseMu orders the 101s: a 100 either finds the lease pending (and
	// is answered by the 101 on its way) or finds the 101 sent (and gets
	// it again). Close never takes it, so a 101 may be written under it.
	leaseMu sync.Mutex
	lease   wire.AddrResponse // valid once sent101
	pending bool              // the lease goroutine runs
	sent101 bool
	leasing sync.WaitGroup // the lease goroutine
	// gwDNS: the 101 names the gateway as a DNS server (then DNS to it
	// passes the policy). Stored before src4, which the reader loads first.
	gwDNS atomic.Bool

	tunw tun.Writer // reader goroutine: 102s on their way to the TUN; nil when none

	// tap is where captures of this client attach; taps is the reader's
	// copy of it, loaded once per read (nil when nobody captures).
	tap  capture.Point
	taps *capture.Set
}

// New wraps an accepted connection (one that gives access to its socket,
// as a *net.TCPConn does). Call Serve to run it.
func New(cfg *Config, id string, conn net.Conn) (*Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		cfg: cfg, id: id, conn: conn,
		since: time.Now(), born: cfg.Now(),
		ctx: ctx, cancel: cancel,
		done: make(chan struct{}),
	}
	var err error
	s.out, err = sendq.New(conn, sendq.Config{
		Limit: cfg.SendQueueLen, MaxBytes: cfg.SendQueueBytes, MaxDelay: cfg.SendQueueDelay, Target: cfg.SendQueueTarget,
		WriteTimeout: cfg.WriteTimeout, OnFail: s.writeFailed, OnDrop: s.queueDropped,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	if ap, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil {
		s.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	s.lastHeard.Store(s.born)
	s.sched.idx = -1
	if cfg.Sweeper != nil {
		cfg.Sweeper.schedule(s, s.born+int64(cfg.KeepaliveTimeout)+1)
	}
	return s, nil
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
		Traffic:     s.Traffic(),
		SendQueue:   s.out.Len(),
	}
}

// Traffic returns the session's traffic counters.
func (s *Session) Traffic() Traffic {
	t := s.c.snapshot()
	t.BytesToClient, t.PacketsToClient = s.out.Sent()
	return t
}

// Serve runs the session's reader in this goroutine until the session
// closes, then waits for its lease goroutine and its send queue's writer
// goroutine, if they run.
func (s *Session) Serve() {
	s.readLoop()
	s.leasing.Wait()
	s.out.Wait()
}

// Send queues a framed control message (a 101 or 104) for the client
// without blocking; when nothing waits for the client it is written at
// once. It returns false (and the caller keeps the buffer) when the session
// is closing or its queue is full.
func (s *Session) Send(b *sendq.Buf) bool {
	return s.send(b) == nil
}

func (s *Session) send(b *sendq.Buf) error {
	one := [1]*sendq.Buf{b}
	_, err := s.out.Send(one[:])
	return err
}

// SendData queues 103s that the caller framed in pooled buffers (never a
// sendq.Static one: it records Data on each), counting a drop for each that
// does not fit; it returns how many were queued (a prefix of bs, which the
// session now owns; the caller keeps the rest).
//
// When nothing is waiting for the client, the messages are written at once
// without blocking: a busy flow is forwarded without handing each batch to
// another goroutine (a thread wake-up per batch), while a client whose
// socket is full only costs the caller the attempt (see sendq.Queue).
func (s *Session) SendData(bs []*sendq.Buf) int {
	for _, b := range bs {
		b.Kind = sendq.Data
	}
	if taps := s.tap.Load(); taps != nil {
		return s.sendDataCaptured(taps, bs)
	}
	n, err := s.out.Send(bs)
	if errors.Is(err, sendq.ErrFull) {
		for range len(bs) - n {
			s.drop(DropSendQueueFull, nil)
		}
	}
	return n
}

// sendDataCaptured is SendData while someone captures the client: the
// packets are copied before the queue takes them (it may write and recycle
// them at once), and marked with what became of them.
func (s *Session) sendDataCaptured(taps *capture.Set, bs []*sendq.Buf) int {
	batch := taps.Begin(capture.ToClient)
	for i, b := range bs {
		batch.Stage(i, b.B[wire.HeaderLen:b.N])
	}
	n, err := s.out.Send(bs)
	switch {
	case errors.Is(err, sendq.ErrFull):
		for range len(bs) - n {
			s.drop(DropSendQueueFull, nil)
		}
		batch.MarkFrom(n, DropSendQueueFull.String())
	case n < len(bs):
		batch.MarkFrom(n, CaptureSessionClosed)
	}
	batch.Publish()
	return n
}

// CaptureSessionClosed marks captured 103s that the session did not take
// because it was closing.
const CaptureSessionClosed = "session_closed"

// Capture is where captures of the client attach (see package capture).
func (s *Session) Capture() *capture.Point { return &s.tap }

// queueDropped is the send queue's OnDrop: 103s it took and then dropped.
func (s *Session) queueDropped(full, late int) {
	for range full {
		s.drop(DropSendQueueFull, nil)
	}
	for range late {
		s.drop(DropSendQueueDelay, nil)
	}
}

// writeFailed is the send queue's OnFail: a write to the client failed.
func (s *Session) writeFailed(err error) {
	s.Close(writeErrReason(err, s.cfg.WriteTimeout))
}

// Close ends the session; only the first call does anything. It returns
// once the address is released and Host.Closed has run; a blocked write to
// the client is cut short (the connection is closed first).
func (s *Session) Close(why Reason) {
	s.mu.Lock()
	if s.state.Load() >= int32(Closing) {
		s.mu.Unlock()
		return
	}
	if s.frozen {
		// A hand-off is under way: the lease must not be released while
		// another process may take the session over; Thaw or the receiver
		// closes it.
		if s.deferred == nil {
			s.deferred = &why
		}
		s.mu.Unlock()
		return
	}
	s.state.Store(int32(Closing))
	s.reason = why
	leased := s.Addr()
	s.mu.Unlock()

	s.cancel()
	close(s.done)
	s.conn.Close() // unblocks the reader and a waiting writer
	s.out.Close()  // drops what still waits for the client
	if s.cfg.Sweeper != nil {
		s.cfg.Sweeper.remove(s)
	}
	if leased.IsValid() {
		s.cfg.Host.Release(s, leased, why)
	}
	s.state.Store(int32(Closed))
	s.cfg.Host.Closed(s, why)
}

// Reason returns why the session closed (the zero Reason while open).
func (s *Session) Reason() Reason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Tick runs the keepalive rules at time now (cfg.Now()) and returns when
// they are next due (0 once the session is closing). The Sweeper calls it
// when due; calling it earlier or more often changes nothing.
//
// The rules: no 100 within the keepalive timeout of the connect, or
// silence for longer than the timeout (counted from the last message, or
// the 101 if later; not while the lease is pending), closes; once leased a
// 104 goes out
// at leasedAt + k × interval for k = 1, 2, ..., however late the tick
// that sends one (a late 104 does not push the next ones back).
func (s *Session) Tick(now int64) (next int64) {
	st := State(s.state.Load())
	if st >= Closing {
		return 0
	}
	timeout := int64(s.cfg.KeepaliveTimeout)
	waiting := st == Accepted && !s.asked.Load()
	if waiting && now-s.born > timeout {
		s.Close(Reason{CauseNoAddrRequest, "none within " + s.cfg.KeepaliveTimeout.String()})
		return 0
	}
	if st == Accepted && !waiting {
		// The 100 is answered by a lease still pending: the client waits
		// for us, which is no silence (the host's allocation timeout
		// bounds the wait).
		return now + timeout
	}
	// Silence is counted from the last message heard, or from the 101 if
	// that came later: a client is not silent while it waits for it.
	heard := max(s.lastHeard.Load(), s.leasedAt.Load())
	if now-heard > timeout {
		s.Close(Reason{CauseKeepaliveTimeout, "silent for more than " + s.cfg.KeepaliveTimeout.String()})
		return 0
	}
	next = heard + timeout + 1
	if waiting {
		next = min(next, s.born+timeout+1)
	}
	if st == Leased {
		ka := s.nextKA.Load()
		if now >= ka {
			if errors.Is(s.send(keepaliveBuf), sendq.ErrFull) {
				s.drop(DropSendQueueFull, nil)
			}
			interval := int64(s.cfg.KeepaliveInterval)
			at := s.leasedAt.Load()
			ka = at + ((now-at)/interval+1)*interval
			s.nextKA.Store(ka)
		}
		next = min(next, ka)
	}
	return next
}

func (s *Session) readLoop() {
	// The receive window follows what the connection carries: 102s wait
	// unread in the socket for as little as the path allows (rcvwin).
	dec := wire.NewDecoder(rcvwin.NewReader(s.conn), s.cfg.ReadBufferSize)
	dec.SetMaxSize(s.cfg.MaxReadBufferSize)
	dec.Prime(s.inbuf)
	s.inbuf = nil
	s.dec = dec
	defer s.flushTUN()
	for {
		fresh := !dec.Ready()
		if fresh {
			// Next would block: hand what the last read carried to the TUN.
			s.flushTUN()
		}
		m, err := dec.Next()
		if fresh {
			// A read: are its packets captured? One atomic load per read.
			s.taps = s.tap.Load()
		}
		if err != nil {
			if parked, thaw, frozen := s.freezing(); frozen {
				s.flushTUN()
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					s.Close(readErrReason(err)) // kept for after the hand-off
					close(parked)
					return
				}
				close(parked)
				if <-thaw {
					continue
				}
				return
			}
		}
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
			s.addrRequest()
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

// freezing returns the channels of the freeze in force, if any: the reader
// says it stopped on parked and learns on thaw whether to go on.
func (s *Session) freezing() (parked chan struct{}, thaw chan bool, frozen bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parked, s.thaw, s.frozen
}

func readErrReason(err error) Reason {
	var fe *wire.FrameError
	switch {
	case errors.Is(err, io.EOF):
		return Reason{Cause: CauseClientClosed}
	case errors.As(err, &fe):
		return Reason{CauseFrameError, fmt.Sprintf("length field %d outside %d..%d", fe.Length, wire.HeaderLen, wire.MaxMsgLen)}
	case errors.Is(err, wire.ErrTruncated):
		return Reason{Cause: CauseClientTruncated}
	case errors.Is(err, net.ErrClosed):
		return Reason{Cause: CauseClosed}
	case errors.Is(err, syscall.ECONNRESET):
		return Reason{Cause: CauseReset}
	}
	return Reason{CauseReadError, err.Error()}
}

func writeErrReason(err error, timeout time.Duration) Reason {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return Reason{CauseWriteTimeout, "write blocked for " + timeout.String()}
	case errors.Is(err, net.ErrClosed):
		return Reason{Cause: CauseClosed}
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return Reason{Cause: CauseReset}
	}
	return Reason{CauseWriteError, err.Error()}
}

// addrRequest answers a 100: it starts the lease, or (a repeat) sends the
// 101 again, or (the lease is pending) leaves the answer to the 101 on its
// way. It never blocks on the controller.
func (s *Session) addrRequest() {
	s.asked.Store(true)
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	switch {
	case s.sent101:
		// A repeated 100 gets the same address again.
		s.send101(s.lease)
	case s.pending:
		// Answered by the pending lease's 101: one 100 or five, one 101.
		if s.cfg.Merged != nil {
			s.cfg.Merged.Add(1)
		}
	default:
		s.pending = true
		s.leasing.Add(1)
		go s.getLease()
	}
}

// getLease runs on its own goroutine: it asks the host for the lease, sends
// the 101 and makes the session Leased.
func (s *Session) getLease() {
	defer s.leasing.Done()
	lease, err := s.cfg.Host.Lease(s.ctx, s)
	if err != nil {
		s.leaseMu.Lock()
		s.pending = false
		s.leaseMu.Unlock()
		if s.ctx.Err() == nil {
			var r *Refusal
			if errors.As(err, &r) {
				s.Close(Reason{r.Cause, r.Err.Error()})
			} else {
				s.Close(Reason{CauseNoAddress, err.Error()})
			}
		}
		return
	}
	// The 101 goes into the queue before the session can receive 103s
	// (routed to it from Host.Leased on) or 104s (sent once Leased), so it
	// is the first message the client gets. Not under s.mu: a write that
	// fails closes the session, which takes s.mu. A session already
	// closing sends none; one that starts closing meanwhile is seen below.
	// leaseMu is held until the route is in: a 102 the client sends on
	// reading the 101 waits for it (netRequest), so its answer finds the
	// route.
	s.leaseMu.Lock()
	if s.state.Load() < int32(Closing) {
		s.gwDNS.Store(s.cfg.Policy.GatewayDNS(lease.DNS[:]))
		s.src4.Store(packet.Addr4(lease.Addr))
		s.send101(lease)
		s.lease, s.sent101 = lease, true
	}
	s.pending = false
	s.mu.Lock()
	if s.state.Load() >= int32(Closing) {
		// Closed while the controller answered (or by the 101's write):
		// nobody else knows about this lease, so give it back here.
		s.mu.Unlock()
		s.leaseMu.Unlock()
		s.cfg.Host.Release(s, lease.Addr, Reason{Cause: CauseClosedWhileLeasing})
		return
	}
	now := s.cfg.Now()
	s.addr4.Store(packet.Addr4(lease.Addr))
	s.leasedAt.Store(now)
	s.nextKA.Store(now + int64(s.cfg.KeepaliveInterval))
	s.state.Store(int32(Leased))
	s.cfg.Host.Leased(s)
	s.mu.Unlock()
	s.leaseMu.Unlock()
	if s.cfg.Sweeper != nil {
		s.cfg.Sweeper.schedule(s, now+int64(s.cfg.KeepaliveInterval))
	}
}

// waitLeased returns once the lease goroutine has finished the lease's
// transition: it holds leaseMu throughout.
func (s *Session) waitLeased() {
	s.leaseMu.Lock()
	_ = s.sent101 // read under the lock: the transition is done
	s.leaseMu.Unlock()
}

// Refusal is a Host.Lease error that says why the session closes.
type Refusal struct {
	Cause Cause
	Err   error
}

func (r *Refusal) Error() string { return r.Err.Error() }

// Unwrap returns Err.
func (r *Refusal) Unwrap() error { return r.Err }

func (s *Session) send101(lease wire.AddrResponse) {
	b := sendq.Get()
	msg, err := wire.AppendAddrResponse(b.B[:0], lease)
	if err != nil {
		sendq.Put(b)
		s.cfg.Logger.Error("cannot format 101", "session", s.id, "err", err)
		return
	}
	b.N = len(msg)
	if err := s.send(b); err != nil {
		sendq.Put(b)
		if errors.Is(err, sendq.ErrFull) {
			s.drop(DropSendQueueFull, nil)
		}
	}
}

// netRequest checks a 102 and writes its packet to the TUN.
func (s *Session) netRequest(p []byte) {
	r, n := s.forward(p)
	if s.taps != nil {
		drop := ""
		if r != dropNone {
			drop = r.String()
		}
		s.taps.Add(capture.FromClient, drop, p)
	}
	if n > 0 { // forwarded (a TUN write error included: the kernel saw it)
		s.c.bytesFrom.Add(uint64(n))
		s.c.pktsFrom.Add(1)
	}
}

// dropNone is forward's "not dropped".
const dropNone = NumDrops

// forward checks a 102's packet and writes it to the TUN; it returns
// dropNone or why it was dropped (counted), and the length of the packet
// handed to the TUN (0 when none was).
func (s *Session) forward(p []byte) (Drop, int) {
	addr := s.src4.Load()
	if addr != 0 && s.addr4.Load() == 0 {
		// The 101 is out, the route not in yet: wait for it.
		s.waitLeased()
	}
	if addr == 0 {
		s.drop(DropBeforeLease, nil)
		return DropBeforeLease, 0
	}
	n, prob := packet.CheckIPv4(p)
	if prob != packet.OK {
		r := dropFor(prob)
		s.drop(r, nil)
		return r, 0
	}
	if packet.Src4(p) != addr {
		s.drop(DropSpoofedSource, []any{"src", packet.Src(p)})
		return DropSpoofedSource, 0
	}
	if r := s.cfg.Policy.Check(p[:n], s.gwDNS.Load()); r != policy.Allow {
		d := policyDrops[r]
		s.drop(d, []any{"dst", packet.Dst(p)})
		return d, 0
	}
	if s.tunw == nil {
		s.tunw = s.cfg.getTUNWriter()
	}
	if err := s.tunw.WritePacket(p[:n]); err != nil {
		s.drop(DropTUNWriteError, []any{"err", err})
		return DropTUNWriteError, n
	}
	return dropNone, n
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
	level := slog.LevelWarn
	if r.byPolicy() {
		// Refused destinations are routine (clients' mDNS, SSDP and
		// broadcasts): counted, and logged for whoever looks closer.
		level = slog.LevelDebug
	}
	s.cfg.Logger.Log(context.Background(), level, "dropped message from or to client (further drops of this kind on this connection are only counted)", args...)
}

var keepaliveBuf = sendq.Static(wire.Keepalive[:])
