package sendq

import (
	"encoding/binary"
	"math"
	"sync"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// Flow queuing. The messages waiting for one client are kept per flow
// (the inner IPv4 5-tuple, hashed into dataFlows buckets; the client's
// control messages, 101 and 104, in a bucket of their own) and taken out by
// deficit round robin, flows that just became active first, as Linux's
// fq_codel does: a ping or a DNS query of a client waits behind at most one
// turn of its bulk transfer, not behind the whole queue. Each flow runs
// CoDel over its messages' sojourn times, so a standing queue is dropped
// from its head until the inner TCP slows down, and a message older than
// the queue's MaxDelay is dropped whatever CoDel says.
const (
	dataFlows = 64
	ctlFlow   = dataFlows // control messages: never dropped by the scheduler
	// quantum is a flow's share per round, in message bytes: one
	// full-sized packet, as fq_codel's.
	quantum = wire.HeaderLen + 1500
	// turnBytes bounds one writer turn: a message queued meanwhile by
	// another flow waits for at most this much of the socket.
	turnBytes = 32 << 10
)

// Defaults of Config's bounds.
const (
	DefaultMaxBytes = 256 << 10
	DefaultMaxDelay = 100 * time.Millisecond
	DefaultTarget   = 5 * time.Millisecond
	DefaultInterval = 100 * time.Millisecond
)

// flow is one bucket: its waiting messages, oldest first, linked through
// Buf.next.
type flow struct {
	head, tail *Buf
	bytes      int // message bytes waiting
	deficit    int
	next       *flow // in the list named by list
	list       uint8 // listNone, listNew, listOld
	codel      codel
}

const (
	listNone uint8 = iota
	listNew
	listOld
)

type flowList struct{ head, tail *flow }

func (l *flowList) push(f *flow) {
	f.next = nil
	if l.tail == nil {
		l.head = f
	} else {
		l.tail.next = f
	}
	l.tail = f
}

func (l *flowList) pop() *flow {
	f := l.head
	l.head = f.next
	if l.head == nil {
		l.tail = nil
	}
	f.next = nil
	return f
}

// codel is one flow's CoDel state (RFC 8289), times in nanoseconds of now().
type codel struct {
	firstAbove int64 // when the sojourn time stayed above target for an interval; 0: below
	dropNext   int64
	count      uint32
	lastCount  uint32
	dropping   bool
}

// flows is a queue's buckets, taken from a pool when messages start to wait
// and given back when none do: an idle client holds none.
type flows [dataFlows + 1]flow

var flowPool = sync.Pool{New: func() any { return new(flows) }}

var epoch = time.Now()

// now is the queue's clock: monotonic nanoseconds.
func now() int64 { return int64(time.Since(epoch)) }

// flowOf is the bucket of b: the hash of its packet's 5-tuple (addresses
// and protocol only for fragments, so the pieces of a datagram stay
// together), salted per queue.
func (q *Queue) flowOf(b *Buf) int {
	if b.Kind != Data {
		return ctlFlow
	}
	p := b.B[wire.HeaderLen:b.N]
	if len(p) < 20 || p[0]>>4 != 4 {
		return 0
	}
	h := uint64(q.salt)
	h = mix(h ^ uint64(binary.BigEndian.Uint32(p[12:16])))
	h = mix(h ^ uint64(binary.BigEndian.Uint32(p[16:20])))
	proto := p[9]
	h = mix(h ^ uint64(proto))
	ihl := int(p[0]&0x0f) * 4
	frag := binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 // MF or an offset
	if (proto == 6 || proto == 17) && !frag && len(p) >= ihl+4 {
		h = mix(h ^ uint64(binary.BigEndian.Uint32(p[ihl:ihl+4])))
	}
	return int(h % dataFlows)
}

// mix is a 64-bit finalizer (splitmix64's).
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// size is what a waiting message counts for.
func size(b *Buf) int { return b.N - b.off }

// enqueue appends b (or, front, puts it ahead) to its flow. Under mu. The
// caller has checked the bounds.
func (q *Queue) enqueue(b *Buf, idx int, front bool) {
	if q.fl == nil {
		q.fl = flowPool.Get().(*flows)
	}
	f := &q.fl[idx]
	b.next = nil
	switch {
	case f.head == nil:
		f.head, f.tail = b, b
	case front:
		b.next = f.head
		f.head = b
	default:
		f.tail.next = b
		f.tail = b
	}
	n := size(b)
	f.bytes += n
	q.inFlows += n
	q.waiting++
	if f.list == listNone {
		f.deficit = quantum
		f.list = listNew
		q.newFlows.push(f)
	}
}

// pop takes the head of f. Under mu.
func (q *Queue) pop(f *flow) *Buf {
	b := f.head
	if b == nil {
		return nil
	}
	f.head = b.next
	if f.head == nil {
		f.tail = nil
	}
	b.next = nil
	n := size(b)
	f.bytes -= n
	q.inFlows -= n
	q.waiting--
	return b
}

// fattest is the data flow holding the most bytes (nil: none holds any).
// Under mu; only when a bound is reached.
func (q *Queue) fattest() *flow {
	if q.fl == nil {
		return nil
	}
	var fat *flow
	for i := range dataFlows {
		if f := &q.fl[i]; f.bytes > 0 && (fat == nil || f.bytes > fat.bytes) {
			fat = f
		}
	}
	return fat
}

// admit makes room for a message of n bytes for flow idx within the
// bounds, dropping from the head of the fattest data flow when that is
// another one; it reports false when the message itself must be refused
// (its flow is the fattest; a control message past Limit). Under mu.
func (q *Queue) admit(idx, n int, d *drops) bool {
	if idx == ctlFlow {
		return q.waiting < q.limit
	}
	for q.waiting+1 > q.limit || q.inFlows+n > q.maxBytes {
		fat := q.fattest()
		if fat == nil || fat == &q.fl[idx] {
			return false
		}
		Put(q.pop(fat))
		d.full++
	}
	return true
}

// drops counts what one operation dropped, reported to OnDrop without the
// lock.
type drops struct{ full, late int }

// next takes the next message to write by deficit round robin over the
// active flows, new ones first, dropping by CoDel and MaxDelay on the way;
// nil when nothing waits. Under mu.
func (q *Queue) next(t int64, d *drops) *Buf {
	for {
		l := &q.newFlows
		if l.head == nil {
			l = &q.oldFlows
			if l.head == nil {
				return nil
			}
		}
		f := l.head
		if f.deficit <= 0 {
			f.deficit += quantum
			l.pop()
			f.list = listOld
			q.oldFlows.push(f)
			continue
		}
		b := q.dequeue(f, t, d)
		if b == nil {
			// Empty. A new flow goes to the end of the old ones (so one
			// that keeps coming back is not new each time); an old one
			// leaves.
			l.pop()
			if l == &q.newFlows && q.oldFlows.head != nil {
				f.list = listOld
				q.oldFlows.push(f)
			} else {
				f.list = listNone
			}
			continue
		}
		f.deficit -= size(b)
		return b
	}
}

// dequeue is CoDel's dequeue for f, and the MaxDelay bound. Under mu.
func (q *Queue) dequeue(f *flow, t int64, d *drops) *Buf {
	if f == &q.fl[ctlFlow] {
		return q.pop(f)
	}
	for f.head != nil && t-f.head.at > q.maxDelay {
		Put(q.pop(f))
		d.late++
	}
	c := &f.codel
	b := q.pop(f)
	if b == nil {
		c.firstAbove, c.dropping = 0, false
		return nil
	}
	ok := q.okToDrop(f, b, t)
	if c.dropping {
		if !ok {
			c.dropping = false
		}
		for c.dropping && t >= c.dropNext {
			Put(b)
			d.late++
			c.count++
			if b = q.pop(f); b == nil {
				c.firstAbove, c.dropping = 0, false
				return nil
			}
			if !q.okToDrop(f, b, t) {
				c.dropping = false
			} else {
				c.dropNext = q.controlLaw(c.dropNext, c.count)
			}
		}
	} else if ok {
		Put(b)
		d.late++
		if b = q.pop(f); b == nil {
			c.firstAbove = 0
			return nil
		}
		c.dropping = true
		delta := c.count - c.lastCount
		c.count = 1
		if delta > 1 && t-c.dropNext < 16*q.interval {
			c.count = delta
		}
		c.dropNext = q.controlLaw(t, c.count)
		c.lastCount = c.count
	}
	return b
}

// okToDrop: b waited longer than target, and has for an interval, with
// more than one message's worth left in the flow.
func (q *Queue) okToDrop(f *flow, b *Buf, t int64) bool {
	if t-b.at < q.target || f.bytes < quantum {
		f.codel.firstAbove = 0
		return false
	}
	if f.codel.firstAbove == 0 {
		f.codel.firstAbove = t + q.interval
		return false
	}
	return t >= f.codel.firstAbove
}

func (q *Queue) controlLaw(t int64, count uint32) int64 {
	return t + int64(float64(q.interval)/math.Sqrt(float64(count)))
}

// releaseFlows gives the buckets back once nothing waits. Under mu.
func (q *Queue) releaseFlows() {
	if q.fl == nil || q.waiting > 0 || q.partial != nil {
		return
	}
	*q.fl = flows{}
	flowPool.Put(q.fl)
	q.fl = nil
	q.newFlows, q.oldFlows = flowList{}, flowList{}
}
