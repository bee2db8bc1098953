package pool

import (
	"math"
	"time"

	"github.com/google/btree"
)

// freeOrder orders the free addresses for reuse, least recently used first:
// the never-released ones in address order, then the released ones by
// release time, oldest first, so a just-freed address is the last one a
// newcomer gets, and an address rests at least as long as every one
// released after it. The never-released part is a cursor, so a large pool
// costs no memory until it is used.
//
// The released part is an ordered set (a B-tree keyed by release time and
// address) rather than a queue, because addresses leave it from anywhere:
// a returning client takes its remembered address out of the middle, and
// an aborted claim puts its address back where it was. One slot per
// address, so it never holds more than the pool.
//
// A slot may still name an address that was leased meanwhile by a claim
// that did not take it from here (ClaimAt, Adopt), reserved, or left out of
// the range: take skips (and drops) such slots.
//
// It is part of an Index and guarded by the Index's mutex.
type freeOrder struct {
	cursor uint64 // next never-released address; > the range's last when all were seen
	tree   *btree.BTreeG[slot]
	at     map[uint32]int64 // the slot of each address in tree: its key
}

// slot is one released address and its release time, as nanoseconds since
// the Unix epoch (neverUsed for an address put back before the cursor's
// addresses were all seen, see put).
type slot struct {
	at int64
	v  uint32
}

// neverUsed sorts before every real release time.
const neverUsed = math.MinInt64

func slotLess(a, b slot) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.v < b.v
}

func newFreeOrder() freeOrder {
	return freeOrder{tree: btree.NewG(32, slotLess), at: make(map[uint32]int64)}
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return neverUsed
	}
	return t.UnixNano()
}

func timeOf(at int64) time.Time {
	if at == neverUsed {
		return time.Time{}
	}
	return time.Unix(0, at)
}

// take removes and returns the least recently used address that free
// accepts, and its release time (zero for a never-released one).
func (q *freeOrder) take(last uint32, free func(uint32) bool) (uint32, time.Time, bool) {
	for q.cursor <= uint64(last) {
		v := uint32(q.cursor)
		q.cursor++
		if _, queued := q.at[v]; !queued && free(v) {
			return v, time.Time{}, true
		}
	}
	for {
		s, ok := q.tree.DeleteMin()
		if !ok {
			return 0, time.Time{}, false
		}
		delete(q.at, s.v)
		if free(s.v) {
			return s.v, timeOf(s.at), true
		}
	}
}

// remove takes v out of the order and returns its slot's key, if it had
// one (put(v, key) puts it back where it was).
func (q *freeOrder) remove(v uint32) (int64, bool) {
	at, ok := q.at[v]
	if !ok {
		return 0, false
	}
	q.tree.Delete(slot{at, v})
	delete(q.at, v)
	return at, true
}

// put files v under key at (replacing its slot if it has one).
func (q *freeOrder) put(v uint32, at int64) {
	if old, ok := q.at[v]; ok {
		if old == at {
			return
		}
		q.tree.Delete(slot{old, v})
	}
	q.at[v] = at
	q.tree.ReplaceOrInsert(slot{at, v})
}

// pushBack files v as released at t: behind every address released before.
func (q *freeOrder) pushBack(v uint32, t time.Time) { q.put(v, nanos(t)) }

// releasedAt returns v's release time, if v has a slot.
func (q *freeOrder) releasedAt(v uint32) (time.Time, bool) {
	at, ok := q.at[v]
	return timeOf(at), ok
}

// has reports whether v has a slot.
func (q *freeOrder) has(v uint32) bool {
	_, ok := q.at[v]
	return ok
}
