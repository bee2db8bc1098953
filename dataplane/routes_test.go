package dataplane_test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/fourover6/fourover6/dataplane"
)

// memRoutes records what the data plane announces: the set it would have
// the routers believe, and every call in order.
type memRoutes struct {
	mu    sync.Mutex
	here  map[netip.Addr]bool
	calls []string
}

func newMemRoutes() *memRoutes { return &memRoutes{here: map[netip.Addr]bool{}} }

func (m *memRoutes) Announce(a netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.here[a] = true
	m.calls = append(m.calls, "+"+a.String())
	return nil
}

func (m *memRoutes) Withdraw(a netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.here, a)
	m.calls = append(m.calls, "-"+a.String())
	return nil
}

func (m *memRoutes) set() map[netip.Addr]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[netip.Addr]bool, len(m.here))
	for a := range m.here {
		out[a] = true
	}
	return out
}

func (m *memRoutes) log() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.calls...)
}

// A leased client's address is announced once, withdrawn once when it
// leaves; when the data plane stops, nothing stays announced.
func TestRoutesFollowLeases(t *testing.T) {
	r := newMemRoutes()
	h := start(t, func(c *dataplane.Config) { c.Routes = r })
	a, b := h.Dial(), h.Dial()
	addrA, addrB := h.LeaseRouted(a), h.LeaseRouted(b)
	if got := r.set(); len(got) != 2 || !got[addrA] || !got[addrB] {
		t.Fatalf("announced %v, want %s and %s", got, addrA, addrB)
	}
	a.Conn.Close()
	eventually(t, "the route withdrawn", func() bool { return !r.set()[addrA] })
	if got := r.log(); fmt.Sprint(got) != fmt.Sprint([]string{"+" + addrA.String(), "+" + addrB.String(), "-" + addrA.String()}) {
		t.Fatalf("calls %v", got)
	}
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := r.set(); len(got) != 0 {
		t.Fatalf("still announced after stop: %v", got)
	}
}

// Many clients leasing and leaving at once: what is announced is exactly
// what the data plane holds, whatever the interleaving.
func TestRoutesUnderChurn(t *testing.T) {
	r := newMemRoutes()
	h := start(t, func(c *dataplane.Config) { c.Routes = r })
	const n = 60
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, n)
	cls := make([]*client, n)
	for i := range n {
		cls[i] = h.Dial()
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addrs[i] = cls[i].Lease().Addr
			if i%2 == 0 {
				cls[i].Conn.Close()
			}
		}()
	}
	wg.Wait()
	want := map[netip.Addr]bool{}
	for i := 1; i < n; i += 2 {
		want[addrs[i]] = true
	}
	eventually(t, "the announced set to match the leased clients", func() bool {
		if h.DP.Status().LeasedSessions != n/2 {
			return false
		}
		got := r.set()
		if len(got) != len(want) {
			return false
		}
		for a := range want {
			if !got[a] {
				return false
			}
		}
		return true
	})
}
