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
