package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"slices"

	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/vishvananda/netlink"
)

// netState is what the client changed on the host: the TUN's address, the
// routes it added, the default route it displaced, resolv.conf. It exists to
// undo all of it.
//
// netlink acts on the network namespace of the calling thread, so netState
// is only ever used from the goroutine that runs client.run.
type netState struct {
	log        *slog.Logger
	ifName     string
	mtu        int
	resolvConf string

	addr   netip.Addr     // on the TUN; kept across reconnects
	routes []netip.Prefix // installed by us, through the TUN

	// savedDefault is the IPv4 default route in place before we took it
	// (nil when there was none); valid while routes holds 0.0.0.0/0.
	savedDefault *netlink.Route

	dnsWritten []byte // what we last wrote to resolvConf
	dnsBackup  []byte // its content before the first write
	dnsExisted bool   // whether it existed before the first write
}

// configure gives the TUN the leased address (/32: a point-to-point TUN needs
// no subnet, the routes say what goes through it), the MTU, and sets it up.
// netcfg.Configure replaces any older IPv4 address, which also makes the
// kernel drop routes using that address as source: callers reinstall routes.
func (n *netState) configure(addr netip.Addr) error {
	if err := netcfg.Configure(netcfg.LinkConfig{Name: n.ifName, MTU: n.mtu, Addr: netip.PrefixFrom(addr, 32), TUNQueue: true}); err != nil {
		return err
	}
	n.addr = addr
	return nil
}

// setRoutes makes want the set of prefixes routed through the TUN, with src
// as preferred source address. Taking 0.0.0.0/0 saves the host's default
// route first; giving it back restores it.
func (n *netState) setRoutes(want []netip.Prefix, src netip.Addr) error {
	if slices.Contains(want, defaultRoute) && !slices.Contains(n.routes, defaultRoute) {
		if err := n.saveDefault(); err != nil {
			return err
		}
	}
	var errs []error
	for _, p := range want {
		if err := netcfg.ReplaceRoute(n.ifName, p, src); err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(n.routes, p) {
			n.routes = append(n.routes, p)
		}
	}
	for _, p := range slices.Clone(n.routes) {
		if !slices.Contains(want, p) {
			if err := n.removeRoute(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// saveDefault remembers the current IPv4 default route unless it already
// points at our TUN (then it is ours, left from this run).
func (n *netState) saveDefault() error {
	r, err := netcfg.DefaultRoute4()
	if err != nil {
		return fmt.Errorf("read the IPv4 default route: %w", err)
	}
	n.savedDefault = nil
	if r == nil {
		return nil
	}
	if link, err := netlink.LinkByName(n.ifName); err == nil && r.LinkIndex == link.Attrs().Index {
		return nil
	}
	n.savedDefault = r
	n.log.Info("taking the IPv4 default route", "previous", r.String())
	return nil
}

// removeRoute withdraws one of our routes. For the default route, the saved
// one is put back first: when it has the same metric, that replaces ours in
// one step, so there is no moment without a default route.
func (n *netState) removeRoute(p netip.Prefix) error {
	var errs []error
	if p == defaultRoute && n.savedDefault != nil {
		if err := netlink.RouteReplace(n.savedDefault); err != nil {
			errs = append(errs, fmt.Errorf("restore default route %s: %w", n.savedDefault, err))
		} else {
			n.log.Info("restored the IPv4 default route", "route", n.savedDefault.String())
		}
		n.savedDefault = nil
	}
	if err := netcfg.DeleteRoute(n.ifName, p); err != nil {
		errs = append(errs, err)
	}
	n.routes = slices.DeleteFunc(n.routes, func(q netip.Prefix) bool { return q == p })
	return errors.Join(errs...)
}

// withdraw removes every route we added and restores the default route.
// The address stays on the TUN: the next lease usually brings it back.
func (n *netState) withdraw() error {
	var errs []error
	for _, p := range slices.Clone(n.routes) {
		if err := n.removeRoute(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeDNS writes the 101's DNS servers to --resolv-conf, keeping the old
// content to restore on exit. The file is written in place (not renamed
// over), so a symlinked /etc/resolv.conf keeps its link.
func (n *netState) writeDNS(dns [3]netip.Addr) error {
	if n.resolvConf == "" {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("# written by 4over6-client from the server's 101; restored on exit\n")
	for _, a := range dns {
		if a.IsValid() && !a.IsUnspecified() {
			fmt.Fprintf(&b, "nameserver %s\n", a)
		}
	}
	if bytes.Equal(b.Bytes(), n.dnsWritten) {
		return nil
	}
	if n.dnsWritten == nil {
		old, err := os.ReadFile(n.resolvConf)
		switch {
		case err == nil:
			n.dnsBackup, n.dnsExisted = old, true
		case errors.Is(err, fs.ErrNotExist):
			n.dnsExisted = false
		default:
			return fmt.Errorf("read %s: %w", n.resolvConf, err)
		}
	}
	if err := os.WriteFile(n.resolvConf, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", n.resolvConf, err)
	}
	n.dnsWritten = b.Bytes()
	return nil
}

// restoreDNS puts --resolv-conf back as it was before the first write.
func (n *netState) restoreDNS() error {
	if n.dnsWritten == nil {
		return nil
	}
	n.dnsWritten = nil
	if !n.dnsExisted {
		if err := os.Remove(n.resolvConf); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return os.WriteFile(n.resolvConf, n.dnsBackup, 0o644)
}

// dnsList renders the DNS servers for the lease log line.
func dnsList(dns [3]netip.Addr) []string {
	s := make([]string, 0, 3)
	for _, a := range dns {
		s = append(s, a.String())
	}
	return s
}
