package session

import (
	"math/rand/v2"
	"sort"
	"testing"
)

// check verifies the Sweeper's invariants: the heap is a heap, every
// session in it knows its index, and none is in it twice.
func (w *Sweeper) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[*Session]bool{}
	for i, s := range w.h {
		if s.sched.idx != i {
			t.Fatalf("session at %d thinks it is at %d", i, s.sched.idx)
		}
		if seen[s] {
			t.Fatal("a session is in the heap twice")
		}
		seen[s] = true
		if s.sched.gone || s.sched.popped {
			t.Fatalf("a gone (%v) or popped (%v) session is in the heap", s.sched.gone, s.sched.popped)
		}
		if i > 0 && w.h[(i-1)/2].sched.due > s.sched.due {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}

func bare() *Session {
	s := &Session{}
	s.sched.idx = -1
	return s
}

// TestSweeperHeap: sessions come out in due order; schedule only moves a
// session earlier; removed sessions never come back, even when removed
// while being ticked; a session asked earlier while being ticked goes back
// at the earlier time.
func TestSweeperHeap(t *testing.T) {
	w := NewSweeper(func() int64 { return 0 })
	r := rand.New(rand.NewPCG(1, 2))
	var all []*Session
	for range 500 {
		s := bare()
		all = append(all, s)
		w.schedule(s, r.Int64N(1000)+1)
	}
	w.check(t)
	// Earlier only.
	s0 := all[0]
	due := s0.sched.due
	w.schedule(s0, due+500)
	if s0.sched.due != due {
		t.Fatalf("schedule moved a session later: %d -> %d", due, s0.sched.due)
	}
	w.schedule(s0, 0)
	w.check(t)
	for _, s := range all[1:50] {
		w.remove(s)
	}
	w.check(t)
	if w.Len() != 451 {
		t.Fatalf("%d scheduled after removing 49 of 500", w.Len())
	}
	// What is due comes out in due order.
	var order []int64
	w.mu.Lock()
	for _, s := range w.h {
		if s.sched.due <= 500 {
			order = append(order, s.sched.due)
		}
	}
	w.mu.Unlock()
	sort.Slice(order, func(i, j int) bool { return order[i] < order[j] })
	got := w.popDue(500, nil)
	if got[0] != s0 || len(got) != len(order) {
		t.Fatalf("popped %d, want %d, the session moved to 0 first", len(got), len(order))
	}
	for _, s := range got {
		if !s.sched.popped || s.sched.idx != -1 {
			t.Fatal("a popped session is not marked")
		}
	}
	w.check(t)
	// While ticked: one is removed, one asked for earlier, one rescheduled
	// normally, one done (next 0).
	w.remove(got[1])
	w.schedule(got[2], 600)
	w.reschedule(got[1], 700)
	w.reschedule(got[2], 900)
	w.reschedule(got[3], 800)
	w.reschedule(got[4], 0)
	w.check(t)
	if got[1].sched.idx != -1 || got[4].sched.idx != -1 {
		t.Fatal("a removed or finished session went back")
	}
	if got[2].sched.due != 600 || got[3].sched.due != 800 {
		t.Fatalf("due %d and %d, want 600 (asked while ticked) and 800", got[2].sched.due, got[3].sched.due)
	}
	for _, s := range got[5:] {
		w.reschedule(s, 2000)
	}
	w.check(t)
	before := w.Len()
	rest := w.popDue(1999, nil)
	if len(rest) == 0 || w.Len() != len(got)-5 || before != len(rest)+w.Len() {
		t.Fatalf("popped %d of %d before 2000, %d left; want all but the %d due at 2000", len(rest), before, w.Len(), len(got)-5)
	}
	w.check(t)
}
