package capture

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

func TestTapBoundedAndCounted(t *testing.T) {
	tap := NewTap(4, 3)
	now := time.Now()
	for i := range 5 {
		tap.Add(now, FromClient, "", []byte{byte(i), 1, 2, 3, 4, 5})
	}
	if tap.Lost() != 2 || tap.Seen() != 5 {
		t.Fatalf("lost %d of %d, want 2 of 5 (3 records)", tap.Lost(), tap.Seen())
	}
	for i := range 3 {
		p := <-tap.C()
		if p.Len != 6 || !bytes.Equal(p.Data, []byte{byte(i), 1, 2, 3}) || p.Dir != FromClient || p.Lost != 0 {
			t.Errorf("record %d = %+v, want the packet's first 4 of 6 bytes", i, p)
		}
		tap.Release(p)
	}
	// Given back, the records take packets again, and say what was lost
	// before them.
	tap.Add(now, ToClient, "send_queue_full", []byte{9})
	p := <-tap.C()
	if p.Dir != ToClient || p.Drop != "send_queue_full" || p.Lost != 2 || !bytes.Equal(p.Data, []byte{9}) {
		t.Errorf("record after release = %+v", p)
	}
	select {
	case p := <-tap.C():
		t.Errorf("extra record %+v", p)
	default:
	}
}

func TestPointAttachDetach(t *testing.T) {
	var pt Point
	if pt.Load() != nil {
		t.Fatal("zero Point has taps")
	}
	a, b := NewTap(0, 8), NewTap(0, 8)
	pt.Attach(a)
	pt.Attach(b)
	pt.Load().Add(FromClient, "", []byte{1})
	if len(a.C()) != 1 || len(b.C()) != 1 {
		t.Errorf("two taps got %d and %d packets, want 1 each", len(a.C()), len(b.C()))
	}
	pt.Detach(a)
	if s := pt.Load(); s == nil || s.Len() != 1 {
		t.Fatalf("after detaching one of two: %v", s)
	}
	pt.Detach(b)
	pt.Detach(b)
	if pt.Load() != nil {
		t.Error("taps left after detaching all")
	}
}

func TestBatchMarksTheDropped(t *testing.T) {
	tap := NewTap(0, 8)
	var pt Point
	pt.Attach(tap)
	b := pt.Load().Begin(ToClient)
	for i := range 4 {
		b.Stage(i, []byte{byte(i)})
	}
	b.MarkFrom(2, "send_queue_full")
	b.Publish()
	for i := range 4 {
		p := <-tap.C()
		want := ""
		if i >= 2 {
			want = "send_queue_full"
		}
		if p.Data[0] != byte(i) || p.Drop != want || p.Dir != ToClient {
			t.Errorf("packet %d = %+v, want drop %q", i, p, want)
		}
	}
}

// Adding never blocks, whatever the consumer does, from many goroutines.
func TestTapConcurrent(t *testing.T) {
	tap := NewTap(64, 16)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkt := make([]byte, 100)
			for range 1000 {
				tap.Add(time.Now(), FromClient, "", pkt)
			}
		}()
	}
	got := 0
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case p := <-tap.C():
			got++
			tap.Release(p)
			continue
		case <-done:
		}
		break
	}
	for len(tap.C()) > 0 {
		tap.Release(<-tap.C())
		got++
	}
	if uint64(got)+tap.Lost() != 4000 || tap.Seen() != 4000 {
		t.Errorf("received %d + lost %d, want 4000", got, tap.Lost())
	}
}
