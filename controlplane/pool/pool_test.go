package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func mustNew(t *testing.T, prefix, rng string) *Index {
	t.Helper()
	r, err := ParseRange(rng)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Prefix: netip.MustParsePrefix(prefix), Range: r})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func owner(i int) store.Owner { return store.Owner{Dataplane: "dp1", Session: fmt.Sprint("s", i)} }

// allocate is what the controller does around a store that always agrees:
// Acquire, then Commit. fresh is false when o held an address already.
func allocate(p *Index, o store.Owner) (a netip.Addr, fresh bool, err error) {
	g, err := p.Acquire(o, netip.Addr{}, t0)
	if err != nil {
		return netip.Addr{}, false, err
	}
	if g.Existing {
		return g.Addr, false, nil
	}
	if g.Wait != nil {
		return netip.Addr{}, false, errors.New("a claim is in flight")
	}
	if !p.Commit(store.Lease{Addr: g.Addr, Owner: o, LeasedAt: t0}, t0, t0, true) {
		return netip.Addr{}, false, errors.New("commit refused")
	}
	return g.Addr, true, nil
}

func alloc(t *testing.T, p *Index, o store.Owner) string {
	t.Helper()
	a, _, err := allocate(p, o)
	if err != nil {
		t.Fatalf("allocate(%v): %v", o, err)
	}
	return a.String()
}

// release is BeginRelease and EndRelease around a store that agrees.
func release(p *Index, a netip.Addr, o store.Owner, at time.Time) bool {
	if _, _, ok := p.BeginRelease(o, a); !ok {
		return false
	}
	p.EndRelease(o, a, at, "test")
	return true
}

func TestInOrder(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "")
	if got := p.Gateway().String(); got != "13.8.0.1" {
		t.Fatalf("gateway = %s, want 13.8.0.1", got)
	}
	for i := 0; i < 253; i++ {
		want := fmt.Sprintf("13.8.0.%d", i+2)
		if got := alloc(t, p, owner(i)); got != want {
			t.Fatalf("allocation %d = %s, want %s", i, got, want)
		}
	}
	st := p.Stats()
	if st.Size != 253 || st.Leased != 253 || st.Free != 0 || st.Reserved != 0 {
		t.Fatalf("stats = %+v", st)
	}
	if st.First.String() != "13.8.0.2" || st.Last.String() != "13.8.0.254" {
		t.Fatalf("range = %s-%s", st.First, st.Last)
	}
}

func TestIdempotentPerOwner(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "")
	a, fresh, err := allocate(p, owner(1))
	if err != nil || !fresh {
		t.Fatalf("first allocate: %v fresh=%v", err, fresh)
	}
	b, fresh, err := allocate(p, owner(1))
	if err != nil || fresh || a != b {
		t.Fatalf("second allocate = %s fresh=%v err=%v, want %s, not fresh", b, fresh, err, a)
	}
	// Same session id on another data plane is another client.
	c, _, _ := allocate(p, store.Owner{Dataplane: "dp2", Session: "s1"})
	if c == a {
		t.Fatalf("owner on another data plane got the same address %s", c)
	}
	if st := p.Stats(); st.Leased != 2 {
		t.Fatalf("leased = %d, want 2", st.Leased)
	}
	if l, ok := p.Lease(a); !ok || l.Owner != owner(1) {
		t.Fatalf("Lease(%s) = %v %v", a, l, ok)
	}
	if got, ok := p.Lookup(owner(1)); !ok || got != a {
		t.Fatalf("Lookup = %s %v", got, ok)
	}
}

func TestFIFOReuse(t *testing.T) {
	// /29: network .0, gateway .1, clients .2-.6, broadcast .7.
	p := mustNew(t, "10.0.0.0/29", "")
	for i := 0; i < 5; i++ {
		alloc(t, p, owner(i))
	}
	// Free .4 then .2: they must come back in that order.
	if !release(p, netip.MustParseAddr("10.0.0.4"), owner(2), t0) {
		t.Fatal("release .4 failed")
	}
	if !release(p, netip.MustParseAddr("10.0.0.2"), owner(0), t0.Add(time.Second)) {
		t.Fatal("release .2 failed")
	}
	if got := alloc(t, p, owner(10)); got != "10.0.0.4" {
		t.Fatalf("first reuse = %s, want 10.0.0.4", got)
	}
	if got := alloc(t, p, owner(11)); got != "10.0.0.2" {
		t.Fatalf("second reuse = %s, want 10.0.0.2", got)
	}
}

func TestReleasedGoesBehindNeverUsed(t *testing.T) {
	p := mustNew(t, "10.0.0.0/29", "")
	a := alloc(t, p, owner(0)) // .2
	release(p, netip.MustParseAddr(a), owner(0), t0)
	// .2 is at the back of the queue: .3 .4 .5 .6 come first.
	for i, want := range []string{"10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.2"} {
		if got := alloc(t, p, owner(i+1)); got != want {
			t.Fatalf("allocation %d = %s, want %s", i, got, want)
		}
	}
}

func TestReleaseByWrongOwner(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "")
	a, _, _ := allocate(p, owner(1))
	for _, o := range []store.Owner{owner(2), {Dataplane: "dp2", Session: "s1"}, {}} {
		if release(p, a, o, t0) {
			t.Fatalf("Release by %v succeeded", o)
		}
	}
	if release(p, netip.MustParseAddr("13.8.0.77"), owner(1), t0) {
		t.Fatal("release of an unleased address succeeded")
	}
	if release(p, netip.Addr{}, owner(1), t0) || release(p, netip.MustParseAddr("::1"), owner(1), t0) {
		t.Fatal("release of a non-IPv4 address succeeded")
	}
	if !release(p, a, owner(1), t0) {
		t.Fatal("release by holder failed")
	}
	if release(p, a, owner(1), t0) {
		t.Fatal("double release succeeded")
	}
	if st := p.Stats(); st.Leased != 0 || st.Free != 253 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestExhaustion(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "")
	for i := 0; i < 253; i++ {
		alloc(t, p, owner(i))
	}
	_, _, err := allocate(p, owner(999))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	want := "address pool 13.8.0.0/24 exhausted: 253 of 253 addresses leased"
	if err.Error() != want {
		t.Fatalf("message = %q, want %q", err, want)
	}
	// A holder retrying still gets its address on a full pool.
	if got := alloc(t, p, owner(5)); got != "13.8.0.7" {
		t.Fatalf("retry on full pool = %s", got)
	}
	// After one release, the next allocation succeeds with that address.
	release(p, netip.MustParseAddr("13.8.0.100"), owner(98), t0)
	if got := alloc(t, p, owner(999)); got != "13.8.0.100" {
		t.Fatalf("after release = %s", got)
	}
}

func TestRangeNarrowing(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "13.8.0.2-13.8.0.128")
	st := p.Stats()
	if st.Size != 127 || st.First.String() != "13.8.0.2" || st.Last.String() != "13.8.0.128" {
		t.Fatalf("stats = %+v", st)
	}
	for i := 0; i < 127; i++ {
		alloc(t, p, owner(i))
	}
	_, _, err := allocate(p, owner(1000))
	want := "address pool 13.8.0.0/24 (range 13.8.0.2-13.8.0.128) exhausted: 127 of 127 addresses leased"
	if !errors.Is(err, ErrExhausted) || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}

	p = mustNew(t, "13.8.0.0/24", "13.8.0.50-13.8.0.51")
	if a, b := alloc(t, p, owner(1)), alloc(t, p, owner(2)); a != "13.8.0.50" || b != "13.8.0.51" {
		t.Fatalf("got %s %s", a, b)
	}
	if _, _, err := allocate(p, owner(3)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v", err)
	}
}

func TestSmallestPool(t *testing.T) {
	p := mustNew(t, "192.0.2.0/30", "")
	if got := alloc(t, p, owner(1)); got != "192.0.2.2" {
		t.Fatalf("got %s", got)
	}
	if _, _, err := allocate(p, owner(2)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v", err)
	}
}

func TestHugePoolIsCheap(t *testing.T) {
	// The never-used part of the queue is a cursor, so even /0 works.
	p := mustNew(t, "0.0.0.0/0", "")
	if got := alloc(t, p, owner(1)); got != "0.0.0.2" {
		t.Fatalf("got %s", got)
	}
	if st := p.Stats(); st.Size != 1<<32-3 || st.Last.String() != "255.255.255.254" {
		t.Fatalf("stats = %+v", st)
	}
}

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		prefix, rng string
		field, want string
	}{
		{"fd00::/64", "", "prefix", "not an IPv4 prefix"},
		{"::ffff:13.8.0.0/120", "", "prefix", "not an IPv4 prefix"},
		{"13.8.0.0/31", "", "prefix", "at least a /30"},
		{"13.8.0.0/32", "", "prefix", "at least a /30"},
		{"13.8.0.5/24", "", "prefix", "did you mean 13.8.0.0/24"},
		{"13.8.0.0/24", "13.8.0.9-13.8.0.2", "range", "backwards"},
		{"13.8.0.0/24", "13.8.1.2-13.8.1.9", "range", "outside the pool"},
		{"13.8.0.0/24", "13.8.0.2-13.8.1.9", "range", "13.8.1.9 is outside the pool"},
		{"13.8.0.0/24", "13.8.0.0-13.8.0.9", "range", "network address"},
		{"13.8.0.0/24", "13.8.0.1-13.8.0.9", "range", "includes the gateway 13.8.0.1"},
		{"13.8.0.0/24", "13.8.0.2-13.8.0.255", "range", "broadcast address"},
	}
	for _, c := range cases {
		var r Range
		if c.rng != "" {
			var err error
			if r, err = ParseRange(c.rng); err != nil {
				t.Fatalf("ParseRange(%q): %v", c.rng, err)
			}
		}
		_, err := New(Config{Prefix: netip.MustParsePrefix(c.prefix), Range: r})
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%s, %s) = %v, want %s error containing %q", c.prefix, c.rng, err, c.field, c.want)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New with no prefix succeeded")
	}
	// The full host range given explicitly is fine and not "narrowed".
	p := mustNew(t, "13.8.0.0/24", "13.8.0.2-13.8.0.254")
	for i := 0; i < 253; i++ {
		alloc(t, p, owner(i))
	}
	if _, _, err := allocate(p, owner(999)); err == nil || strings.Contains(err.Error(), "range") {
		t.Errorf("err = %v", err)
	}
}

func TestParseRange(t *testing.T) {
	r, err := ParseRange(" 13.8.0.2 - 13.8.0.128 ")
	if err != nil || r.String() != "13.8.0.2-13.8.0.128" {
		t.Fatalf("got %v %v", r, err)
	}
	if r, err := ParseRange(""); err != nil || !r.IsZero() {
		t.Fatalf("empty: %v %v", r, err)
	}
	for _, bad := range []string{"13.8.0.2", "13.8.0.2-", "-13.8.0.2", "a-b", "fd00::1-fd00::2", "13.8.0.2-13.8.0.3-13.8.0.4", "13.8.0.02-13.8.0.3"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("ParseRange(%q) succeeded", bad)
		}
	}
}

func TestConcurrentAllocationsAreDistinct(t *testing.T) {
	p := mustNew(t, "10.20.0.0/21", "") // 2045 client addresses
	const n = 1000
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			a, _, err := allocate(p, owner(i))
			if err != nil {
				t.Error(err)
				return
			}
			// Retries from the same owner race with everyone else too.
			if b, _, _ := allocate(p, owner(i)); b != a {
				t.Errorf("retry for %d gave %s, first %s", i, b, a)
			}
			got[i] = a
		}()
	}
	close(start)
	wg.Wait()
	seen := make(map[netip.Addr]int, n)
	for i, a := range got {
		if j, dup := seen[a]; dup {
			t.Fatalf("owners %d and %d both got %s", j, i, a)
		}
		seen[a] = i
	}
	if st := p.Stats(); st.Leased != n || st.Free != 2045-n {
		t.Fatalf("stats = %+v", st)
	}
}
