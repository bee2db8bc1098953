// Package netcfg configures links, addresses and routes through netlink
// (vishvananda/netlink), for the data plane's TUN and the client's.
package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
)

// LinkConfig is what an interface should look like.
type LinkConfig struct {
	Name string
	MTU  int
	// Addr is the interface address with its prefix length, e.g.
	// 13.8.0.1/24 (a route for the prefix follows from it).
	Addr netip.Prefix
	// TUNQueue sets the queue of a TUN the way its reader wants it (see
	// TUNTxQueueLen).
	TUNQueue bool
}

// TUNTxQueueLen is the transmit queue of the TUNs, set with TUNQueue. A
// TUN never stops its queue: a packet the kernel sends to it goes straight
// into a ring of txqueuelen packets (GSO super-packets with offloads) that
// its reader empties, and is dropped when that is full. So a qdisc never
// holds anything and only costs a lock per packet: the TUNs get noqueue.
// The ring is the one FIFO left: the readers (the data plane's TUN loop,
// the client's) empty it into per-flow queues as fast as they run, without
// waiting for a socket, so it fills only while a reader is not scheduled;
// then a longer ring would hold what comes meanwhile, adding no delay that
// the stall has not added already, and a shorter one would drop bursts
// (and cut the inner TCP's rate) after every hiccup of a busy host. The
// kernel's default, 500, is kept on purpose.
const TUNTxQueueLen = 500

// Configure sets the MTU, replaces the IPv4 addresses of the interface with
// c.Addr, disables IPv6 on it (the tunnel carries IPv4 only; this keeps
// router solicitations off it) and sets it up.
func Configure(c LinkConfig) error {
	link, err := netlink.LinkByName(c.Name)
	if err != nil {
		return fmt.Errorf("find link %q: %w", c.Name, err)
	}
	if c.MTU > 0 {
		if err := netlink.LinkSetMTU(link, c.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %q: %w", c.MTU, c.Name, err)
		}
	}
	disableIPv6(c.Name)
	if c.TUNQueue {
		if err := setTUNQueue(link); err != nil {
			return fmt.Errorf("queue of %q: %w", c.Name, err)
		}
	}
	if c.Addr.IsValid() {
		if err := SetAddr(link, c.Addr); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %q up: %w", c.Name, err)
	}
	return nil
}

// setTUNQueue: txqueuelen TUNTxQueueLen, root qdisc noqueue.
func setTUNQueue(link netlink.Link) error {
	if link.Attrs().TxQLen != TUNTxQueueLen {
		if err := netlink.LinkSetTxQLen(link, TUNTxQueueLen); err != nil {
			return fmt.Errorf("set txqueuelen %d: %w", TUNTxQueueLen, err)
		}
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT},
		QdiscType:  "noqueue",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("set qdisc noqueue: %w", err)
	}
	return nil
}

// SetAddr makes want the only IPv4 address of link.
func SetAddr(link netlink.Link, want netip.Prefix) error {
	name := link.Attrs().Name
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove %s from %q: %w", a.IPNet, name, err)
		}
	}
	if have {
		return nil
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
		return fmt.Errorf("add %s to %q: %w", want, name, err)
	}
	return nil
}

// ReplaceRoute points dst at the interface (a point-to-point TUN needs no
// gateway). src, when valid, is the preferred source address.
func ReplaceRoute(ifName string, dst netip.Prefix, src netip.Addr) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find link %q: %w", ifName, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK}
	if src.IsValid() {
		r.Src = net.IP(src.AsSlice())
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", dst, ifName, err)
	}
	return nil
}

// DeleteRoute removes a route to dst through the interface; a missing route
// is not an error.
func DeleteRoute(ifName string, dst netip.Prefix) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find link %q: %w", ifName, err)
	}
	// The kernel deletes only a route of the scope asked for, unless that
	// is "nowhere" (as ip route del sends): ReplaceRoute adds link-scope
	// routes, and a zero (universe) scope would not match them.
	err = netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Scope: netlink.SCOPE_NOWHERE})
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("delete route %s dev %s: %w", dst, ifName, err)
	}
	return nil
}

// DefaultRoute4 returns the IPv4 default route, if there is one.
func DefaultRoute4() (*netlink.Route, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil, err
	}
	for i := range routes {
		if routes[i].Dst == nil || routes[i].Dst.IP.IsUnspecified() {
			r := routes[i]
			return &r, nil
		}
	}
	return nil, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// disableIPv6 is best effort: a kernel without IPv6 has no such knob.
func disableIPv6(name string) {
	_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6"), []byte("1"), 0o644)
}
