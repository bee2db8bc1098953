package policy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fourover6/fourover6/test/netnstest"
)

// hostNS is a fresh namespace with an interface "up0" (a veth: no dummy
// module needed) holding
// 192.0.2.10/24 and an AnyIP prefix 10.99.0.0/16 routed to the host.
func hostNS(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	ns := netnstest.Do(t, func(netns.NsHandle) {})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	up, err := h.LinkByName("up0")
	if err == nil {
		err = h.LinkSetUp(up)
	}
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, h, up, "192.0.2.10/24")
	_, anyip, _ := net.ParseCIDR("10.99.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: anyip, Table: unix.RT_TABLE_LOCAL,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}); err != nil {
		t.Fatal(err)
	}
	return ns, h
}

func addAddr(t *testing.T, h *netlink.Handle, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}

func TestReadHost(t *testing.T) {
	ns, _ := hostNS(t)
	var h Host
	var err error
	netnstest.In(t, ns, func() { h, err = ReadHost() })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"192.0.2.10/32", "127.0.0.1/32", "10.99.0.0/16"} {
		if !slices.Contains(h.Local, prefix(want)) {
			t.Errorf("local %v lacks %s", h.Local, want)
		}
	}
	if !slices.Contains(h.Broadcast, prefix("192.0.2.255/32")) {
		t.Errorf("broadcast %v lacks 192.0.2.255", h.Broadcast)
	}
	for _, p := range append(h.Local, h.Broadcast...) {
		if !p.Addr().Is4() || p != p.Masked() {
			t.Errorf("%s: not a canonical IPv4 prefix", p)
		}
	}
	if !slices.IsSortedFunc(h.Local, comparePrefix) {
		t.Errorf("local not sorted: %v", h.Local)
	}
}

// TestWatchHost: an address added to the host is refused from the moment
// the kernel announces it, and allowed again once it is gone.
func TestWatchHost(t *testing.T) {
	ns, h := hostNS(t)
	p, err := New(Config{Gateway: gw, Pool: prefix("13.8.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var w *HostWatcher
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	netnstest.In(t, ns, func() { w, err = p.WatchHost(ctx, log) })
	if err != nil {
		t.Fatal(err)
	}
	// The first reading is in when WatchHost returns.
	if r := p.Check(tcp(addr("192.0.2.10"), 22), false); r != ToHost {
		t.Fatalf("192.0.2.10 after WatchHost: %v, want host", r)
	}
	if r := p.Check(tcp(addr("10.99.1.2"), 22), false); r != ToHost {
		t.Fatalf("AnyIP prefix after WatchHost: %v, want host", r)
	}

	up, err := h.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	fresh := tcp(addr("203.0.113.5"), 22)
	if r := p.Check(fresh, false); r != Allow {
		t.Fatalf("203.0.113.5 before it is the host's: %v", r)
	}
	addAddr(t, h, up, "203.0.113.5/24")
	waitFor(t, "the new address refused", func() bool { return p.Check(fresh, false) == ToHost })
	if r := p.Check(udp(addr("203.0.113.255"), 9), false); r != ToBroadcast {
		t.Errorf("the new subnet's broadcast: %v", r)
	}
	a, _ := netlink.ParseAddr("203.0.113.5/24")
	if err := h.AddrDel(up, a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed address allowed again", func() bool { return p.Check(fresh, false) == Allow })

	// Refresh reads at once (as a reload does).
	if err := w.Refresh(); err != nil {
		t.Fatal(err)
	}
	if r := p.Check(tcp(addr("192.0.2.10"), 22), false); r != ToHost {
		t.Fatalf("after Refresh: %v", r)
	}
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPrefixOf(t *testing.T) {
	if _, ok := prefixOf(nil); ok {
		t.Error("nil")
	}
	_, v6, _ := net.ParseCIDR("2001:db8::/32")
	if _, ok := prefixOf(v6); ok {
		t.Error("IPv6 taken")
	}
	_, v4, _ := net.ParseCIDR("192.0.2.0/24")
	if p, ok := prefixOf(v4); !ok || p != netip.MustParsePrefix("192.0.2.0/24") {
		t.Errorf("prefixOf 192.0.2.0/24 = %v %v", p, ok)
	}
}
