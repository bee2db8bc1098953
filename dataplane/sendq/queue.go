// Package sendq holds a client's output: the framed messages waiting for
// its TCP socket, and the one writer at a time that moves them there.
package sendq

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Errors of Send.
var (
	// ErrFull: the queue holds its limit; the messages not taken are the
	// caller's (a drop, for the caller to count).
	ErrFull = errors.New("send queue full")
	// ErrClosed: the queue is closed; nothing was taken.
	ErrClosed = errors.New("send queue closed")
)

// Config sets a queue's bounds and timeout.
type Config struct {
	// Limit is how many messages may wait (each holds a BufSize buffer:
	// this bounds memory). At least 1.
	Limit int
	// MaxBytes bounds the message bytes waiting; DefaultMaxBytes when 0.
	MaxBytes int
	// MaxDelay: a Data message that waited longer is dropped when its turn
	// comes; DefaultMaxDelay when 0.
	MaxDelay time.Duration
	// Target and Interval are CoDel's, per flow; DefaultTarget and
	// DefaultInterval when 0.
	Target, Interval time.Duration
	// WriteTimeout bounds how long a write may wait for room in the
	// socket: a client that takes nothing for this long is cut. 0: no
	// bound (the write waits until the connection is closed).
	WriteTimeout time.Duration
	// OnFail is told of the first failed write (a closed or reset
	// connection, os.ErrDeadlineExceeded when the client stopped reading).
	// It is called once, by the writer that saw the failure, after the
	// queue closed and gave up the writer role, with no lock of the queue
	// held: it may call Close. Required.
	OnFail func(error)
	// OnDrop, when set, is told of Data messages the queue took and then
	// dropped: full to make room for another flow's message, late by
	// CoDel or MaxDelay. Called with no lock of the queue held.
	OnDrop func(full, late int)
}

// Queue is one client's output: framed messages on their way to the
// client's TCP socket.
//
// Writer role. Exactly one goroutine at a time writes to the socket: the
// holder of the writer role (writing, under mu). A Send that finds the role
// free takes it and writes at once without blocking (inline: the TUN reader
// forwarding a burst, the sweeper a keepalive), so a client that keeps up
// costs no goroutine and no hand-off. What the socket does not take goes
// back to the head of the queue and the role passes, under mu, to a writer
// goroutine started for it, which drains the queue turn by turn, letting
// the netpoller wait for room, and gives the role up under mu when it finds
// the queue empty. A Send that finds the role taken only queues. Hence
// messages wait only while the role is taken, an inline write never
// competes with the goroutine, and there is at most one writer goroutine.
//
// Deadline. Only the writer goroutine sets a write deadline: now +
// WriteTimeout at the start of each turn (at most turnBytes), so a client that reads, however slowly, is not cut, and one
// that takes nothing for WriteTimeout is. It clears the deadline before it
// gives up the role: no inline write ever meets a deadline.
//
// Order. Messages go out whole, never interleaved; those of one flow in
// the order their Sends took mu: an inline write's remainder goes back
// ahead of anything queued meanwhile (a message it wrote in part first of
// all). A flow that becomes active is served after those active already,
// so a message queued before any other can be queued (a session's 101,
// sent before it routes 103s or sends 104s) is the first the client gets.
//
// Flows. Waiting messages are kept per flow (flows.go): the IPv4 5-tuple
// of a Data message's packet, hashed; control messages in a flow of their
// own. The writer takes them by deficit round robin, flows that just became
// active first, at most turnBytes per turn: a message of a flow with
// nothing waiting goes out after at most one turn, however much another
// flow has queued.
//
// Bound. At most Limit messages and MaxBytes message bytes wait. A Data
// message past a bound makes room by dropping from the head of the flow
// holding the most bytes (counted to OnDrop as full), unless it belongs to
// that flow: then it is refused, and Send returns ErrFull with it and the
// rest, which stay the caller's. Control messages do not count against
// MaxBytes (they are a few bytes, every few seconds) and are refused past
// Limit, never at the cost of Data; once taken they are never dropped. The
// one excess: an inline write's remainder goes back whatever the bounds
// (the queue took it already), at most one Send's batch.
//
// Delay. Each flow runs CoDel (Target, Interval) over the time its Data
// messages waited, from Send to their turn, and drops any that waited past
// MaxDelay: a standing queue shrinks until the inner TCP slows down. Drops
// are counted to OnDrop as late.
//
// Failure. A failed write closes the queue at once: what waits is dropped,
// later Sends get ErrClosed, and OnFail learns why.
//
// Close refuses further Sends, waits for the writer role to be free (an
// inline write finishes; a goroutine blocked on a full socket returns once
// the connection is closed, so close it first, or when its deadline
// passes) and drops what waits. Then no message of the queue is written or
// held anymore: every Buf is back in the pool. The writer goroutine may
// still be returning (from OnFail); Wait waits for that.
//
// Counting. Bytes and packets to the client are counted in one place,
// writer.finish, when the last byte of a Data message is written: never a
// message that was dropped or only partly written.
//
// Shape. The waiting messages are touched in three places only: Send
// enqueues within the bounds, writeNow puts a remainder back in front,
// writeLoop takes a turn through next. finish is where every written
// message ends (what looks at messages as sent belongs there), and taking
// the role as Close does is what stopping the writer without dropping
// anything would take.
type Queue struct {
	raw      syscall.RawConn
	conn     net.Conn // for its write deadline
	limit    int
	maxBytes int
	wto      time.Duration
	onFail   func(error)
	onDrop   func(full, late int)
	salt     uint32 // of the flow hash

	maxDelay, target, interval int64 // nanoseconds

	bytes, packets atomic.Uint64 // Data messages written, see Sent

	mu       sync.Mutex
	free     sync.Cond // broadcast when the writer role is given up
	fl       *flows    // waiting messages by flow; nil when none wait
	newFlows flowList  // active flows not yet served a quantum
	oldFlows flowList  // the other active flows
	partial  *Buf      // an inline write's message written in part: first to go
	waiting  int       // messages waiting, partial included
	inFlows  int       // bytes of the messages in the flows
	writing  bool      // the writer role is taken
	closed   bool
	paused   bool           // Pause holds the writer role: messages wait, nothing is written
	pausing  bool           // Pause is taking the role: a writer goroutine's deadline is Pause's
	running  sync.WaitGroup // the writer goroutine; Add only under mu while open
	handoffs int            // times the role went to a goroutine (tests look)
}

// New returns a queue writing to conn, which must give access to its
// socket (syscall.Conn: a *net.TCPConn does).
func New(conn net.Conn, c Config) (*Queue, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("send queue: %T gives no access to its socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("send queue: %w", err)
	}
	if c.OnFail == nil {
		return nil, errors.New("send queue: no OnFail")
	}
	q := &Queue{raw: raw, conn: conn, limit: max(c.Limit, 1), maxBytes: c.MaxBytes, wto: c.WriteTimeout,
		onFail: c.OnFail, onDrop: c.OnDrop, salt: rand.Uint32(),
		maxDelay: int64(c.MaxDelay), target: int64(c.Target), interval: int64(c.Interval)}
	if q.maxBytes <= 0 {
		q.maxBytes = DefaultMaxBytes
	}
	if q.maxDelay <= 0 {
		q.maxDelay = int64(DefaultMaxDelay)
	}
	if q.target <= 0 {
		q.target = int64(DefaultTarget)
	}
	if q.interval <= 0 {
		q.interval = int64(DefaultInterval)
	}
	q.free.L = &q.mu
	return q, nil
}

// Send takes bs (oldest first) for the client. It returns how many it took,
// a prefix of bs that the queue now owns, and ErrFull (the rest did not fit)
// or ErrClosed (nothing taken). The caller must not touch the taken
// buffers again; the slice bs stays the caller's. A static buffer is
// queued as a private copy.
//
// When the writer role is free, Send writes at once without blocking, on
// the caller's goroutine; a write that fails is reported to OnFail before
// Send returns (bs then counts as taken: dropped with the connection).
func (q *Queue) Send(bs []*Buf) (int, error) {
	if len(bs) == 0 {
		return 0, nil
	}
	t := now()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	if q.writing {
		var d drops
		n := 0
		for _, b := range bs {
			idx := q.flowOf(b)
			if !q.admit(idx, size(b), &d) {
				break
			}
			if b.static {
				b = privateCopy(b, 0)
			}
			b.at = t
			q.enqueue(b, idx, false)
			n++
		}
		q.mu.Unlock()
		q.reportDrops(d)
		if n < len(bs) {
			return n, ErrFull
		}
		return n, nil
	}
	q.writing = true // the role is ours until writeNow gives it up or passes it on
	q.mu.Unlock()
	q.writeNow(bs, t)
	return len(bs), nil
}

// privateCopy is a pooled copy of b's bytes from off on.
func privateCopy(b *Buf, off int) *Buf {
	c := Get()
	c.Kind = b.Kind
	c.N = copy(c.B, b.Message()[off:])
	return c
}

func (q *Queue) reportDrops(d drops) {
	if q.onDrop != nil && (d.full > 0 || d.late > 0) {
		q.onDrop(d.full, d.late)
	}
}

// writeNow is the inline writer: it holds the role on entry. t is when
// bs were sent.
func (q *Queue) writeNow(bs []*Buf, t int64) {
	w := getWriter()
	defer putWriter(w)
	// The writer works on its own copy of the slice: bs stays the
	// caller's (and on the caller's stack).
	w.bufs = append(w.bufs[:0], bs...)
	done, err := w.write(q.raw, w.bufs, false)
	q.count(w)
	rest := w.bufs[done:]
	partial := w.partial
	defer clear(w.bufs)
	if err != nil {
		q.fail(rest, err)
		return
	}
	q.mu.Lock()
	if q.closed {
		// Close is waiting for the role: the rest is dropped with the queue.
		for _, b := range rest {
			Put(b)
		}
		q.release()
		q.mu.Unlock()
		return
	}
	if len(rest) > 0 {
		// Ahead of whatever was queued meanwhile, so order is kept: the
		// message written in part before anything, the others at the
		// front of their flows.
		if partial {
			q.partial = rest[0]
			q.waiting++
			rest = rest[1:]
		}
		for i := len(rest) - 1; i >= 0; i-- {
			b := rest[i]
			if b.static {
				b = privateCopy(b, 0)
			}
			b.at = t
			q.enqueue(b, q.flowOf(b), true)
		}
	}
	if q.waiting == 0 {
		q.release()
		q.mu.Unlock()
		return
	}
	// The socket is full (or others queued meanwhile): hand the role to a
	// goroutine that may wait.
	q.running.Add(1)
	q.handoffs++
	q.mu.Unlock()
	go q.writeLoop()
}

// writeLoop is the writer goroutine: it holds the role on entry.
func (q *Queue) writeLoop() {
	defer q.running.Done()
	w := getWriter()
	defer putWriter(w)
	for {
		t := now()
		var d drops
		w.bufs = w.bufs[:0]
		q.mu.Lock()
		if !q.closed && !q.pausing {
			// (Pausing: the role goes to Pause, nothing taken.)
			q.turn(w, t, &d)
		}
		if len(w.bufs) == 0 {
			if q.wto > 0 {
				// Before the role is free: the next holder writes
				// without blocking and must not meet our deadline.
				q.conn.SetWriteDeadline(time.Time{})
			}
			q.release()
			q.mu.Unlock()
			q.reportDrops(d)
			return
		}
		if q.wto > 0 {
			// Under mu: a Pause coming after sets its deadline (in the
			// past) over this one, never the other way round.
			q.conn.SetWriteDeadline(time.Now().Add(q.wto))
		}
		q.mu.Unlock()
		q.reportDrops(d)

		done, err := w.write(q.raw, w.bufs, true)
		q.count(w)
		if err != nil && q.yield(w.bufs[done:], err) {
			clear(w.bufs)
			return
		}
		if err != nil {
			q.fail(w.bufs[done:], err)
			clear(w.bufs)
			return
		}
		clear(w.bufs)
	}
}

// yield ends the writer goroutine's turn without a failure when Pause cut
// its write short (by the deadline): rest goes back to the front, a partly
// written message with its offset, and the role is given up to Pause.
func (q *Queue) yield(rest []*Buf, err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.pausing || q.closed {
		return false
	}
	// Back in front, in order: a message written in part before anything
	// (turn took the queue's partial one first, so there is none), the
	// others at the front of their flows.
	if len(rest) > 0 && rest[0].off > 0 {
		q.partial = rest[0]
		q.waiting++
		rest = rest[1:]
	}
	for i := len(rest) - 1; i >= 0; i-- {
		q.enqueue(rest[i], q.flowOf(rest[i]), true)
	}
	q.conn.SetWriteDeadline(time.Time{})
	q.release()
	return true
}

// Pause takes the writer role and keeps it: nothing more is written to
// the socket, a message partly written stays at the head with what is left
// of it, and Sends queue (within the bound) behind it. A writer goroutine
// waiting for room is stopped by a write deadline in the past. It returns
// false when the queue is closed. Resume or Close end the pause; Pending
// says what waits meanwhile.
func (q *Queue) Pause() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	if q.paused {
		return true
	}
	q.pausing = true
	if q.writing {
		q.conn.SetWriteDeadline(time.Now().Add(-time.Second))
	}
	for q.writing && !q.closed {
		q.free.Wait()
	}
	q.pausing = false
	if q.closed {
		return false
	}
	q.writing, q.paused = true, true
	return true
}

// Pending returns the bytes that wait for the client while paused, message
// by message (the first may be the rest of a partly written one), with
// their kinds: the partly written message, then flow by flow in the order
// the writer serves them, each flow's in order. The slices are copies.
func (q *Queue) Pending() (msgs [][]byte, kinds []Kind) {
	q.mu.Lock()
	defer q.mu.Unlock()
	add := func(b *Buf) {
		msgs = append(msgs, append([]byte(nil), b.Message()...))
		k := b.Kind
		if b.off > 0 {
			k = Control // the rest of a message: not a whole packet to count
		}
		kinds = append(kinds, k)
	}
	if q.partial != nil {
		add(q.partial)
	}
	for _, l := range []*flowList{&q.newFlows, &q.oldFlows} {
		for f := l.head; f != nil; f = f.next {
			for b := f.head; b != nil; b = b.next {
				add(b)
			}
		}
	}
	return msgs, kinds
}

// Resume ends a pause: what waits is written by a writer goroutine (it may
// wait for room), or the role is given up when nothing waits.
func (q *Queue) Resume() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.paused {
		return
	}
	q.paused = false
	if q.closed {
		q.release()
		return
	}
	if q.waiting == 0 {
		q.release()
		return
	}
	q.running.Add(1)
	q.handoffs++
	go q.writeLoop()
}

// Preload queues messages before anything else is sent: what another
// process's queue had not written yet when the connection was handed over.
// Each is copied into a pooled buffer; a message of kind Data is counted
// when written, as any other. Call it before the first Send.
func (q *Queue) Preload(msgs [][]byte, kinds []Kind) {
	q.mu.Lock()
	defer q.mu.Unlock()
	t := now()
	for i, m := range msgs {
		if len(m) == 0 || len(m) > BufSize {
			continue
		}
		b := Get()
		b.N = copy(b.B, m)
		if i < len(kinds) {
			b.Kind = kinds[i]
		}
		b.at = t
		if i == 0 && q.partial == nil {
			// It may be the rest of a message written in part: it goes
			// before anything, as the queue's own partial message.
			q.partial = b
			q.waiting++
			continue
		}
		q.enqueue(b, q.flowOf(b), false)
	}
	if q.waiting > 0 && !q.writing && !q.closed {
		q.writing = true
		q.running.Add(1)
		go q.writeLoop()
	}
}

// AddSent adds to the counters of Sent (the totals of a connection's
// earlier life in another process).
func (q *Queue) AddSent(bytes, packets uint64) {
	q.bytes.Add(bytes)
	q.packets.Add(packets)
}

// turn takes the writer goroutine's next turn into w.bufs: the message
// written in part, then by flow up to turnBytes. Under mu.
func (q *Queue) turn(w *writer, t int64, d *drops) {
	w.bufs = w.bufs[:0]
	budget := turnBytes
	if b := q.partial; b != nil {
		q.partial = nil
		q.waiting--
		w.bufs = append(w.bufs, b)
		budget -= size(b)
	}
	for budget > 0 && len(w.bufs) < maxIOV {
		b := q.next(t, d)
		if b == nil {
			break
		}
		w.bufs = append(w.bufs, b)
		budget -= size(b)
	}
}

// release gives up the writer role. Under mu.
func (q *Queue) release() {
	q.writing = false
	q.releaseFlows() // a burst is over: give its memory back
	q.free.Broadcast()
}

// fail ends the queue after a failed write by the role holder: rest (the
// holder's unwritten messages) and everything waiting are dropped, the role
// is given up, and OnFail learns why, unless Close came first (then the
// failure is only the closed connection).
func (q *Queue) fail(rest []*Buf, err error) {
	for _, b := range rest {
		Put(b)
	}
	q.mu.Lock()
	report := !q.closed
	q.closed = true
	q.dropAll()
	q.release()
	q.mu.Unlock()
	if report {
		q.onFail(err)
	}
}

// dropAll frees the waiting messages. Under mu.
func (q *Queue) dropAll() {
	if q.partial != nil {
		Put(q.partial)
		q.partial = nil
		q.waiting--
	}
	if q.fl != nil {
		for i := range q.fl {
			for b := q.pop(&q.fl[i]); b != nil; b = q.pop(&q.fl[i]) {
				Put(b)
			}
		}
	}
	q.releaseFlows()
}

// count adds what w finished to the totals.
func (q *Queue) count(w *writer) {
	if w.packets > 0 {
		q.bytes.Add(w.bytes)
		q.packets.Add(w.packets)
	}
	w.bytes, w.packets = 0, 0
}

// Close stops the queue; see the type's comment for what it waits for.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	if q.paused {
		q.paused = false
		q.release()
	}
	for q.writing {
		q.free.Wait()
	}
	q.dropAll()
	q.mu.Unlock()
}

// Wait returns once no writer goroutine runs. Call it after Close.
func (q *Queue) Wait() { q.running.Wait() }

// Len is the number of messages waiting (not counting those a writer is
// writing).
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiting
}

// Sent returns the IPv4 bytes (without the 5-byte headers) and the packets
// of the Data messages written completely so far.
func (q *Queue) Sent() (bytes, packets uint64) {
	return q.bytes.Load(), q.packets.Load()
}
