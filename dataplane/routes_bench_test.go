package dataplane_test

import (
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/bgp"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
)

// BenchmarkLeaseRelease is one client's life on the lease path: connect,
// 100, 101, disconnect, the release at the controller. With routes=bgp a
// BGP speaker (not started: the same Announce and Withdraw, without
// sessions to send to) hears of each lease; the ratio against routes=none
// is what announcing costs a lease.
func BenchmarkLeaseRelease(b *testing.B) {
	for _, tc := range []struct {
		name   string
		routes func(b *testing.B) dataplane.Routes
	}{
		{"routes=none", func(*testing.B) dataplane.Routes { return nil }},
		{"routes=bgp", func(b *testing.B) dataplane.Routes {
			sp, err := bgp.New(bgp.Config{ASN: 65000, RouterID: dataplanetest.Pool.Gateway,
				Peers: []bgp.Peer{{Addr: dataplanetest.Pool.Gateway.Next(), ASN: 65001}}})
			if err != nil {
				b.Fatal(err)
			}
			return sp
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := tc.routes(b)
			h := dataplanetest.Start(b, nil, func(c *dataplane.Config) {
				if r != nil {
					c.Routes = r
				}
			})
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				c := h.Dial()
				c.Lease()
				c.Conn.Close()
				select {
				case <-h.Ctl.Released:
				case <-time.After(10 * time.Second):
					b.Fatal("no release")
				}
			}
		})
	}
}
