package bird

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

// Output of BIRD 2.0.12's "show route all table master4" (greeting cut).
const sample = `Table master4:
192.0.2.0/24         unreachable [st1 21:49:10.654] * (200)
	Type: static univ
203.0.113.0/24       unicast [st1 21:49:10.654] * (200)
	via 198.51.100.1 on a0
	Type: static univ
	BGP.community: (65000,1) (65000,2)
                     unicast [st2 21:49:10.654] (50)
	via 198.51.100.3 on a0
	Type: static univ
203.0.113.10/32      unicast [dp1 21:39:44.969] * (100) [AS65000i]
	via 198.51.100.1 on s1
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 65000
	BGP.next_hop: 198.51.100.1
	BGP.community: (65000,100) (65535,65281)
`

func TestParseRoutes(t *testing.T) {
	rs, err := ParseRoutes(sample)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("%d routes:\n%s", len(rs), FormatRoutes(rs))
	}
	agg := Lookup(rs, netip.MustParsePrefix("203.0.113.0/24"))
	if len(agg) != 2 || !agg[0].Primary || agg[1].Primary || agg[1].Protocol != "st2" || agg[1].Via != netip.MustParseAddr("198.51.100.3") {
		t.Fatalf("two routes for one prefix:\n%s", FormatRoutes(agg))
	}
	if !slices.Equal(agg[0].Communities, []string{"65000:1", "65000:2"}) || agg[1].Communities != nil {
		t.Fatalf("communities: %v %v", agg[0].Communities, agg[1].Communities)
	}
	if rs[0].Type != "unreachable" || rs[0].Via.IsValid() {
		t.Fatalf("unreachable route: %+v", rs[0])
	}
	b := rs[3]
	if b.Protocol != "dp1" || b.Interface != "s1" || b.FirstAS() != 65000 || b.Attrs["BGP.origin"] != "IGP" ||
		!slices.Equal(b.NextHop, []netip.Addr{netip.MustParseAddr("198.51.100.1")}) ||
		!slices.Equal(b.Communities, []string{"65000:100", "65535:65281"}) {
		t.Fatalf("BGP route: %+v", b)
	}
	if got := Prefixes(rs, ""); len(got) != 3 || got[0] != netip.MustParsePrefix("192.0.2.0/24") {
		t.Fatalf("prefixes %v", got)
	}
	if got := Prefixes(rs, "dp1"); len(got) != 1 {
		t.Fatalf("prefixes of dp1: %v", got)
	}
	if _, err := ParseRoutes("      unicast [x 1:2] * (100)\n"); err == nil {
		t.Fatal("a route without a prefix was accepted")
	}
}

// A router in a namespace of its own answers on its own socket, with the
// configuration it was given.
func TestStart(t *testing.T) {
	netnstest.RequireRoot(t)
	ns, err := topo.NewNS(topo.UniqueName("bird"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	if err := ns.Exec("ip", "link", "add", "a0", "type", "veth", "peer", "name", "a1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"ip", "link", "set", "a0", "up"}, {"ip", "link", "set", "a1", "up"}, {"ip", "addr", "add", "198.51.100.2/29", "dev", "a0"}} {
		if err := ns.Exec(c...); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{
		RouterID: netip.MustParseAddr("198.51.100.2"), ASN: 65001,
		Peers: []Peer{{Name: "dp1", Local: netip.MustParseAddr("198.51.100.2"), Neighbor: netip.MustParseAddr("198.51.100.1"), ASN: 65000, HoldTime: 3}},
		Extra: "protocol static st1 { ipv4; route 203.0.113.0/24 via 198.51.100.1 { bgp_community.add((65000,1)); }; }\n",
	}
	r := Start(t, ns, cfg)
	p, err := r.Protocol("dp1")
	if err != nil {
		t.Fatal(err)
	}
	if p.Established() || p.BGPState != "Passive" {
		t.Fatalf("protocol %+v: want a passive session waiting", p)
	}
	if _, err := r.Protocol("nope"); err == nil {
		t.Fatal("unknown protocol found")
	}
	var rs []Route
	if _, err := Wait(5*time.Second, func() error {
		rs, err = r.Routes()
		if err == nil && len(rs) != 1 {
			err = errString(FormatRoutes(rs))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if rs[0].Via != netip.MustParseAddr("198.51.100.1") || rs[0].Interface != "a0" || !slices.Equal(rs[0].Communities, []string{"65000:1"}) {
		t.Fatalf("static route: %+v", rs[0])
	}
	if !strings.Contains(r.Log(), "Started") {
		t.Fatalf("log: %s", r.Log())
	}
}

type errString string

func (e errString) Error() string { return string(e) }
