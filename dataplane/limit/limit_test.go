package limit

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func TestPerIPAndPrefix(t *testing.T) {
	l := New(Config{MaxConnsPerIP: 2, MaxConnsPerPrefix: 3})
	a := netip.MustParseAddr("fd00:46::2")
	b := netip.MustParseAddr("fd00:46::3")
	other := netip.MustParseAddr("fd00:47::2")
	r1, why := l.Admit(a, t0)
	r2, _ := l.Admit(a, t0)
	if r1 == nil || r2 == nil || why != "" {
		t.Fatal("first two connections refused")
	}
	if _, why := l.Admit(a, t0); why != ReasonPerIP {
		t.Fatalf("third from one address: %q", why)
	}
	if r, _ := l.Admit(b, t0); r == nil {
		t.Fatal("second address in the /64 refused")
	}
	if _, why := l.Admit(netip.MustParseAddr("fd00:46::4"), t0); why != ReasonPerPrefix {
		t.Fatalf("fourth in the /64: %q", why)
	}
	if r, _ := l.Admit(other, t0); r == nil {
		t.Fatal("another /64 refused")
	}
	r1()
	r1() // idempotent
	if r, _ := l.Admit(a, t0); r == nil {
		t.Fatal("not admitted after a release")
	}
	if l.Open() != 4 {
		t.Fatalf("open %d, want 4", l.Open())
	}
}

func TestMaxClientsAndRelease(t *testing.T) {
	l := New(Config{MaxClients: 100})
	var rels []func()
	for i := 0; i < 100; i++ {
		r, why := l.Admit(netip.AddrFrom16([16]byte{0xfd, 15: byte(i)}), t0)
		if r == nil {
			t.Fatalf("client %d refused: %s", i, why)
		}
		rels = append(rels, r)
	}
	if _, why := l.Admit(netip.MustParseAddr("fd00::ffff"), t0); why != ReasonMaxClients {
		t.Fatalf("101st: %q", why)
	}
	var wg sync.WaitGroup
	for _, r := range rels {
		wg.Add(1)
		go func() { defer wg.Done(); r() }()
	}
	wg.Wait()
	if l.Open() != 0 || len(l.byIP) != 0 || len(l.byNet) != 0 {
		t.Fatalf("state left after all released: %d %d %d", l.Open(), len(l.byIP), len(l.byNet))
	}
}

func TestRate(t *testing.T) {
	l := New(Config{AcceptRate: 10, AcceptBurst: 5})
	a := netip.MustParseAddr("fd00::1")
	ok := 0
	for i := 0; i < 20; i++ {
		if r, _ := l.Admit(a, t0); r != nil {
			ok++
		}
	}
	if ok != 5 {
		t.Fatalf("admitted %d at one instant, want the burst of 5", ok)
	}
	// One second later ten more tokens (capped at the burst).
	if r, why := l.Admit(a, t0.Add(time.Second)); r == nil {
		t.Fatalf("refused after refill: %s", why)
	}
}

func TestIPv4ClientsUseSlash24(t *testing.T) {
	l := New(Config{MaxConnsPerPrefix: 1})
	if r, _ := l.Admit(netip.MustParseAddr("192.0.2.1"), t0); r == nil {
		t.Fatal("refused")
	}
	if _, why := l.Admit(netip.MustParseAddr("::ffff:192.0.2.9"), t0); why != ReasonPerPrefix {
		t.Fatalf("same /24 via mapped address: %q", why)
	}
}
