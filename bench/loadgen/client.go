package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
)

// stats are shared by every client; the phase events carry a snapshot.
type stats struct {
	echoSent       atomic.Uint64
	echoReceived   atomic.Uint64
	keepaliveSent  atomic.Uint64
	keepaliveRecvd atomic.Uint64
	otherRecvd     atomic.Uint64
	writeErrors    atomic.Uint64
	dropped        atomic.Int64 // connections lost after their 101
	closing        atomic.Bool  // set before we close connections ourselves
}

// client is one lab-protocol connection holding a lease.
type client struct {
	id     int
	conn   net.Conn
	addr   netip.Addr // leased IPv4 address
	dead   atomic.Bool
	seq    uint16
	onLoss func(*client) // called once if the server ends the connection; may be nil
}

// connect dials (up to attempts times), sends a 100 and waits for the 101.
// On success the connection stays with a reader goroutine that consumes
// everything the server sends for as long as it lives, and calls onLoss
// (if not nil) when the server ends it.
func connect(ctx context.Context, c config, id int, st *stats, attempts int, onLoss func(*client)) (*client, error) {
	var conn net.Conn
	var err error
	var d net.Dialer
	for attempt := 1; ; attempt++ {
		conn, err = d.DialContext(ctx, "tcp6", c.server)
		if err == nil || attempt >= attempts || ctx.Err() != nil {
			break
		}
		// A refused or reset SYN under a burst is worth one more try,
		// like a real client's reconnect; persistent failure is counted.
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(wire.AddrRequest[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send 100: %w", err)
	}
	// The smallest buffer the decoder takes: the lease holders receive
	// only keepalives and a few echo replies, and 10,000 of them share
	// the machine with the server being measured.
	dec := wire.NewDecoder(conn, wire.MaxMsgLen)
	for {
		m, err := dec.Next()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("waiting for 101: %w", err)
		}
		switch m.Type {
		case wire.TypeKeepalive:
			st.keepaliveRecvd.Add(1) // 104 may come first
			continue
		case wire.TypeAddrResponse:
		default:
			conn.Close()
			return nil, fmt.Errorf("got %v before the 101", m.Type)
		}
		r, err := wire.ParseAddrResponse(m.Data)
		if err != nil {
			conn.Close()
			return nil, err
		}
		conn.SetDeadline(time.Time{})
		cl := &client{id: id, conn: conn, addr: r.Addr, onLoss: onLoss}
		go cl.read(dec, st)
		return cl, nil
	}
}

// read consumes the server's messages until the connection ends, counting
// keepalives and the echo replies addressed to this client.
func (cl *client) read(dec *wire.Decoder, st *stats) {
	for {
		m, err := dec.Next()
		if err != nil {
			// The connection is over: its descriptor goes now, not at
			// exit, so a storm's reconnections find room under the limit.
			cl.conn.Close()
			if !cl.dead.Swap(true) && !st.closing.Load() {
				st.dropped.Add(1)
				if cl.onLoss != nil {
					cl.onLoss(cl)
				}
			}
			return
		}
		switch m.Type {
		case wire.TypeKeepalive:
			st.keepaliveRecvd.Add(1)
		case wire.TypeNetResponse:
			if isEchoReply(m.Data, uint16(cl.id)) {
				st.echoReceived.Add(1)
			} else {
				st.otherRecvd.Add(1)
			}
		default:
			st.otherRecvd.Add(1)
		}
	}
}

// isEchoReply reports whether p is an IPv4 ICMP echo reply with this id.
func isEchoReply(p []byte, id uint16) bool {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != 1 {
		return false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl+8 {
		return false
	}
	icmp := p[ihl:]
	return icmp[0] == 0 && binary.BigEndian.Uint16(icmp[4:]) == id
}

// write sends one message; a client that cannot take 40 bytes within the
// deadline is counted, not waited for.
func (cl *client) write(b []byte, st *stats) bool {
	if cl.dead.Load() {
		return false
	}
	cl.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := cl.conn.Write(b); err != nil {
		st.writeErrors.Add(1)
		if !errors.Is(err, net.ErrClosed) && !cl.dead.Swap(true) && !st.closing.Load() {
			st.dropped.Add(1)
		}
		cl.conn.Close()
		return false
	}
	return true
}
