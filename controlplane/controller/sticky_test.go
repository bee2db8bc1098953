package controller

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
)

// TestStickyAcrossRestarts: clients of a data plane that died (kill -9)
// come back through its new instance and get their own addresses, with
// the controller restarted and its leadership changed in between; a
// newcomer gets a never-used address meanwhile.
func TestStickyAcrossRestarts(t *testing.T) {
	w := newWorld(t)
	w.register("dp1", "i1")
	const n = 12
	clients := make([]netip.Addr, n)
	had := make(map[netip.Addr]netip.Addr, n)
	for i := range n {
		clients[i] = netip.MustParseAddr(fmt.Sprintf("2001:db8:5::%x", i+1))
		had[clients[i]] = w.alloc("dp1", fmt.Sprint("s", i), clients[i])
	}
	// Other clients churn through fewer addresses than are free.
	for i := range 40 {
		c := netip.MustParseAddr(fmt.Sprintf("2001:db8:6::%x", i+1))
		a := w.alloc("dp2", fmt.Sprint("churn", i), c)
		if ok, err := w.c.Release(ctx, "dp2", fmt.Sprint("churn", i), a, "eof"); !ok || err != nil {
			t.Fatalf("release: %v %v", ok, err)
		}
	}
	// i1 dies: its stream ends, nothing more is heard; i2 registers and
	// so releases i1's leases.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.c.WatchCommands(wctx, "dp1", "i1", func(Command) error { return nil }) }()
	waitStream(t, w.c, "dp1")
	cancel()
	<-done
	w.register("dp1", "i2")
	if got := w.leased(); len(got) != 0 {
		t.Fatalf("leases after the takeover: %v", got)
	}
	info, err := w.c.PoolInfo(ctx)
	if err != nil || info.FreeRemembered != n+40 {
		t.Fatalf("pool %+v %v: want %d remembered", info.Stats, err, n+40)
	}
	w.restart()
	w.c.Deactivate("c2")
	if err := w.c.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := w.c.PoolInfo(ctx); info.FreeRemembered != n+40 {
		t.Fatalf("after a restart and a change of leader: %+v", info.Stats)
	}
	w.register("dp1", "i2")
	newcomer := w.alloc("dp1", "new", netip.MustParseAddr("2001:db8:7::1"))
	for i, c := range clients {
		got := w.alloc("dp1", fmt.Sprint("again", i), c)
		if got != had[c] {
			t.Fatalf("client %s came back to %s, had %s", c, got, had[c])
		}
		if got == newcomer {
			t.Fatalf("newcomer got %s, a remembered address", got)
		}
		row, err := w.c.Client(ctx, got)
		if err != nil || !row.Sticky {
			t.Fatalf("row of %s: %+v %v", got, row, err)
		}
	}
	if row, _ := w.c.Client(ctx, newcomer); row.Sticky {
		t.Fatalf("the newcomer's row says sticky: %+v", row)
	}
	if c := w.c.Counts(); c.AllocatedSticky != n || c.AllocatedNew != 1 {
		t.Fatalf("counts %+v", c)
	}
	// Sticky survives in the lease record too.
	w.restart()
	if row, err := w.c.Client(ctx, had[clients[0]]); err != nil || !row.Sticky {
		t.Fatalf("row after restart: %+v %v", row, err)
	}
}
