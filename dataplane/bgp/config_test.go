package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

func TestParsePeer(t *testing.T) {
	a4, a6 := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8::2")
	good := []struct {
		in   string
		want Peer
	}{
		{"198.51.100.2@65001", Peer{Addr: a4, ASN: 65001}},
		{" 198.51.100.2:1179@65001 ", Peer{Addr: a4, Port: 1179, ASN: 65001}},
		{"2001:db8::2@4200000000", Peer{Addr: a6, ASN: 4200000000}},
		{"[2001:db8::2]@65001", Peer{Addr: a6, ASN: 65001}},
		{"[2001:db8::2]:179@65001", Peer{Addr: a6, Port: 179, ASN: 65001}},
		{"127.0.0.1@65001", Peer{Addr: netip.MustParseAddr("127.0.0.1"), ASN: 65001}},
	}
	for _, c := range good {
		got, err := ParsePeer(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParsePeer(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		back, err := ParsePeer(got.String())
		if err != nil || back.Addr != got.Addr || back.port() != got.port() || back.ASN != got.ASN {
			t.Errorf("%q: String %q does not read back: %+v %v", c.in, got.String(), back, err)
		}
	}
	bad := []struct{ in, msg string }{
		{"", "want ADDR[:PORT]@ASN"},
		{"198.51.100.2", "want ADDR[:PORT]@ASN"},
		{"198.51.100.2@", "bad ASN"},
		{"198.51.100.2@0", "reserved"},
		{"198.51.100.2@23456", "reserved"},
		{"198.51.100.2@4294967296", "bad ASN"},
		{"198.51.100.2@as65001", "bad ASN"},
		{"198.51.100.2@65001@1", "want ADDR[:PORT]@ASN"},
		{"198.51.100.2:0@65001", "bad port"},
		{"198.51.100.2:65536@65001", "bad port"},
		{"198.51.100.2:x@65001", "bad port"},
		{"router@65001", "bad address"},
		{"198.51.100@65001", "bad address"},
		{"[198.51.100.2]:179@65001", "bad address"},
		{"[198.51.100.2]@65001", "brackets are for IPv6"},
		{"[2001:db8::2]:0@65001", "port 0"},
		{"[2001:db8::2@65001", "bad address"},
		{"fe80::1@65001", "link-local"},
		{"[fe80::1%eth0]:179@65001", "link-local"},
		{"::ffff:198.51.100.2@65001", "plain IPv4"},
		{"0.0.0.0@65001", "not a unicast"},
		{"224.0.0.5@65001", "not a unicast"},
		{"::@65001", "not a unicast"},
	}
	for _, c := range bad {
		_, err := ParsePeer(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParsePeer(%q) error %v; want one saying %q", c.in, err, c.msg)
		}
	}
}

func FuzzParsePeer(f *testing.F) {
	for _, s := range []string{"198.51.100.2@65001", "[2001:db8::2]:179@65001", "2001:db8::2@1", "1.2.3.4:5@6", "[::1]@7", "@", "[]:@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePeer(s)
		if err != nil {
			return
		}
		if err := p.check(); err != nil {
			t.Fatalf("ParsePeer(%q) accepted %+v: %v", s, p, err)
		}
		back, err := ParsePeer(p.String())
		if err != nil || back.Addr != p.Addr || back.port() != p.port() || back.ASN != p.ASN {
			t.Fatalf("ParsePeer(%q) = %+v, whose String %q reads back as %+v, %v", s, p, p.String(), back, err)
		}
	})
}

func TestParseCommunities(t *testing.T) {
	got, err := ParseCommunities("65000:100, 65000:200 no-export,NO-ADVERTISE,0:0,65535:65535")
	if err != nil {
		t.Fatal(err)
	}
	want := []Community{65000<<16 | 100, 65000<<16 | 200, NoExport, NoAdvertise, 0, 0xffffffff}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
		if c, err := ParseCommunity(got[i].String()); err != nil || c != got[i] {
			t.Fatalf("%v does not read back: %v %v", got[i], c, err)
		}
	}
	if got, err := ParseCommunities(" "); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %v %v", got, err)
	}
	for _, s := range []string{"65000", "65536:1", "1:65536", "-1:1", "a:b", "65000:100:1", "no-exports"} {
		if _, err := ParseCommunities("65000:1," + s); err == nil || !strings.Contains(err.Error(), "ASN:VALUE") {
			t.Errorf("ParseCommunities(%q): %v", s, err)
		}
	}
}

func FuzzParseCommunities(f *testing.F) {
	f.Add("65000:100,no-export")
	f.Add("1:2 3:4")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := ParseCommunities(s)
		if err != nil {
			return
		}
		for _, c := range cs {
			if back, err := ParseCommunity(c.String()); err != nil || back != c {
				t.Fatalf("%q: %v does not read back: %v %v", s, c, back, err)
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	peer := Peer{Addr: netip.MustParseAddr("198.51.100.2"), ASN: 65001}
	base := func() Config {
		return Config{ASN: 65000, RouterID: netip.MustParseAddr("198.51.100.1"), Peers: []Peer{peer}}
	}
	c := base()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.HoldTime != DefaultHoldTime || c.ConnectRetry != DefaultConnectRetry || c.RestartTime != 0 || c.Logger == nil {
		t.Fatalf("defaults: %+v", c)
	}
	c = base()
	c.HoldTime = -1
	if err := c.validate(); err != nil || c.HoldTime != 0 {
		t.Fatalf("negative hold time: %v %v", c.HoldTime, err)
	}
	bad := []struct {
		mod func(*Config)
		msg string
	}{
		{func(c *Config) { c.ASN = 0 }, "--bgp-asn"},
		{func(c *Config) { c.ASN = asTrans }, "reserved"},
		{func(c *Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") }, "--bgp-router-id"},
		{func(c *Config) { c.RouterID = netip.IPv4Unspecified() }, "non-zero IPv4"},
		{func(c *Config) { c.Peers = append(c.Peers, peer) }, "given twice"},
		{func(c *Config) { c.Peers = []Peer{{Addr: peer.Addr}} }, "cannot be a peer's AS"},
		{func(c *Config) { c.Peers = []Peer{{ASN: 1}} }, "no address"},
		{func(c *Config) { c.NextHop = netip.MustParseAddr("2001:db8::1") }, "--bgp-next-hop"},
		{func(c *Config) { c.NextHop = netip.MustParseAddr("127.0.0.1") }, "--bgp-next-hop"},
		{func(c *Config) { c.Aggregate = netip.MustParsePrefix("203.0.113.1/24") }, "did you mean 203.0.113.0/24"},
		{func(c *Config) { c.Aggregate = netip.MustParsePrefix("203.0.113.1/32") }, "between /1 and /31"},
		{func(c *Config) { c.Aggregate = netip.MustParsePrefix("0.0.0.0/0") }, "between /1 and /31"},
		{func(c *Config) { c.Aggregate = netip.MustParsePrefix("2001:db8::/64") }, "IPv4 prefix"},
		{func(c *Config) { c.HoldTime = 2 * time.Second }, "3s to 65535s"},
		{func(c *Config) { c.HoldTime = 3500 * time.Millisecond }, "whole seconds"},
		{func(c *Config) { c.HoldTime = 70000 * time.Second }, "3s to 65535s"},
		{func(c *Config) { c.ConnectRetry = time.Millisecond }, "at least 1s"},
		{func(c *Config) { c.RestartTime = 4096 * time.Second }, "4095s"},
		{func(c *Config) { c.RestartTime = -time.Second }, "4095s"},
		{func(c *Config) { c.Restarting = true }, "needs graceful restart"},
	}
	for i, b := range bad {
		c := base()
		b.mod(&c)
		err := c.validate()
		if err == nil || !strings.Contains(err.Error(), b.msg) {
			t.Errorf("case %d: %v; want an error saying %q", i, err, b.msg)
		}
		if _, err := New(c); err == nil {
			t.Errorf("case %d: New accepted it", i)
		}
	}
}

// The default router id is the first global IPv4 address of the host; a
// host without one is told to set it.
func TestDefaultRouterID(t *testing.T) {
	netnstest.RequireRoot(t)
	ns, err := topo.NewNS(topo.UniqueName("bgid"))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Delete()
	id := func() (netip.Addr, error) {
		var a netip.Addr
		err := ns.Do(func() error {
			var err error
			a, err = DefaultRouterID()
			return err
		})
		return a, err
	}
	// (no dummy module everywhere: a veth pair inside the namespace)
	if err := ns.Exec("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"); err != nil {
		t.Fatal(err)
	}
	if err := ns.Exec("ip", "link", "set", "d0", "up"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddAddr("d0", "2001:db8::7/64"); err != nil {
		t.Fatal(err)
	}
	if _, err := id(); err == nil || !strings.Contains(err.Error(), "--bgp-router-id") {
		t.Fatalf("no IPv4 address: %v", err)
	}
	if err := ns.AddAddr("d0", "192.0.2.7/24"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddAddr("d0", "192.0.2.9/24"); err != nil {
		t.Fatal(err)
	}
	if a, err := id(); err != nil || a != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("router id %v %v, want 192.0.2.7", a, err)
	}
}
