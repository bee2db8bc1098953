package policy

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// naive is the longest-prefix match the slow way: the index of the longest
// prefix of entries containing a, or -1.
func naive(entries []Entry, a uint32) int32 {
	best, bits := int32(-1), -1
	for i, e := range entries {
		if e.Prefix.Bits() > bits && e.Prefix.Contains(addrOf(a)) {
			best, bits = int32(i), e.Prefix.Bits()
		}
	}
	return best
}

func addrOf(a uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
}

// entriesFrom makes unique canonical prefixes from (address, length) pairs.
func entriesFrom(pairs [][2]uint32) []Entry {
	seen := map[netip.Prefix]bool{}
	var es []Entry
	for _, pr := range pairs {
		p := netip.PrefixFrom(addrOf(pr[0]), int(pr[1]%33)).Masked()
		if !seen[p] {
			seen[p] = true
			es = append(es, Entry{Prefix: p, Reason: Reason(len(es) % int(NumReasons))})
		}
	}
	return es
}

// probes are the addresses where a flattening can go wrong: every
// prefix's first and last address and their neighbours, and the ends of
// the address space.
func probes(es []Entry) []uint32 {
	ps := []uint32{0, 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff}
	for _, e := range es {
		f, l := u32(e.Prefix.Addr()), last(e.Prefix)
		ps = append(ps, f, f-1, f+1, l, l-1, l+1)
	}
	return ps
}

func checkRanges(t *testing.T, es []Entry, extra ...uint32) {
	t.Helper()
	r := flatten(es)
	if len(r.lo) == 0 || r.lo[0] != 0 || len(r.lo) != len(r.at) {
		t.Fatalf("ranges do not start at 0: %v", r.lo)
	}
	for i := 1; i < len(r.lo); i++ {
		if r.lo[i] <= r.lo[i-1] || r.at[i] == r.at[i-1] {
			t.Fatalf("ranges not strictly ordered and merged at %d: %v %v", i, r.lo, r.at)
		}
	}
	if len(r.lo) > 2*len(es)+1 {
		t.Fatalf("%d ranges for %d prefixes", len(r.lo), len(es))
	}
	for _, a := range append(probes(es), extra...) {
		if got, want := r.find(a), naive(es, a); got != want {
			t.Fatalf("%s: entry %d, want %d (entries %v)", addrOf(a), got, want, es)
		}
	}
}

func TestRanges(t *testing.T) {
	checkRanges(t, nil)
	checkRanges(t, entriesFrom([][2]uint32{{0, 0}}))
	checkRanges(t, entriesFrom([][2]uint32{{0xffffffff, 32}}))
	checkRanges(t, entriesFrom([][2]uint32{{0, 0}, {0xffffffff, 32}, {0, 32}, {0x80000000, 1}}))
	// Nested to the end of the space, and adjacent siblings.
	checkRanges(t, entriesFrom([][2]uint32{{0xf0000000, 4}, {0xff000000, 8}, {0xffffff00, 24}, {0xffffffff, 32}}))
	checkRanges(t, entriesFrom([][2]uint32{{0x0a000000, 8}, {0x0b000000, 8}, {0x0a000000, 9}, {0x0a800000, 9}}))

	rng := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		var pairs [][2]uint32
		// Few distinct top bits, so that prefixes nest and touch.
		for range 1 + rng.IntN(40) {
			a := uint32(rng.IntN(4))<<30 | rng.Uint32()>>uint(2+rng.IntN(30))
			pairs = append(pairs, [2]uint32{a, uint32(rng.IntN(33))})
		}
		es := entriesFrom(pairs)
		var extra []uint32
		for range 50 {
			extra = append(extra, rng.Uint32())
		}
		checkRanges(t, es, extra...)
	}
}

// FuzzRanges: any set of prefixes flattens to ranges that answer as the
// naive longest-prefix match does.
func FuzzRanges(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Add([]byte{10, 0, 0, 0, 8, 10, 1, 0, 0, 16, 10, 1, 2, 0, 24, 255, 255, 255, 255, 32})
	f.Fuzz(func(t *testing.T, b []byte) {
		var pairs [][2]uint32
		for ; len(b) >= 5 && len(pairs) < 200; b = b[5:] {
			pairs = append(pairs, [2]uint32{uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), uint32(b[4])})
		}
		checkRanges(t, entriesFrom(pairs))
	})
}
