package policy_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/policy"
	"github.com/fourover6/fourover6/dataplane/wire"
)

var gw = dataplanetest.Pool.Gateway

// udpTo is a UDP packet from src to dst:port.
func udpTo(src, dst netip.Addr, port uint16) []byte {
	return packet.BuildUDP(src, dst, 40000, port, make([]byte, 4))
}

// send writes each packet as a 102, then a marker that passes, and returns
// what reached the TUN before the marker: the session handles its 102s in
// order, so everything sent before the marker has been decided by then.
func send(h *dataplanetest.Harness, c *dataplanetest.Client, me netip.Addr, pkts ...[]byte) [][]byte {
	h.T.Helper()
	var stream []byte
	for _, p := range pkts {
		stream = wire.AppendMsg(stream, wire.TypeNetRequest, p)
	}
	marker := packet.BuildICMPEcho(me, netip.MustParseAddr("198.51.100.99"), 0x3a3a, 1, []byte("marker"), false)
	c.Write(wire.AppendMsg(stream, wire.TypeNetRequest, marker))
	var got [][]byte
	for {
		p := h.FromTUN()
		if string(p) == string(marker) {
			return got
		}
		got = append(got, p)
	}
}

func wantDrops(t *testing.T, h *dataplanetest.Harness, want map[string]uint64) {
	t.Helper()
	got := h.DP.Drops()
	for name, n := range want {
		if got[name] != n {
			t.Errorf("drops %s = %d, want %d (all: %v)", name, got[name], n, got)
		}
	}
	for name, n := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected drops %s = %d", name, n)
		}
	}
}

// TestDataplaneDefaultPolicy: a data plane given no policy applies the
// built-in rules for its pool to every 102.
func TestDataplaneDefaultPolicy(t *testing.T) {
	h := dataplanetest.Start(t, nil, nil)
	c := h.Dial()
	me := h.LeaseRouted(c)
	internet := udpTo(me, netip.MustParseAddr("198.51.100.2"), 9)
	echo := packet.BuildICMPEcho(me, gw, 7, 1, nil, false)
	got := send(h, c, me,
		udpTo(me, gw, 9462), // the host: refused
		echo,                // echo to the gateway: passes
		udpTo(me, gw, 53),   // DNS, but the 101 names other servers
		internet,            // passes
		udpTo(me, netip.MustParseAddr("13.8.0.3"), 9),         // another client
		udpTo(me, netip.MustParseAddr("13.8.0.255"), 137),     // pool broadcast
		udpTo(me, netip.MustParseAddr("255.255.255.255"), 67), // limited broadcast
		udpTo(me, netip.MustParseAddr("169.254.169.254"), 80), // metadata
		udpTo(me, netip.MustParseAddr("224.0.0.251"), 5353),   // mDNS
		udpTo(me, netip.MustParseAddr("127.0.0.1"), 6060),     // loopback
		udpTo(me, netip.MustParseAddr("0.0.0.0"), 9),          // unspecified
		udpTo(me, netip.MustParseAddr("240.0.0.1"), 9),        // reserved
	)
	if len(got) != 2 || string(got[0]) != string(echo) || string(got[1]) != string(internet) {
		t.Fatalf("TUN got %d packets, want the echo and the internet one", len(got))
	}
	wantDrops(t, h, map[string]uint64{
		"policy_host": 2, "policy_client": 1, "policy_broadcast": 2, "policy_link_local": 1,
		"policy_multicast": 1, "policy_loopback": 1, "policy_unspecified": 1, "policy_reserved": 1,
	})
	// Traffic counts only what was forwarded: the sync echo, the two, the
	// marker. The reader counts the marker once its TUN write returned,
	// which may be after the test saw it on the TUN.
	dataplanetest.Eventually(t, "the marker to be counted", func() bool { return h.DP.Status().Traffic.PacketsFromClient >= 4 })
	if tr := h.DP.Status().Traffic; tr.PacketsFromClient != 4 {
		t.Errorf("packets from client = %d, want 4", tr.PacketsFromClient)
	}
}

// gatewayDNS is a controller whose 101s name the gateway as first DNS server.
type gatewayDNS struct{ *dataplanetest.MemController }

func (c gatewayDNS) Allocate(ctx context.Context, r dataplane.AllocateRequest) (wire.AddrResponse, error) {
	resp, err := c.MemController.Allocate(ctx, r)
	resp.DNS[0] = gw
	return resp, err
}

// TestDataplaneGatewayDNS: DNS to the gateway passes for a client whose
// 101 names the gateway, and only DNS.
func TestDataplaneGatewayDNS(t *testing.T) {
	h := dataplanetest.Start(t, nil, func(c *dataplane.Config) {
		c.ControlPlane = gatewayDNS{dataplanetest.NewMemController(253)}
	})
	c := h.Dial()
	me := h.LeaseRouted(c)
	dns := udpTo(me, gw, 53)
	got := send(h, c, me, dns, udpTo(me, gw, 5353))
	if len(got) != 1 || string(got[0]) != string(dns) {
		t.Fatalf("TUN got %d packets, want the DNS query only", len(got))
	}
	wantDrops(t, h, map[string]uint64{"policy_host": 1})
}

// TestDataplaneLivePolicy: rules set on the data plane's policy apply to
// the next packet of sessions already running.
func TestDataplaneLivePolicy(t *testing.T) {
	pol, err := policy.New(policy.Config{Gateway: gw, Pool: dataplanetest.Pool.Pool})
	if err != nil {
		t.Fatal(err)
	}
	h := dataplanetest.Start(t, nil, func(c *dataplane.Config) { c.Policy = pol })
	a, b := h.Dial(), h.Dial()
	meA, meB := h.LeaseRouted(a), h.LeaseRouted(b)
	toNet := udpTo(meA, netip.MustParseAddr("203.0.113.7"), 9)
	toB := udpTo(meA, meB, 9)
	if got := send(h, a, meA, toNet, toB); len(got) != 1 || string(got[0]) != string(toNet) {
		t.Fatalf("before: TUN got %d packets, want the one to 203.0.113.7", len(got))
	}
	if _, err := pol.SetRules(policy.Rules{Deny: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, ClientToClient: true}); err != nil {
		t.Fatal(err)
	}
	if got := send(h, a, meA, toNet, toB); len(got) != 1 || string(got[0]) != string(toB) {
		t.Fatalf("after: TUN got %d packets, want the one to the other client", len(got))
	}
	wantDrops(t, h, map[string]uint64{"policy_client": 1, "policy_denied": 1})
}
