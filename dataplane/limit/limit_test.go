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

// TestPrefixRate: one prefix's flood is held by its own rate and leaves
// the overall rate to the other prefixes.
func TestPrefixRate(t *testing.T) {
	l := New(Config{AcceptRate: 100, AcceptBurst: 20, PrefixAcceptRate: 10, PrefixAcceptBurst: 5})
	flood := netip.MustParseAddr("fd00:46::2")
	other := netip.MustParseAddr("fd00:47::2")
	ok, byPrefix := 0, 0
	for range 1000 {
		r, why := l.Admit(flood, t0)
		switch why {
		case "":
			ok++
			r()
		case ReasonPrefixRate:
			byPrefix++
		default:
			t.Fatalf("flood refused by %q", why)
		}
	}
	if ok != 5 || byPrefix != 995 {
		t.Fatalf("flood at one instant: %d admitted, %d refused by the prefix rate; want the prefix burst of 5", ok, byPrefix)
	}
	// Another address of the flooding /64 shares its bucket.
	if _, why := l.Admit(netip.MustParseAddr("fd00:46::99"), t0); why != ReasonPrefixRate {
		t.Fatalf("same /64: %q", why)
	}
	// The flood took only its 5 from the overall burst of 20: another
	// prefix still gets its own 5 at the same instant.
	for i := range 5 {
		if r, why := l.Admit(other, t0); r == nil {
			t.Fatalf("other prefix's connection %d refused: %s", i, why)
		}
	}
	// A tenth of a second later the flooding prefix has one more token.
	if r, why := l.Admit(flood, t0.Add(100*time.Millisecond)); r == nil {
		t.Fatalf("refused after refill: %s", why)
	}
}

// TestPrefixRateGivesBackOnOverallRefusal: a connection the overall rate
// refuses costs its prefix nothing.
func TestPrefixRateGivesBackOnOverallRefusal(t *testing.T) {
	l := New(Config{AcceptRate: 1, AcceptBurst: 2, PrefixAcceptRate: 1, PrefixAcceptBurst: 3})
	a := netip.MustParseAddr("fd00:46::2")
	b := netip.MustParseAddr("fd00:47::2")
	if r, _ := l.Admit(a, t0); r == nil {
		t.Fatal("first refused")
	}
	if r, _ := l.Admit(b, t0); r == nil {
		t.Fatal("second refused")
	}
	for range 10 {
		if _, why := l.Admit(a, t0); why != ReasonRate {
			t.Fatalf("over the overall burst: %q, want %q", why, ReasonRate)
		}
	}
	// Two seconds on, the overall rate has two tokens; a's bucket kept its
	// two (the ten overall refusals gave theirs back).
	t1 := t0.Add(2 * time.Second)
	for i := range 2 {
		if r, why := l.Admit(a, t1); r == nil {
			t.Fatalf("connection %d from a refused: %s", i, why)
		}
	}
}

// TestPrefixBucketsAreDropped: buckets of prefixes that went quiet are
// dropped, and there are never more than maxBuckets.
func TestPrefixBucketsAreDropped(t *testing.T) {
	l := New(Config{PrefixAcceptRate: 10, PrefixAcceptBurst: 10})
	for i := range 100 {
		l.Admit(netip.AddrFrom16([16]byte{0xfd, 1, 2, byte(i)}), t0)
	}
	if n := l.Buckets(); n != 100 {
		t.Fatalf("%d buckets, want 100", n)
	}
	l.Admit(netip.MustParseAddr("fd00::1"), t0.Add(sweepEvery))
	if n := l.Buckets(); n != 1 {
		t.Fatalf("%d buckets after the quiet ones filled up, want 1", n)
	}
	for i := range maxBuckets + 10 {
		l.Admit(netip.AddrFrom16([16]byte{0xfd, 2, byte(i >> 16), byte(i >> 8), byte(i)}), t0.Add(sweepEvery))
	}
	if n := l.Buckets(); n > maxBuckets {
		t.Fatalf("%d buckets, more than %d", n, maxBuckets)
	}
}
