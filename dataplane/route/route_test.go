package route

import (
	"sync"
	"testing"
)

type sess struct{ id int }

func TestTable(t *testing.T) {
	var tb Table[sess]
	a, b := &sess{1}, &sess{2}
	if tb.Lookup(7) != nil {
		t.Fatal("empty table found something")
	}
	if prev := tb.Insert(7, a); prev != nil {
		t.Fatal("insert into empty slot returned a previous owner")
	}
	if tb.Lookup(7) != a {
		t.Fatal("lookup after insert")
	}
	if prev := tb.Insert(7, b); prev != a {
		t.Fatal("conflicting insert did not report the previous owner")
	}
	if tb.Remove(7, a) {
		t.Fatal("stale owner removed the new owner's route")
	}
	if tb.Lookup(7) != b || tb.Len() != 1 {
		t.Fatal("route lost")
	}
	if !tb.Remove(7, b) || tb.Lookup(7) != nil || tb.Len() != 0 {
		t.Fatal("remove by owner failed")
	}
}

func TestConcurrent(t *testing.T) {
	var tb Table[sess]
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			s := &sess{g}
			for i := 0; i < 1000; i++ {
				k := uint32(g*1000 + i)
				tb.Insert(k, s)
				if tb.Lookup(k) != s {
					t.Error("lookup raced")
					return
				}
				tb.Remove(k, s)
			}
		}(g)
	}
	wg.Wait()
	if tb.Len() != 0 {
		t.Fatalf("%d entries left", tb.Len())
	}
}

func BenchmarkLookup(b *testing.B) {
	var tb Table[sess]
	for i := 0; i < 10000; i++ {
		tb.Insert(uint32(i), &sess{i})
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(0)
		for pb.Next() {
			if tb.Lookup(i%10000) == nil {
				b.Fatal("missing")
			}
			i++
		}
	})
}
