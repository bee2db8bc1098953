package sendq

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// heldQueue is a queue whose writer role is taken (as while a writer waits
// for a full socket), with no socket: Send only queues, and the test takes
// turns itself through next.
func heldQueue(c Config) (*Queue, *drops) {
	d := new(drops)
	q := &Queue{limit: max(c.Limit, 1), maxBytes: c.MaxBytes, writing: true,
		maxDelay: int64(c.MaxDelay), target: int64(c.Target), interval: int64(c.Interval),
		onDrop: func(full, late int) { d.full += full; d.late += late }}
	if q.maxBytes == 0 {
		q.maxBytes = DefaultMaxBytes
	}
	if q.maxDelay == 0 {
		q.maxDelay = int64(time.Hour)
	}
	if q.target == 0 {
		q.target = int64(time.Hour)
	}
	if q.interval == 0 {
		q.interval = int64(DefaultInterval)
	}
	q.free.L = &q.mu
	return q, d
}

// pkt is a 103 carrying an IPv4 packet of the given protocol between
// 13.8.0.2:sport and 198.51.100.2:dport, total bytes long, tagged with seq.
func pkt(proto byte, sport, dport uint16, total int, seq uint32) *Buf {
	b := Get()
	b.Kind = Data
	wire.PutHeader(b.B, wire.TypeNetResponse, total)
	p := b.B[wire.HeaderLen : wire.HeaderLen+total]
	clear(p)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(total))
	p[8], p[9] = 64, proto
	copy(p[12:], []byte{198, 51, 100, 2})
	copy(p[16:], []byte{13, 8, 0, 2})
	binary.BigEndian.PutUint16(p[20:], dport)
	binary.BigEndian.PutUint16(p[22:], sport)
	binary.BigEndian.PutUint32(p[24:], seq)
	b.N = wire.HeaderLen + total
	return b
}

func seqOf(b *Buf) uint32  { return binary.BigEndian.Uint32(b.B[wire.HeaderLen+24:]) }
func portOf(b *Buf) uint16 { return binary.BigEndian.Uint16(b.B[wire.HeaderLen+22:]) }

func mustSend(t *testing.T, q *Queue, bs ...*Buf) {
	t.Helper()
	if n, err := q.Send(bs); err != nil || n != len(bs) {
		t.Fatalf("Send took %d of %d: %v", n, len(bs), err)
	}
}

// drain takes every waiting message in the writer's order.
func drain(q *Queue, at int64, d *drops) []*Buf {
	var out []*Buf
	q.mu.Lock()
	defer q.mu.Unlock()
	for b := q.next(at, d); b != nil; b = q.next(at, d) {
		out = append(out, b)
	}
	return out
}

// TestSparseFlowFirst: a ping queued behind a bulk flow's backlog of the
// same client goes out right after the bulk flow's first quantum.
func TestSparseFlowFirst(t *testing.T) {
	q, d := heldQueue(Config{Limit: 1000})
	for i := range 100 {
		mustSend(t, q, pkt(6, 5201, 40000, 1400, uint32(i)))
	}
	mustSend(t, q, pkt(1, 0, 0, 84, 999))
	out := drain(q, now(), d)
	if len(out) != 101 {
		t.Fatalf("%d messages out of 101", len(out))
	}
	if out[1].B[wire.HeaderLen+9] != 1 && out[2].B[wire.HeaderLen+9] != 1 {
		t.Fatalf("the ping went out at position %d, want within the bulk flow's first quantum", func() int {
			for i, b := range out {
				if b.B[wire.HeaderLen+9] == 1 {
					return i
				}
			}
			return -1
		}())
	}
	var want uint32
	for _, b := range out {
		if b.B[wire.HeaderLen+9] == 6 {
			if seqOf(b) != want {
				t.Fatalf("bulk flow out of order: %d, want %d", seqOf(b), want)
			}
			want++
		}
		Put(b)
	}
	if q.waiting != 0 || q.inFlows != 0 {
		t.Fatalf("waiting %d, %d bytes after the drain", q.waiting, q.inFlows)
	}
}

// TestRoundRobin: two bulk flows backlogged at once share the turns
// equally, in bytes.
func TestRoundRobin(t *testing.T) {
	q, d := heldQueue(Config{Limit: 1000, MaxBytes: 1 << 30})
	// Find two ports in different buckets.
	a, b := uint16(1000), uint16(1001)
	for q.flowOf(pkt(6, a, 80, 100, 0)) == q.flowOf(pkt(6, b, 80, 100, 0)) {
		b++
	}
	for i := range 200 {
		mustSend(t, q, pkt(6, a, 80, 1400, uint32(i)))
	}
	for i := range 400 {
		mustSend(t, q, pkt(6, b, 80, 700, uint32(i)))
	}
	out := drain(q, now(), d)
	var bytesA, bytesB int
	for i, m := range out[:300] {
		if portOf(m) == a {
			bytesA += m.N
		} else {
			bytesB += m.N
		}
		_ = i
	}
	if diff := bytesA - bytesB; diff > 2*quantum || diff < -2*quantum {
		t.Fatalf("over the first 300 messages flow a got %d bytes, flow b %d", bytesA, bytesB)
	}
	for _, m := range out {
		Put(m)
	}
}

// TestBoundDropsFattest: past MaxBytes, the flow holding the most is the
// one that loses: its own next message is refused (ErrFull, still the
// caller's), another flow's message is taken and the fattest flow's head
// dropped for it (OnDrop full).
func TestBoundDropsFattest(t *testing.T) {
	q, _ := heldQueue(Config{Limit: 1000, MaxBytes: 20 * 1405})
	var fulls int
	q.onDrop = func(full, late int) { fulls += full }
	for i := range 20 {
		mustSend(t, q, pkt(6, 5201, 40000, 1400, uint32(i)))
	}
	bulk := pkt(6, 5201, 40000, 1400, 20)
	if n, err := q.Send([]*Buf{bulk}); n != 0 || !errors.Is(err, ErrFull) {
		t.Fatalf("the fattest flow's message past the bound: took %d, %v; want ErrFull", n, err)
	}
	if bulk.N != wire.HeaderLen+1400 {
		t.Fatal("a refused buffer was changed")
	}
	Put(bulk)
	mustSend(t, q, pkt(17, 53000, 53, 60, 0))
	if fulls != 1 {
		t.Fatalf("OnDrop counted %d full drops, want 1", fulls)
	}
	if q.inFlows > q.maxBytes {
		t.Fatalf("%d bytes wait, bound %d", q.inFlows, q.maxBytes)
	}
	out := drain(q, now(), new(drops))
	if seqOf(out[0]) != 1 {
		t.Fatalf("first bulk message out %d: the head (0) should have been dropped", seqOf(out[0]))
	}
	for _, m := range out {
		Put(m)
	}
	// Control messages are refused past Limit, never at Data's cost.
	q2, _ := heldQueue(Config{Limit: 2})
	mustSend(t, q2, pkt(6, 1, 2, 100, 0), pkt(6, 1, 2, 100, 1))
	if n, err := q2.Send([]*Buf{keepalive}); n != 0 || !errors.Is(err, ErrFull) || q2.waiting != 2 {
		t.Fatalf("a keepalive past Limit: took %d, %v, %d waiting", n, err, q2.waiting)
	}
	for _, m := range drain(q2, now(), new(drops)) {
		Put(m)
	}
}

// TestCoDel: a flow whose messages keep waiting past target for more than
// an interval loses some from its head, at a rate that grows while the
// queue stands; one waiting past MaxDelay is dropped at its turn; control
// messages are never dropped; a flow with one message is left alone.
func TestCoDel(t *testing.T) {
	const target, interval = 5 * time.Millisecond, 100 * time.Millisecond
	q, d := heldQueue(Config{Limit: 10000, MaxBytes: 1 << 30, Target: target, Interval: interval, MaxDelay: time.Hour})
	for i := range 2000 {
		mustSend(t, q, pkt(6, 5201, 40000, 1400, uint32(i)))
	}
	mustSend(t, q, keepalive)
	// Every message waited 10 ms at its turn: above target. Take turns
	// over a simulated second.
	start := now()
	var got, late int
	q.mu.Lock()
	for step := int64(0); step < 1000 && q.waiting > 0; step++ {
		tick := start + step*int64(time.Millisecond)
		// The sojourn time of the head stays 10 ms: restamp the flows.
		for i := range q.fl {
			for b := q.fl[i].head; b != nil; b = b.next {
				b.at = tick - int64(10*time.Millisecond)
			}
		}
		var sd drops
		if b := q.next(tick, &sd); b != nil {
			got++
			Put(b)
		}
		late += sd.late
	}
	q.mu.Unlock()
	if late == 0 {
		t.Fatal("CoDel never dropped from a standing queue")
	}
	if late > got/2 {
		t.Fatalf("CoDel dropped %d and passed %d: far too many", late, got)
	}
	for _, b := range drain(q, now(), d) {
		Put(b)
	}

	// MaxDelay.
	q, d = heldQueue(Config{Limit: 100, MaxDelay: 50 * time.Millisecond})
	mustSend(t, q, pkt(6, 1, 2, 100, 0), keepalive)
	out := drain(q, now()+int64(time.Second), d)
	if d.late != 1 || len(out) != 1 || out[0].Kind != Control {
		t.Fatalf("after a second: %d out, %d late; want the keepalive only and one late drop", len(out), d.late)
	}
	Put(out[0])

	// A lone message is not dropped by CoDel, however long it waited.
	q, d = heldQueue(Config{Limit: 100, Target: target, Interval: interval})
	mustSend(t, q, pkt(6, 1, 2, 1400, 0))
	q.mu.Lock()
	b1 := q.next(now()+int64(time.Second), d)
	q.mu.Unlock()
	if b1 == nil || d.late != 0 {
		t.Fatalf("a lone message was dropped (late %d)", d.late)
	}
	Put(b1)
}

// TestFlowsReleased: the buckets exist only while messages wait, and the
// counts add up after a remainder went back to the front.
func TestFlowsReleased(t *testing.T) {
	q, d := heldQueue(Config{Limit: 100})
	if q.fl != nil {
		t.Fatal("a new queue holds buckets")
	}
	mustSend(t, q, pkt(6, 1, 2, 100, 1), pkt(6, 1, 2, 100, 2))
	q.mu.Lock()
	q.enqueue(pkt(6, 1, 2, 100, 0), q.flowOf(pkt(6, 1, 2, 100, 0)), true)
	q.mu.Unlock()
	if q.fl == nil || q.waiting != 3 {
		t.Fatalf("buckets %v, waiting %d", q.fl != nil, q.waiting)
	}
	for i, b := range drain(q, now(), d) {
		if seqOf(b) != uint32(i) {
			t.Fatalf("message %d is seq %d: the one put in front must lead", i, seqOf(b))
		}
		Put(b)
	}
	q.mu.Lock()
	q.release()
	q.mu.Unlock()
	if q.fl != nil || q.waiting != 0 || q.inFlows != 0 {
		t.Fatalf("after the drain: buckets %v, waiting %d, bytes %d", q.fl != nil, q.waiting, q.inFlows)
	}
}

// TestStaticQueuedAsCopy: the shared keepalive queued by one queue twice
// (and by others) is never linked itself.
func TestStaticQueuedAsCopy(t *testing.T) {
	q, d := heldQueue(Config{Limit: 100})
	mustSend(t, q, keepalive, keepalive)
	if keepalive.next != nil {
		t.Fatal("the shared keepalive was linked into a flow")
	}
	out := drain(q, now(), d)
	if len(out) != 2 || out[0] == keepalive || string(out[0].Message()) != string(wire.Keepalive[:]) {
		t.Fatalf("queued keepalives: %d", len(out))
	}
	for _, b := range out {
		Put(b)
	}
}

// BenchmarkFlows: the scheduler's cost per message, enqueue to dequeue,
// four flows backlogged.
func BenchmarkFlows(b *testing.B) {
	q, d := heldQueue(Config{Limit: 1 << 20, MaxBytes: 1 << 30})
	bufs := make([]*Buf, 64)
	for i := range bufs {
		bufs[i] = pkt(6, uint16(i%4), 80, 1400, uint32(i))
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := q.Send(bufs); err != nil {
			b.Fatal(err)
		}
		q.mu.Lock()
		for i := range bufs {
			bufs[i] = q.next(1, d)
		}
		q.mu.Unlock()
	}
}
