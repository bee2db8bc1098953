// Package capture copies one client's packets to whoever watches them (an
// operator's "clients capture"), without costing forwarding anything when
// nobody does and without ever slowing it down when someone does.
//
// A Point sits on each session: the forwarding code loads it once per batch
// (one atomic load; nil when nobody captures). A Tap is one capture: a
// bounded set of packet records cycling between a free list and the
// consumer's channel. The forwarding side takes a free record, copies the
// packet into it and hands it over without blocking; with no free record
// (the consumer is slow) the packet is lost to the capture, and counted.
package capture

import (
	"sync"
	"sync/atomic"
	"time"
)

// Dir is the direction of a captured packet, as the client sees it.
type Dir uint8

// Directions.
const (
	// FromClient is a 102's packet: received from the client, on its way to
	// the TUN (or dropped on the way).
	FromClient Dir = iota + 1
	// ToClient is a 103's packet: read from the TUN, sent to the client (or
	// dropped on the way).
	ToClient
)

func (d Dir) String() string {
	switch d {
	case FromClient:
		return "from_client"
	case ToClient:
		return "to_client"
	}
	return "unknown"
}

// Packet is one captured packet. Data is the tap's: valid until the record
// is given back with Tap.Release.
type Packet struct {
	Time time.Time
	Dir  Dir
	// Drop is why the data plane dropped the packet (a drop reason's
	// stable name); "" for a packet forwarded.
	Drop string
	Len  int    // the packet's length
	Data []byte // its first min(Len, snaplen) bytes
	// Lost is how many packets the tap had lost when this one was added.
	Lost uint64
}

// DefaultDepth is how many packet records a tap has when NewTap is given
// none: some 2 MiB at full-sized lab packets, a few hundred milliseconds of
// a busy client.
const DefaultDepth = 1024

// MaxSnaplen is the longest copy of one packet: an IPv4 packet is never
// longer.
const MaxSnaplen = 65535

// Tap is one capture. Add may be called from any number of goroutines; one
// consumer receives from C and gives each record back with Release.
//
// Invariant: the records in the free list, in C and held by the consumer
// are always exactly the depth records the tap was made with; Add never
// allocates once a record has reached its largest packet, and never blocks.
type Tap struct {
	snaplen int
	ch      chan *Packet
	free    chan *Packet
	lost    atomic.Uint64
	seen    atomic.Uint64
}

// NewTap returns a tap that copies at most snaplen bytes of each packet
// (MaxSnaplen when <= 0 or larger) and holds at most depth packets
// (DefaultDepth when <= 0) that the consumer has not given back.
func NewTap(snaplen, depth int) *Tap {
	if snaplen <= 0 || snaplen > MaxSnaplen {
		snaplen = MaxSnaplen
	}
	if depth <= 0 {
		depth = DefaultDepth
	}
	t := &Tap{snaplen: snaplen, ch: make(chan *Packet, depth), free: make(chan *Packet, depth)}
	for range depth {
		t.free <- &Packet{}
	}
	return t
}

// Snaplen is the most bytes copied of one packet.
func (t *Tap) Snaplen() int { return t.snaplen }

// C delivers the captured packets in the order they were added (per
// adding goroutine).
func (t *Tap) C() <-chan *Packet { return t.ch }

// Release gives a record received from C back to the tap.
func (t *Tap) Release(p *Packet) {
	select {
	case t.free <- p:
	default: // not one of ours: a caller's bug, but no reason to block
	}
}

// Lost is how many packets the tap could not hold since it was made: the
// consumer was too slow.
func (t *Tap) Lost() uint64 { return t.lost.Load() }

// Seen is how many packets were offered to the tap, lost ones included.
func (t *Tap) Seen() uint64 { return t.seen.Load() }

// get takes a free record, or counts a lost packet and returns nil.
func (t *Tap) get() *Packet {
	t.seen.Add(1)
	select {
	case p := <-t.free:
		return p
	default:
		t.lost.Add(1)
		return nil
	}
}

// fill copies pkt into p.
func (t *Tap) fill(p *Packet, now time.Time, dir Dir, drop string, pkt []byte) {
	n := min(len(pkt), t.snaplen)
	if cap(p.Data) < n {
		// Records grow to the largest packet they held, never beyond
		// snaplen: a tap's memory is bounded by depth × snaplen.
		p.Data = make([]byte, n, max(n, min(2048, t.snaplen)))
	}
	p.Data = append(p.Data[:0], pkt[:n]...)
	p.Time, p.Dir, p.Drop, p.Len, p.Lost = now, dir, drop, len(pkt), t.lost.Load()
}

// publish hands a filled record to the consumer; it never blocks, as the
// channel holds every record the tap has.
func (t *Tap) publish(p *Packet) { t.ch <- p }

// Add captures one packet: a copy of it goes to the consumer, or it is
// counted lost. It never blocks.
func (t *Tap) Add(now time.Time, dir Dir, drop string, pkt []byte) {
	if p := t.get(); p != nil {
		t.fill(p, now, dir, drop, pkt)
		t.publish(p)
	}
}

// Set is the taps capturing one session: immutable, replaced whole when a
// capture starts or ends, so the forwarding side reads it without a lock.
type Set struct {
	taps []*Tap
}

// Add captures one packet on every tap of s.
func (s *Set) Add(dir Dir, drop string, pkt []byte) {
	now := time.Now()
	for _, t := range s.taps {
		t.Add(now, dir, drop, pkt)
	}
}

// Len is the number of taps in s.
func (s *Set) Len() int { return len(s.taps) }

// Point is where captures attach to one session. The zero Point has no
// taps and is ready to use.
type Point struct {
	set atomic.Pointer[Set]
	mu  sync.Mutex // orders Attach and Detach
}

// Load returns the taps capturing now, or nil when there are none: the
// one atomic load the forwarding side pays per batch.
func (p *Point) Load() *Set { return p.set.Load() }

// Attach adds t: packets from the next batch on are captured on it.
func (p *Point) Attach(t *Tap) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var taps []*Tap
	if s := p.set.Load(); s != nil {
		taps = append(taps, s.taps...)
	}
	p.set.Store(&Set{taps: append(taps, t)})
}

// Detach removes t. A batch in flight may still add to it (the record
// then waits in C, or is lost): t's consumer stops reading whenever it
// likes.
func (p *Point) Detach(t *Tap) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.set.Load()
	if s == nil {
		return
	}
	taps := make([]*Tap, 0, len(s.taps))
	for _, x := range s.taps {
		if x != t {
			taps = append(taps, x)
		}
	}
	if len(taps) == 0 {
		p.set.Store(nil)
		return
	}
	p.set.Store(&Set{taps: taps})
}

// Batch stages copies of a batch of packets whose fate is known only once
// they have been handed on (the send queue takes some and refuses the
// rest): Stage copies them before they leave the caller's hands, Mark
// records what became of them, Publish hands them to the taps. A Batch
// comes from a pool; Publish gives it back.
type Batch struct {
	now       time.Time
	dir       Dir
	stageTaps []*Tap
	entries   []staged
}

type staged struct {
	t *Tap
	p *Packet
	i int // the packet's index in the batch
}

var batches = sync.Pool{New: func() any { return new(Batch) }}

// Begin starts staging a batch of packets going dir.
func (s *Set) Begin(dir Dir) *Batch {
	b := batches.Get().(*Batch)
	b.now, b.dir = time.Now(), dir
	b.stageTaps = s.taps
	return b
}

// Stage copies packet i of the batch for every tap.
func (b *Batch) Stage(i int, pkt []byte) {
	for _, t := range b.stageTaps {
		if p := t.get(); p != nil {
			t.fill(p, b.now, b.dir, "", pkt)
			b.entries = append(b.entries, staged{t: t, p: p, i: i})
		}
	}
}

// MarkFrom records that packets i and later were dropped, for reason drop.
func (b *Batch) MarkFrom(i int, drop string) {
	for k := range b.entries {
		if b.entries[k].i >= i {
			b.entries[k].p.Drop = drop
		}
	}
}

// Publish hands the staged copies to their taps and recycles b.
func (b *Batch) Publish() {
	for k := range b.entries {
		b.entries[k].t.publish(b.entries[k].p)
	}
	clear(b.entries)
	b.entries = b.entries[:0]
	b.stageTaps = nil
	batches.Put(b)
}
