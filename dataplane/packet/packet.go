// Package packet holds the checks applied to IPv4 packets crossing the
// tunnel: is it well-formed IPv4, and what are its addresses. It reads
// headers in place and never allocates.
package packet

import (
	"encoding/binary"
	"net/netip"
)

// Problem says why a packet is not acceptable IPv4.
type Problem uint8

// Problems, in the order they are checked.
const (
	OK           Problem = iota
	TooShort             // shorter than a minimal IPv4 header
	NotIPv4              // version field is not 4
	BadHeaderLen         // IHL < 5 or header longer than the packet
	BadTotalLen          // total length < header length or > bytes present
	NumProblems
)

var problemNames = [...]string{
	OK:           "ok",
	TooShort:     "too_short",
	NotIPv4:      "not_ipv4",
	BadHeaderLen: "bad_header_len",
	BadTotalLen:  "bad_total_len",
}

func (p Problem) String() string {
	if int(p) < len(problemNames) {
		return problemNames[p]
	}
	return "unknown"
}

// MinHeaderLen is the size of an IPv4 header without options.
const MinHeaderLen = 20

// CheckIPv4 validates the IPv4 header of p and returns the packet's length
// according to its total-length field (bytes after it are padding and must
// not be forwarded).
func CheckIPv4(p []byte) (int, Problem) {
	if len(p) < MinHeaderLen {
		return 0, TooShort
	}
	if p[0]>>4 != 4 {
		return 0, NotIPv4
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < MinHeaderLen || ihl > len(p) {
		return 0, BadHeaderLen
	}
	total := int(binary.BigEndian.Uint16(p[2:4]))
	if total < ihl || total > len(p) {
		return 0, BadTotalLen
	}
	return total, OK
}

// Src returns the source address of a packet that passed CheckIPv4.
func Src(p []byte) netip.Addr { return netip.AddrFrom4([4]byte(p[12:16])) }

// Dst returns the destination address of a packet that passed CheckIPv4.
func Dst(p []byte) netip.Addr { return netip.AddrFrom4([4]byte(p[16:20])) }

// Src4 and Dst4 return the addresses as big-endian integers, the cheapest
// form for a map key.
func Src4(p []byte) uint32 { return binary.BigEndian.Uint32(p[12:16]) }

// Dst4 returns the destination address as a big-endian integer.
func Dst4(p []byte) uint32 { return binary.BigEndian.Uint32(p[16:20]) }

// Addr4 converts an IPv4 netip.Addr to the integer form of Src4 and Dst4.
func Addr4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// IP protocol numbers (the header's protocol field) the data plane looks at.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Protocol returns the protocol field of a packet that passed CheckIPv4.
func Protocol(p []byte) uint8 { return p[9] }

// LaterFragment reports whether a packet that passed CheckIPv4 is a
// fragment other than the first (its fragment offset is not 0): it carries
// no transport header of its own.
func LaterFragment(p []byte) bool { return binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 }

// Transport returns what follows the IPv4 header (options included) of a
// packet that passed CheckIPv4 and was cut to its total length: the
// transport header and payload, possibly shorter than a transport header.
func Transport(p []byte) []byte { return p[int(p[0]&0x0f)*4:] }

// Version returns the IP version nibble, or 0 for an empty packet.
func Version(p []byte) int {
	if len(p) == 0 {
		return 0
	}
	return int(p[0] >> 4)
}

// Checksum computes the Internet checksum of b (RFC 1071).
func Checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// BuildUDP builds an IPv4 UDP datagram from src:srcPort to dst:dstPort
// carrying payload, without a UDP checksum (0: none, as UDP over IPv4
// allows). Used by tests and tools; not on the forwarding path.
func BuildUDP(src, dst netip.Addr, srcPort, dstPort uint16, payload []byte) []byte {
	total := MinHeaderLen + 8 + len(payload)
	p := make([]byte, total)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(total))
	p[8], p[9] = 64, ProtoUDP
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], Checksum(p[:MinHeaderLen]))
	udp := p[MinHeaderLen:]
	binary.BigEndian.PutUint16(udp[0:], srcPort)
	binary.BigEndian.PutUint16(udp[2:], dstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	return p
}

// BuildICMPEcho builds an IPv4 ICMP echo request (or reply when reply is
// true) from src to dst with the given id, sequence and payload. Used by
// tests, tools and health checks; not on the forwarding path.
func BuildICMPEcho(src, dst netip.Addr, id, seq uint16, payload []byte, reply bool) []byte {
	total := MinHeaderLen + 8 + len(payload)
	p := make([]byte, total)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(total))
	binary.BigEndian.PutUint16(p[4:], id)
	p[8] = 64 // TTL
	p[9] = 1  // ICMP
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], Checksum(p[:MinHeaderLen]))
	icmp := p[MinHeaderLen:]
	if !reply {
		icmp[0] = 8
	}
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:], Checksum(icmp))
	return p
}
