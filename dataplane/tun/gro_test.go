package tun

import (
	"encoding/binary"
	"io"
	"os"
	"testing"
)

// tcpSeg builds an IPv4/TCP segment with the given sequence number, flags
// and payload size; options carry a fixed timestamp.
func tcpSeg(seq uint32, flags byte, payload int, srcPort uint16) []byte {
	const thl = 32 // 20 + 12 bytes of options
	p := make([]byte, ipv4HdrLen+thl+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[6] = 0x40 // DF
	p[8], p[9] = 64, 6
	copy(p[12:], []byte{13, 8, 0, 2, 198, 51, 100, 2})
	t := p[ipv4HdrLen:]
	binary.BigEndian.PutUint16(t[0:], srcPort)
	binary.BigEndian.PutUint16(t[2:], 80)
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], 777)
	t[12] = thl / 4 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 500)
	copy(t[20:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	for i := range payload {
		t[thl+i] = byte(seq) + byte(i)
	}
	return p
}

// capture runs the coalescer against a pipe and returns each write.
func capture(t *testing.T, pkts [][]byte) [][]byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// Pipes keep write boundaries only up to PIPE_BUF; read with framing by
	// the IP total length instead.
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	var dev Device = &offloadDevice{file: w}
	c := dev.NewWriter()
	for _, p := range pkts {
		if err := c.WritePacket(p); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Buffered(); n < 1 || n > len(pkts) {
		t.Fatalf("Buffered = %d after %d packets", n, len(pkts))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := c.Buffered(); n != 0 {
		t.Fatalf("Buffered = %d after Flush", n)
	}
	w.Close()
	all := <-done
	var out [][]byte
	for len(all) > 0 {
		n := vnetHdrLen + int(binary.BigEndian.Uint16(all[vnetHdrLen+2:]))
		out = append(out, all[:n])
		all = all[n:]
	}
	return out
}

func TestCoalesceRun(t *testing.T) {
	const mss = 1448
	var pkts [][]byte
	seq := uint32(1000)
	for i := 0; i < 10; i++ {
		flags := byte(tcpFlagACK)
		size := mss
		if i == 9 {
			flags |= tcpFlagPSH
			size = 100
		}
		pkts = append(pkts, tcpSeg(seq, flags, size, 4000))
		seq += uint32(size)
	}
	out := capture(t, pkts)
	if len(out) != 1 {
		t.Fatalf("%d writes, want one super-packet", len(out))
	}
	h, p := out[0][:vnetHdrLen], out[0][vnetHdrLen:]
	if h[0] != vnetFNeedsCsum || h[1] != vnetGSOTCPv4 || binary.LittleEndian.Uint16(h[4:]) != mss ||
		binary.LittleEndian.Uint16(h[2:]) != 52 || binary.LittleEndian.Uint16(h[6:]) != 20 || binary.LittleEndian.Uint16(h[8:]) != 16 {
		t.Fatalf("virtio header % x", h)
	}
	if want := 52 + 9*mss + 100; len(p) != want || int(binary.BigEndian.Uint16(p[2:])) != want {
		t.Fatalf("super-packet %d bytes, want %d", len(p), want)
	}
	if foldChecksum(sum16(p[:20], 0)) != 0xffff {
		t.Fatal("IPv4 header checksum wrong")
	}
	if p[ipv4HdrLen+tcpFlagsOffset] != tcpFlagACK|tcpFlagPSH {
		t.Fatalf("flags %#x, want ACK|PSH from the last segment", p[ipv4HdrLen+tcpFlagsOffset])
	}
	// Payload bytes are the segments' payloads in order.
	off := 52
	s := uint32(1000)
	for i := 0; i < 10; i++ {
		size := mss
		if i == 9 {
			size = 100
		}
		if p[off] != byte(s) || p[off+size-1] != byte(s)+byte(size-1) {
			t.Fatalf("segment %d payload misplaced", i)
		}
		off += size
		s += uint32(size)
	}
}

func TestCoalesceBoundaries(t *testing.T) {
	const mss = 1000
	cases := []struct {
		name   string
		pkts   [][]byte
		writes int
	}{
		{"gap in sequence", [][]byte{tcpSeg(0, tcpFlagACK, mss, 1), tcpSeg(mss+1, tcpFlagACK, mss, 1)}, 2},
		{"other flow", [][]byte{tcpSeg(0, tcpFlagACK, mss, 1), tcpSeg(mss, tcpFlagACK, mss, 2)}, 2},
		{"PSH closes", [][]byte{tcpSeg(0, tcpFlagACK|tcpFlagPSH, mss, 1), tcpSeg(mss, tcpFlagACK, mss, 1)}, 2},
		{"SYN never merges", [][]byte{tcpSeg(0, 0x02, 0, 1), tcpSeg(1, tcpFlagACK, mss, 1)}, 2},
		{"pure ACKs", [][]byte{tcpSeg(0, tcpFlagACK, 0, 1), tcpSeg(0, tcpFlagACK, 0, 1)}, 2},
		{"bigger than the first", [][]byte{tcpSeg(0, tcpFlagACK, mss, 1), tcpSeg(mss, tcpFlagACK, mss+1, 1)}, 2},
		{"short ends the run", [][]byte{tcpSeg(0, tcpFlagACK, mss, 1), tcpSeg(mss, tcpFlagACK, 10, 1), tcpSeg(mss+10, tcpFlagACK, mss, 1)}, 2},
		{"three in a row", [][]byte{tcpSeg(0, tcpFlagACK, mss, 1), tcpSeg(mss, tcpFlagACK, mss, 1), tcpSeg(2*mss, tcpFlagACK, mss, 1)}, 1},
	}
	for _, c := range cases {
		out := capture(t, c.pkts)
		if len(out) != c.writes {
			t.Errorf("%s: %d writes, want %d", c.name, len(out), c.writes)
		}
		for _, w := range out {
			if binary.BigEndian.Uint16(w[vnetHdrLen+2:]) == uint16(len(w)-vnetHdrLen) && w[0] == 0 && w[1] != 0 {
				t.Errorf("%s: GSO type without NEEDS_CSUM", c.name)
			}
		}
	}
	// 64 KiB is the most one super-packet holds.
	var big [][]byte
	for i := 0; i < 100; i++ {
		big = append(big, tcpSeg(uint32(i*1448), tcpFlagACK, 1448, 1))
	}
	for _, w := range capture(t, big) {
		if len(w)-vnetHdrLen > maxSuperPacket {
			t.Fatalf("super-packet of %d bytes", len(w)-vnetHdrLen)
		}
	}
}

// BenchmarkCoalesce: the offload backend's write path, through the Device
// interface as the data plane and the client use it, to /dev/null instead
// of a TUN (the same code up to the write(2)). One op is a run of 44
// segments of a flow merged into one super-packet.
func BenchmarkCoalesce(b *testing.B) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var pkts [][]byte
	for i := 0; i < 44; i++ {
		pkts = append(pkts, tcpSeg(uint32(i*1448), tcpFlagACK, 1448, 1))
	}
	var dev Device = &offloadDevice{file: f}
	w := dev.NewWriter()
	b.SetBytes(44 * 1448)
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range pkts {
			if err := w.WritePacket(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}
