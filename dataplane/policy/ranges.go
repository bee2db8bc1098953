package policy

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// ranges is a longest-prefix-match table flattened into the address
// ranges its prefixes cut IPv4 into: lo[i] is the first address of range
// i, which the entry at[i] decides (-1: no entry). A lookup is a binary
// search over a few dozen sorted integers.
//
// Why not a library trie: github.com/gaissmai/bart (in the module graph
// already) does the job, but measured slower on the tables a data plane
// has (22 entries: bart.Table 28 ns, bart.Fast 15 ns, this search 5 ns per
// lookup), and the check runs for every packet a client sends. Its
// correctness is held to a naive longest-prefix match (TestRanges,
// FuzzRanges).
type ranges struct {
	lo []uint32
	at []int32
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// last is the last address of a canonical IPv4 prefix.
func last(p netip.Prefix) uint32 { return u32(p.Addr()) | uint32(1<<(32-p.Bits())-1) }

// flatten builds the ranges of entries, whose prefixes are canonical IPv4
// and unique. CIDR prefixes either nest or are disjoint, so one sweep in
// address order with a stack of the prefixes still open does it.
func flatten(entries []Entry) ranges {
	order := make([]int, len(entries))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		pa, pb := entries[a].Prefix, entries[b].Prefix
		if c := cmp.Compare(u32(pa.Addr()), u32(pb.Addr())); c != 0 {
			return c
		}
		return cmp.Compare(pa.Bits(), pb.Bits()) // the enclosing one first
	})
	r := ranges{lo: []uint32{0}, at: []int32{-1}}
	emit := func(lo uint32, at int32) {
		n := len(r.lo) - 1
		if r.lo[n] == lo {
			r.at[n] = at
			if n > 0 && r.at[n-1] == at {
				r.lo, r.at = r.lo[:n], r.at[:n]
			}
			return
		}
		if r.at[n] != at {
			r.lo, r.at = append(r.lo, lo), append(r.at, at)
		}
	}
	var open []int
	top := func() int32 {
		if len(open) == 0 {
			return -1
		}
		return int32(open[len(open)-1])
	}
	// closeTo pops the open prefixes ending before addr (all, when done):
	// past each one, the enclosing prefix decides again.
	closeTo := func(addr uint64) {
		for len(open) > 0 {
			end := uint64(last(entries[open[len(open)-1]].Prefix))
			if end >= addr {
				return
			}
			open = open[:len(open)-1]
			if end < 0xffffffff {
				emit(uint32(end+1), top())
			}
		}
	}
	for _, i := range order {
		start := u32(entries[i].Prefix.Addr())
		closeTo(uint64(start))
		emit(start, int32(i))
		open = append(open, i)
	}
	closeTo(1 << 32)
	return r
}

// find returns the index of the entry deciding for addr, or -1.
func (r *ranges) find(addr uint32) int32 {
	lo, hi := 0, len(r.lo)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.lo[m] <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return r.at[lo-1] // lo >= 1: r.lo[0] is 0
}
