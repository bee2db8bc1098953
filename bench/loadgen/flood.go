package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

const udpHeaderLen = 20 + 8 // IPv4 + UDP

// buildUDP returns an IPv4/UDP packet of size bytes from src to dst (the
// discard port), with a valid header checksum so the receiving kernel
// routes it (into the harness's black hole) rather than dropping it as
// corrupt. The UDP checksum is 0: optional over IPv4.
func buildUDP(src, dst netip.Addr, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	binary.BigEndian.PutUint16(p[6:], 0x4000) // don't fragment
	p[8], p[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], packet.Checksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], 9)
	binary.BigEndian.PutUint16(p[22:], 9)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	return p
}

// flood makes every client send 102s toward -flood-dst as fast as its TCP
// connection takes them, for -flood: a greedy client whose packets no
// congestion control inside the tunnel slows down. Frames go out in
// batches of 64 per write, so the sender's system calls are not what
// limits the rate.
func flood(ctx context.Context, c config, log *slog.Logger, clients []*client, st *stats, emit func(event)) error {
	var sent atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	emit(event{Event: "flooding", N: len(clients), Connected: len(clients)})
	log.Info("flooding", "clients", len(clients), "dst", c.floodDst, "size", c.floodSize, "duration", c.flood)
	start := time.Now()
	end := start.Add(c.flood)
	frameLen := wire.HeaderLen + c.floodSize
	for _, cl := range clients {
		batch := bytes.Repeat(wire.AppendMsg(nil, wire.TypeNetRequest, buildUDP(cl.addr, c.floodDst, c.floodSize)), 64)
		wg.Go(func() {
			cl.conn.SetWriteDeadline(end)
			for time.Now().Before(end) && ctx.Err() == nil {
				n, err := cl.conn.Write(batch)
				sent.Add(int64(n))
				if err != nil {
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						st.writeErrors.Add(1)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	e := event{Event: "flood_done", N: len(clients), Connected: len(clients), FloodBytes: sent.Load(),
		FloodFrames: sent.Load() / int64(frameLen), FloodSeconds: secs, Dropped: st.dropped.Load()}
	if firstErr != nil {
		e.Error = firstErr.Error()
	}
	emit(e)
	log.Info("flood over", "bytes", e.FloodBytes, "seconds", secs, "gbps", float64(e.FloodBytes)*8/secs/1e9, "err", firstErr)
	return ctx.Err()
}
