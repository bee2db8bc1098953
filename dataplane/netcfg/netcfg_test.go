package netcfg_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/test/netnstest"
)

// Every test runs in a fresh network namespace of its own (netnstest.Do):
// nothing here touches the host's interfaces or routes.
//
// Inside the namespace code runs on a goroutine of netnstest's, where
// t.Fatal must not be used: fatal problems are returned as errors and
// reported once the namespace is left; checks use t.Errorf.
func inNS(t *testing.T, fn func() error) {
	t.Helper()
	var err error
	netnstest.Do(t, func(netns.NsHandle) { err = fn() })
	if err != nil {
		t.Fatal(err)
	}
}

// newLink creates a link to configure: a dummy, or, on kernels built
// without the dummy driver, one end of a veth pair (its peer up, so the
// link gets a carrier like a TUN with its reader attached).
func newLink(t *testing.T, name string) (netlink.Link, error) {
	dummyErr := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
	if dummyErr != nil {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
		if err := netlink.LinkAdd(veth); err != nil {
			return nil, fmt.Errorf("create dummy %s: %v; create veth %s: %v", name, dummyErr, name, err)
		}
		peer, err := netlink.LinkByName(name + "p")
		if err != nil {
			return nil, err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return nil, err
		}
		t.Logf("no dummy links here (%v): using a veth pair", dummyErr)
	}
	return netlink.LinkByName(name)
}

func v4Addrs(link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out, nil
}

func ipNet(p string) *net.IPNet {
	_, n, err := net.ParseCIDR(p)
	if err != nil {
		panic(err)
	}
	return n
}

// routesTo lists the main table's IPv4 routes to dst.
func routesTo(dst string) ([]netlink.Route, error) {
	return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(dst)}, netlink.RT_FILTER_DST)
}

func TestConfigure(t *testing.T) {
	const name = "cfg0"
	inNS(t, func() error {
		link, err := newLink(t, name)
		if err != nil {
			return err
		}
		want := netip.MustParsePrefix("13.8.0.1/24")
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, MTU: 1400, Addr: want}); err != nil {
			return fmt.Errorf("Configure: %w", err)
		}
		check := func(step string, mtu int, addrs ...netip.Prefix) error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().MTU != mtu {
				t.Errorf("%s: MTU %d, want %d", step, l.Attrs().MTU, mtu)
			}
			if l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: link is not up", step)
			}
			got, err := v4Addrs(l)
			if err != nil {
				return err
			}
			if !slices.Equal(got, addrs) {
				t.Errorf("%s: IPv4 addresses %v, want %v", step, got, addrs)
			}
			return nil
		}
		if err := check("first Configure", 1400, want); err != nil {
			return err
		}
		// The tunnel is IPv4 only: IPv6 is off on the link, so it has not
		// even a link-local address.
		if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6")
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(b)) != "1" {
				t.Errorf("disable_ipv6 on %s = %q, want 1", name, b)
			}
			if v6, err := netlink.AddrList(link, netlink.FAMILY_V6); err != nil {
				return err
			} else if len(v6) != 0 {
				t.Errorf("IPv6 addresses on %s: %v", name, v6)
			}
		}

		// Reconfiguring replaces every IPv4 address, including ones added
		// behind its back, with the one wanted.
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet("10.1.2.3/8")}); err != nil {
			return err
		}
		next := netip.MustParsePrefix("10.9.0.1/16")
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, MTU: 1280, Addr: next}); err != nil {
			return fmt.Errorf("second Configure: %w", err)
		}
		if err := check("reconfigure", 1280, next); err != nil {
			return err
		}
		// Same settings again: nothing to do, no error.
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, MTU: 1280, Addr: next}); err != nil {
			return fmt.Errorf("idempotent Configure: %w", err)
		}
		if err := check("same again", 1280, next); err != nil {
			return err
		}
		// A same address with another prefix length is another address.
		wider := netip.MustParsePrefix("10.9.0.1/24")
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, Addr: wider}); err != nil {
			return fmt.Errorf("Configure /24: %w", err)
		}
		// MTU 0 leaves the MTU alone.
		if err := check("prefix length change", 1280, wider); err != nil {
			return err
		}
		// No address leaves the addresses alone.
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name}); err != nil {
			return fmt.Errorf("Configure without address: %w", err)
		}
		return check("no address given", 1280, wider)
	})
}

func TestConfigureMissingLink(t *testing.T) {
	inNS(t, func() error {
		err := netcfg.Configure(netcfg.LinkConfig{Name: "nope0", MTU: 1500, Addr: netip.MustParsePrefix("13.8.0.1/24")})
		if err == nil || !strings.Contains(err.Error(), "nope0") {
			t.Errorf("Configure of a missing link: err = %v, want one naming it", err)
		}
		if err := netcfg.ReplaceRoute("nope0", netip.MustParsePrefix("10.0.0.0/8"), netip.Addr{}); err == nil {
			t.Error("ReplaceRoute through a missing link succeeded")
		}
		if err := netcfg.DeleteRoute("nope0", netip.MustParsePrefix("10.0.0.0/8")); err == nil {
			t.Error("DeleteRoute through a missing link succeeded")
		}
		return nil
	})
}

func TestRoutes(t *testing.T) {
	const name = "rt0"
	inNS(t, func() error {
		link, err := newLink(t, name)
		if err != nil {
			return err
		}
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, MTU: 1500, Addr: netip.MustParsePrefix("13.8.0.1/24")}); err != nil {
			return err
		}
		dst := netip.MustParsePrefix("198.51.100.0/24")
		gw := netip.MustParseAddr("13.8.0.1")
		if err := netcfg.ReplaceRoute(name, dst, gw); err != nil {
			return fmt.Errorf("ReplaceRoute: %w", err)
		}
		rs, err := routesTo(dst.String())
		if err != nil {
			return err
		}
		if len(rs) != 1 {
			return fmt.Errorf("routes to %s after ReplaceRoute: %v, want one", dst, rs)
		}
		r := rs[0]
		if r.LinkIndex != link.Attrs().Index || r.Scope != netlink.SCOPE_LINK || !r.Src.Equal(net.IP(gw.AsSlice())) || r.Gw != nil {
			t.Errorf("route %v: want dev %s scope link src %s, no gateway", r, name, gw)
		}

		// Replace, not add: still one route, now without a source.
		if err := netcfg.ReplaceRoute(name, dst, netip.Addr{}); err != nil {
			return fmt.Errorf("second ReplaceRoute: %w", err)
		}
		if rs, err = routesTo(dst.String()); err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].Src != nil {
			t.Errorf("routes after replacing: %v, want one without a source", rs)
		}

		if err := netcfg.DeleteRoute(name, dst); err != nil {
			return fmt.Errorf("DeleteRoute: %w", err)
		}
		if rs, err = routesTo(dst.String()); err != nil {
			return err
		}
		if len(rs) != 0 {
			t.Errorf("routes after DeleteRoute: %v", rs)
		}
		// Deleting what is not there is not an error.
		if err := netcfg.DeleteRoute(name, dst); err != nil {
			t.Errorf("DeleteRoute of a missing route: %v", err)
		}
		return nil
	})
}

func TestDefaultRoute4(t *testing.T) {
	const name = "def0"
	inNS(t, func() error {
		r, err := netcfg.DefaultRoute4()
		if err != nil {
			return fmt.Errorf("DefaultRoute4 in an empty namespace: %w", err)
		}
		if r != nil {
			t.Errorf("DefaultRoute4 in an empty namespace = %v, want nil", r)
		}

		link, err := newLink(t, name)
		if err != nil {
			return err
		}
		if err := netcfg.Configure(netcfg.LinkConfig{Name: name, Addr: netip.MustParsePrefix("13.8.0.1/24")}); err != nil {
			return err
		}
		// Other routes are not default routes.
		if err := netcfg.ReplaceRoute(name, netip.MustParsePrefix("198.51.100.0/24"), netip.Addr{}); err != nil {
			return err
		}
		if r, err := netcfg.DefaultRoute4(); err != nil || r != nil {
			t.Errorf("DefaultRoute4 without a default route = %v, %v; want nil", r, err)
		}

		// A device default route, as the client sets through its TUN.
		all := netip.MustParsePrefix("0.0.0.0/0")
		if err := netcfg.ReplaceRoute(name, all, netip.Addr{}); err != nil {
			return fmt.Errorf("ReplaceRoute 0.0.0.0/0: %w", err)
		}
		r, err = netcfg.DefaultRoute4()
		if err != nil {
			return err
		}
		if r == nil || r.LinkIndex != link.Attrs().Index || r.Gw != nil {
			t.Errorf("DefaultRoute4 = %v, want the device route through %s", r, name)
		}
		if err := netcfg.DeleteRoute(name, all); err != nil {
			return err
		}
		if r, err := netcfg.DefaultRoute4(); err != nil || r != nil {
			t.Errorf("DefaultRoute4 after deleting it = %v, %v; want nil", r, err)
		}

		// A default route through a gateway, as a host usually has.
		gw := net.ParseIP("13.8.0.254").To4()
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("add default via %s: %w", gw, err)
		}
		r, err = netcfg.DefaultRoute4()
		if err != nil {
			return err
		}
		if r == nil || !r.Gw.Equal(gw) || r.LinkIndex != link.Attrs().Index {
			t.Errorf("DefaultRoute4 = %v, want default via %s dev %s", r, gw, name)
		}
		// DeleteRoute takes routes of any scope through the link, this
		// universe-scope one too.
		if err := netcfg.DeleteRoute(name, all); err != nil {
			return err
		}
		if r, err := netcfg.DefaultRoute4(); err != nil || r != nil {
			t.Errorf("DefaultRoute4 after deleting the gateway route = %v, %v; want nil", r, err)
		}
		return nil
	})
}

// TestTUNQueue: TUNQueue leaves the link with txqueuelen TUNTxQueueLen and
// the noqueue qdisc, again and again.
func TestTUNQueue(t *testing.T) {
	const name = "cfgq0"
	inNS(t, func() error {
		link, err := newLink(t, name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetTxQLen(link, 77); err != nil {
			return err
		}
		// Start from a queueing qdisc, as a TUN has.
		if err := netlink.QdiscReplace(&netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT},
			QdiscType:  "pfifo_fast",
		}); err != nil {
			return err
		}
		if qs, _ := netlink.QdiscList(link); len(qs) != 1 || qs[0].Type() != "pfifo_fast" {
			return fmt.Errorf("qdiscs %v before, want pfifo_fast", qs)
		}
		for range 2 {
			if err := netcfg.Configure(netcfg.LinkConfig{Name: name, TUNQueue: true}); err != nil {
				return fmt.Errorf("Configure: %w", err)
			}
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().TxQLen != netcfg.TUNTxQueueLen {
				t.Errorf("txqueuelen %d, want %d", l.Attrs().TxQLen, netcfg.TUNTxQueueLen)
			}
			qs, err := netlink.QdiscList(l)
			if err != nil {
				return err
			}
			if len(qs) != 1 || qs[0].Type() != "noqueue" {
				t.Errorf("qdiscs %v, want noqueue", qs)
			}
		}
		return nil
	})
}
