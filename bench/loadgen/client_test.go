package main

import (
	"net/netip"
	"testing"

	"github.com/fourover6/fourover6/dataplane/packet"
)

func TestIsEchoReply(t *testing.T) {
	a, b := netip.MustParseAddr("13.8.0.1"), netip.MustParseAddr("13.8.0.7")
	reply := packet.BuildICMPEcho(a, b, 42, 1, []byte("x"), true)
	if !isEchoReply(reply, 42) {
		t.Error("echo reply with our id not recognised")
	}
	if isEchoReply(reply, 43) {
		t.Error("another client's reply counted")
	}
	if isEchoReply(packet.BuildICMPEcho(b, a, 42, 1, nil, false), 42) {
		t.Error("an echo request counted as a reply")
	}
	if isEchoReply(reply[:20], 42) || isEchoReply(nil, 42) {
		t.Error("truncated packet accepted")
	}
}

func TestSlots(t *testing.T) {
	if s := slots(20e9, 50e6); s != 400 {
		t.Errorf("slots(20s, 50ms) = %d, want 400", s)
	}
	if s := slots(10e6, 50e6); s != 1 {
		t.Errorf("an interval shorter than a tick gives %d slots, want 1", s)
	}
}

func TestBuildUDP(t *testing.T) {
	src, dst := netip.MustParseAddr("13.8.0.9"), netip.MustParseAddr("203.0.113.200")
	p := buildUDP(src, dst, 1500)
	if n, prob := packet.CheckIPv4(p); prob != packet.OK || n != 1500 {
		t.Fatalf("CheckIPv4 = %d, %v; want 1500, OK", n, prob)
	}
	if packet.Src(p) != src || packet.Dst(p) != dst || p[9] != 17 {
		t.Errorf("addresses or protocol wrong: %v -> %v proto %d", packet.Src(p), packet.Dst(p), p[9])
	}
	// A header with its checksum in place sums to zero: the receiving
	// kernel would drop the packet as corrupt otherwise.
	if c := packet.Checksum(p[:20]); c != 0 {
		t.Errorf("header checksum does not verify: %#04x", c)
	}
	if l := int(p[24])<<8 | int(p[25]); l != 1480 {
		t.Errorf("UDP length %d, want 1480", l)
	}
}
