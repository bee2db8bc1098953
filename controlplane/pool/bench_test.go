package pool

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// BenchmarkChurn: one allocation and one release per op on a /16 whose
// addresses have all been used and released once (65,000 free addresses
// in the release order, each remembered for its client), by newcomers
// (the least recently used address) and by returning clients (their own).
func BenchmarkChurn(b *testing.B) {
	for _, returning := range []bool{false, true} {
		b.Run(fmt.Sprintf("returning=%v", returning), func(b *testing.B) {
			x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/16")})
			if err != nil {
				b.Fatal(err)
			}
			const n = 65000
			cycle := cycler(b, x, t0)
			clientOf := func(i int) netip.Addr {
				return netip.AddrFrom16([16]byte{0: 0xfd, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
			}
			for i := range n {
				cycle(store.Owner{Dataplane: "dp", Session: fmt.Sprint("w", i)}, clientOf(i))
			}
			owners := make([]store.Owner, 1024)
			for i := range owners {
				owners[i] = store.Owner{Dataplane: "dp", Session: fmt.Sprint("s", i)}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				c := clientOf(n + i) // a newcomer
				if returning {
					c = clientOf(i % n)
				}
				cycle(owners[i%len(owners)], c)
			}
		})
	}
}

// BenchmarkStormOneClient: a data plane restarted under 10,000 sessions
// of one IPv6 address (a load generator, a big NAT): all their addresses
// are remembered for that one client, which comes back session by session.
// Each op is one return (its latest free address) and, to keep the state
// the same, its release.
func BenchmarkStormOneClient(b *testing.B) {
	x, err := New(Config{Prefix: netip.MustParsePrefix("10.0.0.0/18")})
	if err != nil {
		b.Fatal(err)
	}
	c := netip.MustParseAddr("fd00:46::2")
	cycle := cycler(b, x, t0)
	now := t0
	const n = 10000
	owners := make([]store.Owner, n)
	for i := range owners {
		owners[i] = store.Owner{Dataplane: "dp", Session: fmt.Sprint("s", i)}
		g, err := x.Acquire(owners[i], c, now)
		if err != nil {
			b.Fatal(err)
		}
		x.Commit(store.Lease{Addr: g.Addr, Owner: owners[i], ClientIPv6: c}, now, now, true)
	}
	for _, o := range owners {
		e := x.byOwner[o]
		x.BeginRelease(o, addr(e.v))
		x.EndRelease(o, addr(e.v), now, "bench")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		cycle(store.Owner{Dataplane: "dp", Session: fmt.Sprint("back", i%1024)}, c)
	}
}

// cycler returns one lease's whole life for the benchmarks: acquired,
// committed, released; each a microsecond after the last, from start.
func cycler(b *testing.B, x *Index, start time.Time) func(store.Owner, netip.Addr) {
	now := start
	return func(o store.Owner, c netip.Addr) {
		g, err := x.Acquire(o, c, now)
		if err != nil {
			b.Fatal(err)
		}
		x.Commit(store.Lease{Addr: g.Addr, Owner: o, ClientIPv6: c}, now, now, true)
		if _, _, ok := x.BeginRelease(o, g.Addr); !ok {
			b.Fatal("release refused")
		}
		x.EndRelease(o, g.Addr, now, "bench")
		now = now.Add(time.Microsecond)
	}
}
