package sendq

import (
	"sync"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// BufSize fits the largest message of the protocol, header included.
const BufSize = wire.MaxMsgLen

// Kind says what a message is to the counters (and, later, to whatever
// looks at what a client is sent).
type Kind uint8

// Kinds of message.
const (
	// Control messages (101, 104) are not traffic: they are not counted.
	Control Kind = iota
	// Data messages (103) carry an IPv4 packet after the 5-byte header: a
	// Data message counts as one packet of N-5 bytes to the client, once
	// its last byte is written.
	Data
)

// Buf is one framed message on its way to a client. Buffers cycle through a
// sync.Pool: the TUN reader takes one, reads a packet at offset
// wire.HeaderLen, writes the 103 header in front and hands it to a session;
// the queue puts it back once its last byte is written (or when it is
// dropped). No allocation per packet in steady state.
//
// A Buf has one owner at a time: whoever holds it until it is handed to
// Queue.Send, the queue after.
type Buf struct {
	B    []byte // len BufSize
	N    int    // message bytes in B[:N]
	Kind Kind   // set by whoever queues it; Control when taken from the pool

	off    int   // bytes of the message already written (the queue's)
	static bool  // shared, read-only message (a keepalive): never pooled, never written to, never queued itself
	at     int64 // when it was sent (the queue's clock)
	next   *Buf  // in its flow (the queue's)
}

var pool = sync.Pool{New: func() any { return &Buf{B: make([]byte, BufSize)} }}

// Get takes a buffer from the pool.
func Get() *Buf { return pool.Get().(*Buf) }

// Put returns a buffer to the pool. Static buffers stay where they are.
func Put(b *Buf) {
	if b == nil || b.static {
		return
	}
	b.N, b.off, b.Kind, b.at, b.next = 0, 0, Control, 0, nil
	pool.Put(b)
}

// Static returns a read-only message that many queues may hold at once
// (every leased client's keepalive is the same five bytes). Its Kind is
// fixed at Control and nothing ever writes to it: a queue that writes only
// part of it goes on with a private copy of the rest.
func Static(msg []byte) *Buf {
	return &Buf{B: msg, N: len(msg), static: true}
}

// Message returns the framed bytes not yet written.
func (b *Buf) Message() []byte { return b.B[b.off:b.N] }
