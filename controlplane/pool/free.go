package pool

import (
	"slices"
	"time"
)

// freeQueue orders the free addresses for reuse: the never-released ones in
// address order, then released ones oldest release first (FIFO), so a
// just-freed address is the last one reused. The never-released part is a
// cursor, so a large pool costs no memory until it is used.
//
// Entries are not removed when their address is leased or queued again:
// they go stale and take skips them. A released address is in the queue at
// most once live (inQueue holds the time of its live entry).
//
// It is part of an Index and guarded by the Index's mutex.
type freeQueue struct {
	cursor  uint64   // next never-released address; > the range's last when all were seen
	queue   []queued // released addresses, oldest first; stale entries skipped
	inQueue map[uint32]time.Time
}

type queued struct {
	v  uint32
	at time.Time
}

// take pops the front of the queue: the first address that free accepts,
// and its release time (zero for a never-released one).
func (q *freeQueue) take(last uint32, free func(uint32) bool) (uint32, time.Time, bool) {
	for q.cursor <= uint64(last) {
		v := uint32(q.cursor)
		q.cursor++
		if _, queued := q.inQueue[v]; !queued && free(v) {
			return v, time.Time{}, true
		}
	}
	for len(q.queue) > 0 {
		e := q.queue[0]
		q.queue = q.queue[1:]
		if at, ok := q.inQueue[e.v]; !ok || !at.Equal(e.at) {
			continue // stale: queued again later, or taken
		}
		delete(q.inQueue, e.v)
		if free(e.v) {
			return e.v, e.at, true
		}
	}
	return 0, time.Time{}, false
}

// pushBack queues v as released at at.
func (q *freeQueue) pushBack(v uint32, at time.Time) {
	q.inQueue[v] = at
	q.queue = append(q.queue, queued{v, at})
}

// pushFront puts v back where take found it: first in line. Its time is
// unique and older than any real one, so it reads as long rested.
func (q *freeQueue) pushFront(v uint32) {
	at := time.Time{}.Add(time.Duration(len(q.queue)))
	q.inQueue[v] = at
	q.queue = append([]queued{{v, at}}, q.queue...)
}

// restore queues addresses with their stored release times, in release
// order, behind what is queued.
func (q *freeQueue) restore(entries []queued) {
	slices.SortFunc(entries, func(a, b queued) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return int(int64(a.v) - int64(b.v))
	})
	for _, e := range entries {
		q.inQueue[e.v] = e.at
	}
	q.queue = append(q.queue, entries...)
}
