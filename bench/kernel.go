package main

import (
	"fmt"
	"strconv"

	"github.com/fourover6/fourover6/test/topo"
)

// The kernel baseline: IPv4 in IPv6 done by the kernel over the same veth.
// ip6tnl mode ipip6 is the exact analogue of our tunnel (IPv4 packets in
// IPv6, no extra header); kernels without it (this machine's) get vxlan
// over IPv6, which carries an Ethernet frame in UDP instead.
const (
	kernelDev   = "k46"
	kernelSrvV4 = "203.0.113.1" // TEST-NET-3: nothing outside the namespaces has it
	kernelCliV4 = "203.0.113.2"
	vethMTU     = 1500
	vxlanOver   = 40 + 8 + 8 + 14 // IPv6 + UDP + VXLAN + inner Ethernet
)

// kernelEncap sets up the tunnel in both namespaces and returns its kind
// ("ip6tnl-ipip6" or "vxlan") and, when it fell back, why.
func (l *lab) kernelEncap() (kind, note string, err error) {
	ip6tnl := func(ns *topo.NS, local, remote string) error {
		return ns.Exec("ip", "link", "add", kernelDev, "type", "ip6tnl", "mode", "ipip6", "local", local, "remote", remote)
	}
	vxlan := func(ns *topo.NS, local, remote string) error {
		return ns.Exec("ip", "link", "add", kernelDev, "mtu", strconv.Itoa(vethMTU-vxlanOver), "type", "vxlan",
			"id", "46", "local", local, "remote", remote, "dstport", "4789")
	}
	kind = "ip6tnl-ipip6"
	err = l.kernelSetup(ip6tnl)
	if err != nil {
		l.kernelTeardown()
		note = fmt.Sprintf("ip6tnl mode ipip6 not available (%v); used vxlan over IPv6 (MTU %d)", err, vethMTU-vxlanOver)
		l.log.Info("kernel ip6tnl unavailable, falling back to vxlan", "err", err)
		kind = "vxlan"
		if err = l.kernelSetup(vxlan); err != nil {
			l.kernelTeardown()
			return "", note, fmt.Errorf("vxlan: %w", err)
		}
	}
	return kind, note, nil
}

func (l *lab) kernelSetup(add func(ns *topo.NS, local, remote string) error) error {
	steps := []func() error{
		func() error { return add(l.srv, serverV6, clientV6) },
		func() error { return add(l.cli, clientV6, serverV6) },
		func() error { return l.srv.AddAddr(kernelDev, kernelSrvV4+"/30") },
		func() error { return l.cli.AddAddr(kernelDev, kernelCliV4+"/30") },
		func() error { return l.srv.Exec("ip", "link", "set", kernelDev, "up") },
		func() error { return l.cli.Exec("ip", "link", "set", kernelDev, "up") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

func (l *lab) kernelTeardown() {
	l.srv.Exec("ip", "link", "del", kernelDev)
	l.cli.Exec("ip", "link", "del", kernelDev)
}
