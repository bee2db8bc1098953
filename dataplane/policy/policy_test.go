package policy

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/dataplane/packet"
)

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
	me     = addr("13.8.0.2") // the sending client
	gw     = addr("13.8.0.1")
)

// pkt builds an IPv4 packet from me to dst: proto with a transport header
// of hdr bytes (type/ports set from kind), unfragmented.
func pkt(dst netip.Addr, proto uint8, port uint16, hdr int) []byte {
	p := make([]byte, 20+hdr)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, proto
	s, d := me.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	tr := p[20:]
	switch proto {
	case packet.ProtoICMP:
		if hdr > 0 {
			tr[0] = byte(port) // the ICMP type
		}
	case packet.ProtoTCP, packet.ProtoUDP:
		if hdr >= 4 {
			binary.BigEndian.PutUint16(tr[0:], 40000)
			binary.BigEndian.PutUint16(tr[2:], port)
		}
	}
	return p
}

func echo(dst netip.Addr) []byte             { return pkt(dst, packet.ProtoICMP, icmpEchoRequest, 8) }
func udp(dst netip.Addr, port uint16) []byte { return pkt(dst, packet.ProtoUDP, port, 8) }
func tcp(dst netip.Addr, port uint16) []byte { return pkt(dst, packet.ProtoTCP, port, 20) }

func fragment(p []byte, offset8 uint16, more bool) []byte {
	q := append([]byte(nil), p...)
	v := offset8 & 0x1fff
	if more {
		v |= 0x2000
	}
	binary.BigEndian.PutUint16(q[6:], v)
	return q
}

// testHost is a host as ReadHost sees one: the gateway on the TUN, an
// uplink 198.51.100.1/24, loopback, and an AnyIP prefix routed to itself.
var testHost = Host{
	Local: []netip.Prefix{prefix("13.8.0.1/32"), prefix("198.51.100.1/32"), prefix("127.0.0.0/8"),
		prefix("127.0.0.1/32"), prefix("10.99.0.0/16")},
	Broadcast: []netip.Prefix{prefix("13.8.0.255/32"), prefix("198.51.100.255/32"), prefix("127.255.255.255/32")},
}

func testConfig(r Rules) Config {
	return Config{Gateway: gw, Pool: prefix("13.8.0.0/24"), Rules: r, Host: testHost}
}

func build(t testing.TB, c Config) *Table {
	t.Helper()
	tb, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

type checkCase struct {
	name string
	p    []byte
	dns  bool
	want Reason
}

func runCases(t *testing.T, tb *Table, cases []checkCase) {
	t.Helper()
	for _, c := range cases {
		if n, prob := packet.CheckIPv4(c.p); prob != packet.OK || n != len(c.p) {
			t.Fatalf("%s: test packet is not IPv4: %v", c.name, prob)
		}
		if got := tb.Check(c.p, c.dns); got != c.want {
			t.Errorf("%s (to %s): %v, want %v", c.name, packet.Dst(c.p), got, c.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	tb := build(t, testConfig(Rules{}))
	runCases(t, tb, []checkCase{
		{"the IPv4 internet", udp(addr("198.51.100.2"), 9), false, Allow},
		{"a public resolver", udp(addr("8.8.8.8"), 53), false, Allow},
		{"private space beyond the host", tcp(addr("10.1.2.3"), 80), false, Allow},

		{"gateway: TCP service", tcp(gw, 9462), false, ToHost},
		{"gateway: echo request", echo(gw), false, Allow},
		{"gateway: echo request, first fragment", fragment(echo(gw), 0, true), false, Allow},
		{"gateway: later fragment", fragment(echo(gw), 1, false), false, ToHost},
		{"gateway: echo reply", pkt(gw, packet.ProtoICMP, 0, 8), false, ToHost},
		{"gateway: ICMP timestamp", pkt(gw, packet.ProtoICMP, 13, 20), false, ToHost},
		{"gateway: truncated ICMP header", pkt(gw, packet.ProtoICMP, icmpEchoRequest, 4), false, ToHost},
		{"gateway: UDP DNS, gateway not a DNS server", udp(gw, 53), false, ToHost},
		{"gateway: UDP DNS", udp(gw, 53), true, Allow},
		{"gateway: TCP DNS", tcp(gw, 53), true, Allow},
		{"gateway: DNS, later fragment", fragment(udp(gw, 53), 2, false), true, ToHost},
		{"gateway: DNS, no room for the ports", pkt(gw, packet.ProtoUDP, 53, 2), true, ToHost},
		{"gateway: other UDP port", udp(gw, 5353), true, ToHost},
		{"gateway: another protocol to port 53", pkt(gw, 132, 53, 8), true, ToHost},
		{"uplink address: TCP service", tcp(addr("198.51.100.1"), 22), false, ToHost},
		{"uplink address: echo", echo(addr("198.51.100.1")), false, ToHost},
		{"uplink address: DNS", udp(addr("198.51.100.1"), 53), true, ToHost},
		{"local prefix routed to the host", tcp(addr("10.99.3.4"), 80), false, ToHost},

		{"another client", udp(addr("13.8.0.7"), 9), false, ToClient},
		{"another client, echo", echo(addr("13.8.0.7")), false, ToClient},
		{"oneself", udp(me, 9), false, ToClient},
		{"pool broadcast", udp(addr("13.8.0.255"), 137), false, ToBroadcast},
		{"pool network address", udp(addr("13.8.0.0"), 137), false, ToBroadcast},
		{"uplink subnet broadcast", udp(addr("198.51.100.255"), 137), false, ToBroadcast},
		{"limited broadcast", udp(addr("255.255.255.255"), 67), false, ToBroadcast},
		{"mDNS", udp(addr("224.0.0.251"), 5353), false, ToMulticast},
		{"SSDP", udp(addr("239.255.255.250"), 1900), false, ToMulticast},
		{"loopback", tcp(addr("127.0.0.1"), 6060), false, ToLoopback},
		{"loopback resolver", udp(addr("127.0.0.53"), 53), true, ToLoopback},
		{"unspecified", tcp(addr("0.0.0.0"), 80), false, ToUnspecified},
		{"this network", tcp(addr("0.1.2.3"), 80), false, ToUnspecified},
		{"cloud metadata", tcp(addr("169.254.169.254"), 80), false, ToLinkLocal},
		{"link-local", udp(addr("169.254.1.1"), 9), false, ToLinkLocal},
		{"reserved", udp(addr("240.0.0.1"), 9), false, ToReserved},
		{"reserved, top", udp(addr("255.255.255.254"), 9), false, ToReserved},
	})
}

func TestClientToClient(t *testing.T) {
	tb := build(t, testConfig(Rules{ClientToClient: true}))
	runCases(t, tb, []checkCase{
		{"another client", udp(addr("13.8.0.7"), 9), false, Allow},
		{"another client, TCP", tcp(addr("13.8.0.200"), 22), false, Allow},
		{"pool broadcast still", udp(addr("13.8.0.255"), 137), false, ToBroadcast},
		{"pool network address still", udp(addr("13.8.0.0"), 137), false, ToBroadcast},
		{"gateway still", tcp(gw, 22), false, ToHost},
		{"gateway echo", echo(gw), false, Allow},
	})
}

func TestOperatorRules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules Rules
		cases []checkCase
	}{
		{"allow one metadata address", Rules{Allow: []netip.Prefix{prefix("169.254.169.254/32")}}, []checkCase{
			{"allowed", tcp(addr("169.254.169.254"), 80), false, Allow},
			{"rest of link-local", tcp(addr("169.254.169.253"), 80), false, ToLinkLocal},
		}},
		{"allow at the built-in's length", Rules{Allow: []netip.Prefix{prefix("169.254.0.0/16")}}, []checkCase{
			{"operator beats built-in at equal length", tcp(addr("169.254.1.1"), 80), false, Allow},
		}},
		{"deny a network", Rules{Deny: []netip.Prefix{prefix("198.51.100.0/24")}}, []checkCase{
			{"denied", udp(addr("198.51.100.2"), 9), false, Denied},
			{"host address still host", udp(addr("198.51.100.1"), 9), false, ToHost},
			{"elsewhere", udp(addr("203.0.113.9"), 9), false, Allow},
		}},
		{"allow inside a deny", Rules{Deny: []netip.Prefix{prefix("198.51.100.0/24")}, Allow: []netip.Prefix{prefix("198.51.100.2/32")}}, []checkCase{
			{"more specific allow", udp(addr("198.51.100.2"), 9), false, Allow},
			{"rest denied", udp(addr("198.51.100.3"), 9), false, Denied},
		}},
		{"deny inside an allow", Rules{Allow: []netip.Prefix{prefix("169.254.0.0/16")}, Deny: []netip.Prefix{prefix("169.254.169.254/32")}}, []checkCase{
			{"more specific deny", tcp(addr("169.254.169.254"), 80), false, Denied},
			{"rest allowed", tcp(addr("169.254.1.1"), 80), false, Allow},
		}},
		{"allow-list: deny everything but one network", Rules{Deny: []netip.Prefix{prefix("0.0.0.0/0")}, Allow: []netip.Prefix{prefix("203.0.113.0/24")}}, []checkCase{
			{"allowed network", udp(addr("203.0.113.5"), 9), false, Allow},
			{"anywhere else", udp(addr("8.8.8.8"), 53), false, Denied},
			{"gateway echo still passes (more specific built-in)", echo(gw), false, Allow},
			{"gateway TCP still host", tcp(gw, 22), false, ToHost},
		}},
		{"wide allow does not open the host", Rules{Allow: []netip.Prefix{prefix("198.51.100.0/24"), prefix("13.8.0.0/24")}}, []checkCase{
			{"uplink address", tcp(addr("198.51.100.1"), 22), false, ToHost},
			{"gateway", tcp(gw, 22), false, ToHost},
			{"pool allowed at equal length", udp(addr("13.8.0.7"), 9), false, Allow},
			{"pool broadcast (more specific)", udp(addr("13.8.0.255"), 9), false, ToBroadcast},
		}},
		{"allow the gateway", Rules{Allow: []netip.Prefix{prefix("13.8.0.1/32")}}, []checkCase{
			{"any service", tcp(gw, 22), false, Allow},
		}},
		{"deny the gateway", Rules{Deny: []netip.Prefix{prefix("13.8.0.1/32")}}, []checkCase{
			{"echo no longer passes", echo(gw), false, Denied},
			{"nor DNS", udp(gw, 53), true, Denied},
		}},
		{"deny a host address (already refused)", Rules{Deny: []netip.Prefix{prefix("198.51.100.1/32")}}, []checkCase{
			{"counted as the operator's", tcp(addr("198.51.100.1"), 22), false, Denied},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runCases(t, build(t, testConfig(tc.rules)), tc.cases)
		})
	}
}

// TestBothAllowedAndDenied: the one case of an allow and a deny of equal
// length is the same prefix in both lists, a mistake to point out.
func TestBothAllowedAndDenied(t *testing.T) {
	r := Rules{Allow: []netip.Prefix{prefix("198.51.100.0/24")}, Deny: []netip.Prefix{prefix("198.51.100.0/24")}}
	_, err := Build(testConfig(r))
	if err == nil || err.Error() != "198.51.100.0/24 is both allowed and denied: keep it in one list" {
		t.Fatalf("a prefix both allowed and denied: %v", err)
	}
}

func TestNoPoolNoGateway(t *testing.T) {
	// A table without pool and gateway still refuses the special ranges.
	tb := build(t, Config{})
	runCases(t, tb, []checkCase{
		{"internet", udp(addr("198.51.100.2"), 9), false, Allow},
		{"13.8.0.7 is nobody's", udp(addr("13.8.0.7"), 9), false, Allow},
		{"metadata", tcp(addr("169.254.169.254"), 80), false, ToLinkLocal},
		{"broadcast", udp(addr("255.255.255.255"), 67), false, ToBroadcast},
	})
	// A /31 pool has no network or broadcast address to refuse.
	tb = build(t, Config{Gateway: addr("13.8.0.0"), Pool: prefix("13.8.0.0/31")})
	runCases(t, tb, []checkCase{
		{"the other address of a /31", udp(addr("13.8.0.1"), 9), false, ToClient},
		{"echo to the gateway", pkt(addr("13.8.0.0"), packet.ProtoICMP, icmpEchoRequest, 8), false, Allow},
	})
}

func TestLookupAndEntries(t *testing.T) {
	tb := build(t, testConfig(Rules{Deny: []netip.Prefix{prefix("198.51.100.0/24")}}))
	e, ok := tb.Lookup(addr("198.51.100.9"))
	if !ok || e.Prefix != prefix("198.51.100.0/24") || e.Reason != Denied || !e.Operator {
		t.Errorf("Lookup 198.51.100.9 = %+v %v", e, ok)
	}
	e, ok = tb.Lookup(gw)
	if !ok || !e.Gateway || e.Reason != ToHost || e.Operator {
		t.Errorf("Lookup gateway = %+v %v", e, ok)
	}
	if _, ok := tb.Lookup(addr("8.8.8.8")); ok {
		t.Error("8.8.8.8 has an entry")
	}
	// Every entry once, ordered, and the host's loopback addresses left
	// to the loopback rule.
	es := tb.Entries()
	seen := map[netip.Prefix]bool{}
	for i, e := range es {
		if seen[e.Prefix] {
			t.Errorf("%s twice", e.Prefix)
		}
		seen[e.Prefix] = true
		if i > 0 && comparePrefix(es[i-1].Prefix, e.Prefix) >= 0 {
			t.Errorf("entries out of order at %s", e.Prefix)
		}
		if e.Reason == ToHost && e.Prefix.Overlaps(prefix("127.0.0.0/8")) {
			t.Errorf("loopback entered as host: %s", e)
		}
	}
	for _, want := range []string{"13.8.0.0/24", "13.8.0.1/32", "13.8.0.255/32", "198.51.100.1/32", "10.99.0.0/16", "169.254.0.0/16"} {
		if !seen[prefix(want)] {
			t.Errorf("no entry for %s in %v", want, es)
		}
	}
	if s := (Entry{Prefix: prefix("13.8.0.1/32"), Reason: ToHost, Gateway: true}).String(); s != "13.8.0.1/32 host (built-in), echo and DNS pass" {
		t.Errorf("Entry.String = %q", s)
	}
	if Reason(200).String() != "unknown" || NumReasons.String() != "unknown" {
		t.Error("out-of-range reasons must print as unknown")
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := range NumReasons {
		n := r.String()
		if n == "" || n == "unknown" || strings.ContainsAny(n, " -") || seen[n] {
			t.Errorf("reason %d: name %q", r, n)
		}
		seen[n] = true
	}
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.0/24": "198.51.100.0/24",
		" 10.0.0.0/8 ":    "10.0.0.0/8",
		"198.51.100.7":    "198.51.100.7/32",
		"0.0.0.0/0":       "0.0.0.0/0",
	} {
		got, err := ParsePrefix(in)
		if err != nil || got != prefix(want) {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":               "empty prefix (a stray comma?)",
		"10.1.2.3/8":     `10.1.2.3/8 has bits set beyond its /8: did you mean 10.0.0.0/8?`,
		"2001:db8::/32":  "2001:db8::/32 is IPv6: clients reach IPv4 destinations only",
		"2001:db8::1":    "2001:db8::1/128 is IPv6",
		"::ffff:1.2.3.4": "is IPv6",
		"10.0.0.0/33":    `"10.0.0.0/33" is not a prefix: want CIDR such as 198.51.100.0/24`,
		"example.com":    `"example.com" is neither a prefix nor an address`,
		"10.0.0.0/":      "is not a prefix",
	} {
		_, err := ParsePrefix(in)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParsePrefix(%q): %v, want an error saying %q", in, err, msg)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, bad := range []Rules{
		{Allow: []netip.Prefix{prefix("10.1.2.3/8")}},
		{Deny: []netip.Prefix{prefix("2001:db8::/32")}},
		{Deny: []netip.Prefix{{}}},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", bad)
		}
		if _, err := New(testConfig(bad)); err == nil {
			t.Errorf("New with %+v accepted", bad)
		}
	}
	if _, err := Build(Config{Gateway: addr("2001:db8::1")}); err == nil {
		t.Error("IPv6 gateway accepted")
	}
	if _, err := Build(Config{Pool: prefix("2001:db8::/64")}); err == nil {
		t.Error("IPv6 pool accepted")
	}
}

func TestPolicyHolder(t *testing.T) {
	var nilPolicy *Policy
	if nilPolicy.Check(tcp(gw, 22), false) != Allow || nilPolicy.GatewayDNS([]netip.Addr{gw}) {
		t.Fatal("a nil policy must allow everything and grant no DNS")
	}
	p, err := New(Config{Gateway: gw, Pool: prefix("13.8.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if !p.GatewayDNS([]netip.Addr{addr("192.0.2.53"), gw, addr("192.0.2.55")}) || p.GatewayDNS([]netip.Addr{addr("192.0.2.53")}) {
		t.Fatal("GatewayDNS")
	}
	up := tcp(addr("198.51.100.1"), 22)
	if p.Check(up, false) != Allow {
		t.Fatal("the uplink address is refused before the host is known")
	}
	tb, changed, err := p.SetHost(testHost)
	if err != nil || !changed || p.Table() != tb || p.Check(up, false) != ToHost {
		t.Fatalf("SetHost: changed %v, err %v, check %v", changed, err, p.Check(up, false))
	}
	// The same host in another order changes nothing.
	shuffled := Host{Local: append([]netip.Prefix(nil), testHost.Local...), Broadcast: testHost.Broadcast}
	shuffled.Local[0], shuffled.Local[1] = shuffled.Local[1], shuffled.Local[0]
	shuffled.Local = append(shuffled.Local, prefix("198.51.100.1/32"), prefix("2001:db8::1/128"))
	if tb2, changed, _ := p.SetHost(shuffled); changed || tb2 != tb {
		t.Fatal("the same host addresses rebuilt the table")
	}

	if _, err := p.SetRules(Rules{Deny: []netip.Prefix{prefix("10.1.2.3/8")}}); err == nil {
		t.Fatal("bad rules accepted")
	}
	if p.Table() != tb {
		t.Fatal("bad rules changed the table")
	}
	tb3, err := p.SetRules(Rules{Deny: []netip.Prefix{prefix("203.0.113.0/24")}, ClientToClient: true})
	if err != nil || p.Table() != tb3 {
		t.Fatal(err)
	}
	if p.Check(udp(addr("203.0.113.1"), 9), false) != Denied || p.Check(udp(addr("13.8.0.9"), 9), false) != Allow {
		t.Fatal("new rules not in force")
	}
	if p.Check(up, false) != ToHost {
		t.Fatal("new rules lost the host addresses")
	}
	if c := tb3.Config(); c.Gateway != gw || !c.Rules.ClientToClient || len(c.Host.Local) == 0 {
		t.Fatalf("Config() = %+v", c)
	}
}
