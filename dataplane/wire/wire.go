// Package wire implements the 4over6 lab framing (see PROTOCOL.md):
//
//	offset 0: uint32 length, little-endian, counting the 5-byte header
//	offset 4: uint8  type
//	offset 5: length-5 bytes of data
//
// It is shared by the data plane and the client. The decoder reassembles
// messages from a byte stream without allocating per message; the encoder
// writes headers in place so a packet read into a buffer with HeaderLen bytes
// of headroom is framed without a copy.
package wire

import (
	"encoding/binary"
	"fmt"
)

// Type is a message type.
type Type uint8

// Message types of the lab protocol.
const (
	TypeAddrRequest  Type = 100 // client -> server, no data: "give me an address"
	TypeAddrResponse Type = 101 // server -> client, "IP ROUTE DNS1 DNS2 DNS3 "
	TypeNetRequest   Type = 102 // client -> server, one IPv4 packet
	TypeNetResponse  Type = 103 // server -> client, one IPv4 packet
	TypeKeepalive    Type = 104 // both ways, no data
)

func (t Type) String() string {
	switch t {
	case TypeAddrRequest:
		return "addr-request(100)"
	case TypeAddrResponse:
		return "addr-response(101)"
	case TypeNetRequest:
		return "net-request(102)"
	case TypeNetResponse:
		return "net-response(103)"
	case TypeKeepalive:
		return "keepalive(104)"
	}
	return fmt.Sprintf("unknown(%d)", uint8(t))
}

const (
	// HeaderLen is the size of the length and type fields.
	HeaderLen = 5
	// MaxDataLen is the size of the C struct's data array.
	MaxDataLen = 4096
	// MaxMsgLen is the largest valid length field.
	MaxMsgLen = HeaderLen + MaxDataLen
)

// PutHeader writes a header for a message of type t carrying dataLen bytes
// into b[0:HeaderLen]. It panics if b is shorter than HeaderLen, like any
// slice index; dataLen is the caller's own buffer size and not network input.
func PutHeader(b []byte, t Type, dataLen int) {
	binary.LittleEndian.PutUint32(b[:4], uint32(HeaderLen+dataLen))
	b[4] = byte(t)
}

// AppendMsg appends a whole message to dst.
func AppendMsg(dst []byte, t Type, data []byte) []byte {
	var h [HeaderLen]byte
	PutHeader(h[:], t, len(data))
	dst = append(dst, h[:]...)
	return append(dst, data...)
}

// Keepalive and AddrRequest are the two header-only messages, ready to send.
var (
	Keepalive   = [HeaderLen]byte{5, 0, 0, 0, byte(TypeKeepalive)}
	AddrRequest = [HeaderLen]byte{5, 0, 0, 0, byte(TypeAddrRequest)}
)
