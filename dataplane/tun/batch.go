package tun

import "sync"

// Batch gathers packets for one Write. With a batching backend it copies
// each packet into a pooled buffer with the backend's headroom in front and
// room behind for coalescing, so the caller may reuse its own buffer at
// once. With a one-packet-per-call backend (water) it writes through
// without a copy.
//
// A Batch belongs to one goroutine.
type Batch struct {
	dev      Device
	headroom int
	max      int
	bufs     [][]byte
	owned    []*[]byte
	co       *coalescer // offload backend: merge while adding
	pending  int        // packets added since the last flush (coalescer)
}

// bigBufSize holds a coalesced TCP super-packet.
const bigBufSize = 64<<10 + offloadHeadroom

var bigBufs = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}

// NewBatch returns an empty batch for dev.
func NewBatch(dev Device) *Batch {
	if od, ok := dev.(*offloadDevice); ok {
		return &Batch{dev: dev, co: &coalescer{f: od.dev.File()}}
	}
	n := max(dev.BatchSize(), 1)
	return &Batch{dev: dev, headroom: dev.WriteHeadroom(), max: n, bufs: make([][]byte, 0, n), owned: make([]*[]byte, 0, n)}
}

// Add queues pkt (at most 64 KiB). It returns the packets written and the
// error of a write that Add had to do: at once for a one-packet backend,
// or because the batch was full.
func (b *Batch) Add(pkt []byte) (int, error) {
	if b.co != nil {
		b.pending++
		return 0, b.co.add(pkt)
	}
	if b.max == 1 {
		b.bufs = append(b.bufs[:0], pkt)
		n, err := b.dev.Write(b.bufs, 0)
		b.bufs[0] = nil
		b.bufs = b.bufs[:0]
		return n, err
	}
	var n int
	var err error
	if len(b.bufs) == b.max {
		n, err = b.Flush()
	}
	p := bigBufs.Get().(*[]byte)
	buf := (*p)[:b.headroom+len(pkt)]
	copy(buf[b.headroom:], pkt)
	b.bufs = append(b.bufs, buf)
	b.owned = append(b.owned, p)
	return n, err
}

// Len is the number of packets waiting.
func (b *Batch) Len() int {
	if b.co != nil {
		return b.pending
	}
	return len(b.bufs)
}

// Flush writes the waiting packets.
func (b *Batch) Flush() (int, error) {
	if b.co != nil {
		n := b.pending
		err := b.co.flush()
		b.co.release() // an idle session holds no 64 KiB buffer
		b.pending = 0
		return n, err
	}
	if len(b.bufs) == 0 {
		return 0, nil
	}
	n, err := b.dev.Write(b.bufs, b.headroom)
	for i, p := range b.owned {
		bigBufs.Put(p)
		b.owned[i] = nil
		b.bufs[i] = nil
	}
	b.bufs, b.owned = b.bufs[:0], b.owned[:0]
	return n, err
}
