package session

import (
	"sync"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// BufSize fits the largest message of the protocol, header included.
const BufSize = wire.MaxMsgLen

// Buf is one framed message on its way to a client. Buffers cycle through a
// sync.Pool: the TUN reader takes one, reads a packet at offset
// wire.HeaderLen, writes the 103 header in front and hands it to a session;
// the session's writer puts it back after the write. No allocation per
// packet in steady state.
type Buf struct {
	B      []byte // len BufSize
	N      int    // message bytes in B[:N]
	Off    int    // bytes of the message already written
	static bool   // shared, read-only message (keepalive): never pooled
}

var pool = sync.Pool{New: func() any { return &Buf{B: make([]byte, BufSize)} }}

// GetBuf takes a buffer from the pool.
func GetBuf() *Buf { return pool.Get().(*Buf) }

// PutBuf returns a buffer to the pool.
func PutBuf(b *Buf) {
	if b == nil || b.static {
		return
	}
	b.N, b.Off = 0, 0
	pool.Put(b)
}

// Message returns the framed bytes.
func (b *Buf) Message() []byte { return b.B[b.Off:b.N] }

var keepaliveBuf = &Buf{B: wire.Keepalive[:], N: wire.HeaderLen, static: true}
