package store_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fourover6/fourover6/controlplane/store"
)

// BenchmarkOpenBolt measures what the checks at open cost on a full /16,
// 65,534 leases (pages, bbolt's Tx.Check, every record decoded), against
// opening the same file with bbolt alone (bbolt-only: not a mode of the
// store, the baseline).
func BenchmarkOpenBolt(b *testing.B) {
	for _, n := range []int{1000, 65534} {
		path := filepath.Join(b.TempDir(), "state.db")
		s, err := store.OpenBolt(path)
		if err != nil {
			b.Fatal(err)
		}
		var snap store.Snapshot
		for i := range n {
			snap.State.Leases = append(snap.State.Leases, store.Lease{
				Addr:       netip.AddrFrom4([4]byte{10, 0, byte((i + 1) >> 8), byte(i + 1)}),
				Owner:      store.Owner{Dataplane: fmt.Sprintf("dp%d", i%4), Session: fmt.Sprintf("session-%08x", i)},
				ClientIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:46::%x", i+2)), ClientPort: uint16(i), LeasedAt: baseT0,
			})
		}
		snap.ID = "bench"
		if err := s.Restore(b.Context(), snap); err != nil {
			b.Fatal(err)
		}
		s.Close()
		b.Run(fmt.Sprintf("leases=%d", n), func(b *testing.B) {
			for b.Loop() {
				s, err := store.OpenBolt(path)
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
		b.Run(fmt.Sprintf("leases=%d/bbolt-only", n), func(b *testing.B) {
			for b.Loop() {
				db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
				if err != nil {
					b.Fatal(err)
				}
				db.Close()
			}
		})
	}
}
