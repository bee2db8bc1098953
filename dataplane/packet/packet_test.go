package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

var (
	src = netip.MustParseAddr("13.8.0.2")
	dst = netip.MustParseAddr("13.8.0.1")
)

func TestCheckIPv4(t *testing.T) {
	good := BuildICMPEcho(src, dst, 1, 1, []byte("hello"), false)
	if n, p := CheckIPv4(good); p != OK || n != len(good) {
		t.Fatalf("good packet: %d %v", n, p)
	}
	if Src(good) != src || Dst(good) != dst || Src4(good) != Addr4(src) || Dst4(good) != Addr4(dst) {
		t.Fatal("addresses read wrong")
	}
	if Checksum(good[:20]) != 0 || Checksum(good[20:]) != 0 {
		t.Fatal("checksums do not verify")
	}
	padded := append(append([]byte(nil), good...), 0, 0, 0)
	if n, p := CheckIPv4(padded); p != OK || n != len(good) {
		t.Fatalf("padded packet: %d %v, want %d ok", n, p, len(good))
	}
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		p    []byte
		want Problem
	}{
		{"empty", nil, TooShort},
		{"19 bytes", good[:19], TooShort},
		{"ipv6", mod(func(b []byte) []byte { b[0] = 0x60; return b }), NotIPv4},
		{"version 0", mod(func(b []byte) []byte { b[0] = 0x05; return b }), NotIPv4},
		{"ihl 4", mod(func(b []byte) []byte { b[0] = 0x44; return b }), BadHeaderLen},
		{"ihl past end", mod(func(b []byte) []byte { b[0] = 0x4f; return b }), BadHeaderLen},
		{"total < ihl", mod(func(b []byte) []byte { b[2], b[3] = 0, 10; return b }), BadTotalLen},
		{"total > len", mod(func(b []byte) []byte { b[2], b[3] = 0x05, 0xdc; return b }), BadTotalLen},
	}
	for _, c := range cases {
		if _, p := CheckIPv4(c.p); p != c.want {
			t.Errorf("%s: got %v, want %v", c.name, p, c.want)
		}
	}
}

func TestProblemString(t *testing.T) {
	for p := OK; p < NumProblems; p++ {
		if p.String() == "unknown" || p.String() == "" {
			t.Errorf("problem %d has no name", p)
		}
	}
}

// FuzzCheckIPv4: never panic; an accepted packet's length is within bounds
// and its addresses can be read.
func FuzzCheckIPv4(f *testing.F) {
	f.Add(BuildICMPEcho(src, dst, 1, 1, []byte("hello"), false))
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 13, 8, 0, 2, 8, 8, 8, 8})
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64})
	f.Add([]byte{0x4f, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		n, prob := CheckIPv4(p)
		if prob != OK {
			return
		}
		if n < MinHeaderLen || n > len(p) || int(p[0]&0xf)*4 > n {
			t.Fatalf("accepted packet with length %d of %d bytes", n, len(p))
		}
		_, _ = Src(p), Dst(p)
	})
}

func BenchmarkCheckIPv4(b *testing.B) {
	p := BuildICMPEcho(src, dst, 1, 1, make([]byte, 1400), false)
	b.ReportAllocs()
	for b.Loop() {
		if _, prob := CheckIPv4(p); prob != OK {
			b.Fatal(prob)
		}
		_ = Dst4(p)
	}
}

func TestTransportAccessors(t *testing.T) {
	p := BuildICMPEcho(src, dst, 1, 1, []byte("hi"), false)
	if Protocol(p) != ProtoICMP || LaterFragment(p) {
		t.Fatalf("protocol %d, later fragment %v", Protocol(p), LaterFragment(p))
	}
	if tr := Transport(p); len(tr) != 8+2 || tr[0] != 8 {
		t.Fatalf("transport %x: want the echo request", tr)
	}
	// With options the transport header starts after them.
	opt := append(append(append([]byte(nil), p[:20]...), 1, 1, 1, 1), p[20:]...)
	opt[0] = 0x46
	if tr := Transport(opt); tr[0] != 8 {
		t.Fatalf("transport with options starts at %x", tr[:2])
	}
	mf := append([]byte(nil), p...)
	mf[6] = 0x20 // more fragments, offset 0: the first fragment
	if LaterFragment(mf) {
		t.Fatal("the first fragment taken for a later one")
	}
	mf[7] = 1 // offset 8 bytes
	if !LaterFragment(mf) {
		t.Fatal("a fragment at offset 8 not seen")
	}
	df := append([]byte(nil), p...)
	df[6] = 0x40 // don't fragment
	if LaterFragment(df) {
		t.Fatal("DF taken for an offset")
	}
}

func TestBuildUDP(t *testing.T) {
	src, dst := netip.MustParseAddr("13.8.0.2"), netip.MustParseAddr("192.0.2.1")
	p := BuildUDP(src, dst, 40000, 53, []byte("query"))
	if n, prob := CheckIPv4(p); prob != OK || n != len(p) {
		t.Fatalf("CheckIPv4 = %d, %v; want %d, OK", n, prob, len(p))
	}
	if Src(p) != src || Dst(p) != dst || Protocol(p) != ProtoUDP {
		t.Errorf("addresses or protocol: %v > %v proto %d", Src(p), Dst(p), Protocol(p))
	}
	u := p[MinHeaderLen:]
	if binary.BigEndian.Uint16(u[0:]) != 40000 || binary.BigEndian.Uint16(u[2:]) != 53 ||
		int(binary.BigEndian.Uint16(u[4:])) != 8+len("query") || string(u[8:]) != "query" {
		t.Errorf("UDP header or payload: % x", u)
	}
}
