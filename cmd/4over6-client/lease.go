package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// lease is a parsed 101 with its route field read as a prefix.
type lease struct {
	wire.AddrResponse
	// route is what the ROUTE field asks to send through the tunnel:
	// 0.0.0.0 -> 0.0.0.0/0 (the default route), a bare address -> that
	// host (/32), "a.b.c.d/n" -> that prefix.
	route netip.Prefix
}

var defaultRoute = netip.PrefixFrom(netip.IPv4Unspecified(), 0)

// parseLease parses the data of a 101 with wire.ParseAddrResponse. Every
// public server sends a bare address as ROUTE, but a prefix is cheap to
// accept, so "a.b.c.d/n" in that field is understood too.
func parseLease(data []byte) (lease, error) {
	r, err := wire.ParseAddrResponse(data)
	if err == nil {
		l := lease{AddrResponse: r, route: netip.PrefixFrom(r.Route, 32)}
		if r.Route.IsUnspecified() {
			l.route = defaultRoute
		}
		return l, nil
	}
	// Retry with the ROUTE field as a prefix. Not on the forwarding path:
	// allocating here is fine.
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	f := bytes.Fields(data)
	if len(f) < 2 || !bytes.Contains(f[1], []byte("/")) {
		return lease{}, err
	}
	p, perr := netip.ParsePrefix(string(f[1]))
	if perr != nil || !p.Addr().Is4() {
		return lease{}, err
	}
	f = slices.Clone(f)
	f[1] = []byte(p.Addr().String())
	r, err2 := wire.ParseAddrResponse(bytes.Join(f, []byte(" ")))
	if err2 != nil {
		return lease{}, err2
	}
	return lease{AddrResponse: r, route: p.Masked()}, nil
}

func (l lease) String() string {
	return fmt.Sprintf("%s route %s dns %s %s %s", l.Addr, l.route, l.DNS[0], l.DNS[1], l.DNS[2])
}

// planRoutes decides which prefixes go through the tunnel for lease l:
//
//   - ROUTE 0.0.0.0 without --keep-default-route: the default route
//     (0.0.0.0/0), replacing the host's; everything, pool included, follows.
//   - otherwise the pool (--pool, or the /24 holding the leased address), so
//     the gateway and the server's other clients stay reachable over the
//     point-to-point TUN, plus ROUTE itself when it is not 0.0.0.0.
//   - in every case the --route prefixes on top.
//
// Duplicates are dropped; the order is stable (base first, then --route).
func planRoutes(l lease, c *config) []netip.Prefix {
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	switch {
	case l.route == defaultRoute && !c.keepDefaultRoute:
		add(defaultRoute)
	default:
		pool := c.pool
		if !pool.IsValid() {
			pool = netip.PrefixFrom(l.Addr, 24).Masked()
		}
		add(pool)
		if l.route != defaultRoute {
			add(l.route)
		}
	}
	for _, p := range c.routes {
		add(p)
	}
	return out
}
