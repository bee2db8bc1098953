package tun

import (
	"encoding/binary"
	"os"
	"sync"
)

// The offload backend writes through its own coalescer rather than
// wireguard-go's GRO: packets arrive from a tunnel peer in runs of one flow
// (the peer's kernel handed them over as one super-packet), so merging each
// packet into the previous one when it continues the same TCP flow catches
// nearly everything with one copy per byte, and the merged packet goes to
// the kernel as CHECKSUM_PARTIAL: nobody sums its payload in user space
// (the kernel treats it like a locally built super-packet). A peer could
// thereby pass a segment with a wrong checksum into its own TCP flow, which
// it could corrupt at will anyway; packets that are not merged keep their
// checksums and the kernel verifies them as usual.

// virtio_net_hdr, little-endian as the kernel's TUN expects by default.
const (
	vnetHdrLen       = 10
	vnetFNeedsCsum   = 1
	vnetGSONone      = 0
	vnetGSOTCPv4     = 1
	maxSuperPacket   = 65535
	ipv4HdrLen       = 20
	tcpFlagsOffset   = 13
	tcpFlagACK       = 0x10
	tcpFlagPSH       = 0x08
	tcpChecksumField = 16
)

var superBufs = sync.Pool{New: func() any { b := make([]byte, vnetHdrLen+maxSuperPacket); return &b }}

// coalescer is the offload backend's Writer: it builds one super-packet at
// a time and writes it to f. One goroutine's.
type coalescer struct {
	f   *os.File
	buf *[]byte // vnet header + packet under construction
	n   int     // bytes of packet in (*buf)[vnetHdrLen:]
	// Set while the packet under construction can take more segments.
	open    bool
	hdrLen  int    // IPv4 + TCP header length
	mss     int    // payload size of the first segment
	nextSeq uint32 // sequence number the next segment must carry
	merged  int    // segments merged into the first
}

func (c *coalescer) pkt() []byte { return (*c.buf)[vnetHdrLen : vnetHdrLen+c.n] }

// WritePacket merges p into the packet under construction or, writing that
// one first, starts a new one with it.
func (c *coalescer) WritePacket(p []byte) error {
	if c.buf != nil && c.open && c.canMerge(p) {
		c.merge(p)
		return nil
	}
	if err := c.write(); err != nil {
		return err
	}
	if c.buf == nil {
		c.buf = superBufs.Get().(*[]byte)
	}
	c.n = copy((*c.buf)[vnetHdrLen:], p)
	c.merged = 0
	c.open = false
	if hl, ok := tcpSegment(p); ok {
		flags := p[ipv4HdrLen+tcpFlagsOffset]
		payload := len(p) - hl
		if flags == tcpFlagACK && payload > 0 {
			c.open, c.hdrLen, c.mss = true, hl, payload
			c.nextSeq = binary.BigEndian.Uint32(p[ipv4HdrLen+4:]) + uint32(payload)
		}
	}
	return nil
}

// tcpSegment reports whether p is an IPv4 TCP segment without IP options
// or fragmentation that may be merged, and its header length.
func tcpSegment(p []byte) (int, bool) {
	if len(p) < ipv4HdrLen+20 || p[0] != 0x45 || p[9] != 6 {
		return 0, false
	}
	if binary.BigEndian.Uint16(p[6:])&0x3fff != 0 { // MF or a fragment offset
		return 0, false
	}
	if int(binary.BigEndian.Uint16(p[2:])) != len(p) {
		return 0, false
	}
	thl := int(p[ipv4HdrLen+12]>>4) * 4
	if thl < 20 || ipv4HdrLen+thl > len(p) {
		return 0, false
	}
	return ipv4HdrLen + thl, true
}

// canMerge: p continues the flow of the packet under construction, with
// identical headers but for IP id, length and checksum, TCP sequence number,
// checksum and a closing PSH, and fits.
func (c *coalescer) canMerge(p []byte) bool {
	head := c.pkt()
	hl, ok := tcpSegment(p)
	if !ok || hl != c.hdrLen {
		return false
	}
	payload := len(p) - hl
	if payload <= 0 || payload > c.mss || c.n+payload > maxSuperPacket {
		return false
	}
	flags := p[ipv4HdrLen+tcpFlagsOffset]
	if flags&^tcpFlagPSH != tcpFlagACK {
		return false
	}
	if binary.BigEndian.Uint32(p[ipv4HdrLen+4:]) != c.nextSeq {
		return false
	}
	// IP: version/IHL/TOS (0-1), flags (6), TTL/protocol (8-9), addresses (12-19).
	if head[1] != p[1] || head[6] != p[6] || head[8] != p[8] || string(head[12:20]) != string(p[12:20]) {
		return false
	}
	// TCP: ports (0-3), ack (8-11), data offset (12), window (14-15),
	// urgent pointer and options (18-hl).
	th, tp := head[ipv4HdrLen:c.hdrLen], p[ipv4HdrLen:hl]
	return string(th[0:4]) == string(tp[0:4]) && string(th[8:13]) == string(tp[8:13]) &&
		string(th[14:16]) == string(tp[14:16]) && string(th[18:]) == string(tp[18:])
}

func (c *coalescer) merge(p []byte) {
	payload := p[c.hdrLen:]
	copy((*c.buf)[vnetHdrLen+c.n:], payload)
	c.n += len(payload)
	c.merged++
	c.nextSeq += uint32(len(payload))
	if p[ipv4HdrLen+tcpFlagsOffset]&tcpFlagPSH != 0 {
		(*c.buf)[vnetHdrLen+ipv4HdrLen+tcpFlagsOffset] |= tcpFlagPSH
		c.open = false // PSH ends a run, as in the kernel's GRO
	}
	if len(payload) < c.mss {
		c.open = false // a short segment is the last of a run
	}
}

// Buffered is the number of packets in the one under construction.
func (c *coalescer) Buffered() int {
	if c.buf == nil || c.n == 0 {
		return 0
	}
	return c.merged + 1
}

// Flush writes the packet under construction and gives its buffer back to
// the pool.
func (c *coalescer) Flush() error {
	err := c.write()
	c.release()
	return err
}

// write writes the packet under construction, if any.
func (c *coalescer) write() error {
	if c.buf == nil || c.n == 0 {
		return nil
	}
	h := (*c.buf)[:vnetHdrLen]
	clear(h)
	p := c.pkt()
	if c.merged > 0 {
		binary.BigEndian.PutUint16(p[2:], uint16(c.n))
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], ^foldChecksum(sum16(p[:ipv4HdrLen], 0)))
		// CHECKSUM_PARTIAL: the TCP checksum field holds the pseudo-header
		// sum, the kernel adds the rest when (if ever) it needs to.
		ps := sum16(p[12:20], uint64(6)+uint64(c.n-ipv4HdrLen))
		binary.BigEndian.PutUint16(p[ipv4HdrLen+tcpChecksumField:], foldChecksum(ps))
		h[0] = vnetFNeedsCsum
		h[1] = vnetGSOTCPv4
		binary.LittleEndian.PutUint16(h[2:], uint16(c.hdrLen))
		binary.LittleEndian.PutUint16(h[4:], uint16(c.mss))
		binary.LittleEndian.PutUint16(h[6:], ipv4HdrLen)
		binary.LittleEndian.PutUint16(h[8:], tcpChecksumField)
	}
	_, err := c.f.Write((*c.buf)[:vnetHdrLen+c.n])
	c.n, c.merged, c.open = 0, 0, false
	return err
}

// release returns the buffer to the pool.
func (c *coalescer) release() {
	if c.buf != nil {
		superBufs.Put(c.buf)
		c.buf = nil
	}
}

// sum16 adds b as big-endian 16-bit words to initial (no folding).
func sum16(b []byte, initial uint64) uint64 {
	s := initial
	for len(b) >= 8 {
		s += uint64(binary.BigEndian.Uint16(b)) + uint64(binary.BigEndian.Uint16(b[2:])) +
			uint64(binary.BigEndian.Uint16(b[4:])) + uint64(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

func foldChecksum(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
