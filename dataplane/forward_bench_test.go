package dataplane_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// benchTUN hands out one prepared packet per Read, as fast as asked, and
// counts what is written to it, without allocating: the forwarding loops'
// own allocations are what the benchmarks measure.
type benchTUN struct {
	pkt     []byte
	feed    chan int // packets to hand out
	written atomic.Int64
	closed  chan struct{}
	once    sync.Once
}

func newBenchTUN(pkt []byte) *benchTUN {
	return &benchTUN{pkt: pkt, feed: make(chan int, 1), closed: make(chan struct{})}
}

func (d *benchTUN) Name() string       { return "bench0" }
func (d *benchTUN) BatchSize() int     { return 64 }
func (d *benchTUN) WriteHeadroom() int { return 0 }
func (d *benchTUN) Close() error       { d.once.Do(func() { close(d.closed) }); return nil }

func (d *benchTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	var n int
	select {
	case n = <-d.feed:
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n = min(n, len(bufs))
	for i := range n {
		sizes[i] = copy(bufs[i][off:], d.pkt)
	}
	return n, nil
}

func (d *benchTUN) Write(bufs [][]byte, _ int) (int, error) {
	d.written.Add(int64(len(bufs)))
	return len(bufs), nil
}

func benchDataplane(b *testing.B, dev *benchTUN) (addr string, stop func()) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	dp, err := dataplane.New(dataplane.Config{
		ID: "bench", Listener: ln, TUN: dev, ControlPlane: dataplanetest.NewMemController(253),
		Pool:   dataplane.Assignment{Gateway: netip.MustParseAddr("13.8.0.1"), Pool: netip.MustParsePrefix("13.8.0.0/24")},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ReportInterval: time.Hour,
		SendQueueLen: 4096,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { dp.Run(ctx); close(done) }()
	return ln.Addr().String(), func() { cancel(); <-done }
}

func leaseConn(b *testing.B, addr string) (net.Conn, *wire.Decoder, netip.Addr) {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c.Write(wire.AddrRequest[:])
	dec := wire.NewDecoder(c, 0)
	m, err := dec.Next()
	if err != nil {
		b.Fatal(err)
	}
	r, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		b.Fatal(err)
	}
	return c, dec, r.Addr
}

// BenchmarkForwardToClient: packets read from the TUN, routed, framed as
// 103 and written to the client's TCP connection. One op is one packet.
func BenchmarkForwardToClient(b *testing.B) {
	gw := netip.MustParseAddr("13.8.0.1")
	dev := newBenchTUN(nil)
	addr, stop := benchDataplane(b, dev)
	defer stop()
	c, dec, me := leaseConn(b, addr)
	defer c.Close()
	dev.pkt = packet.BuildICMPEcho(gw, me, 1, 1, make([]byte, 1372), true)
	// Wait for the route: one packet must come back first.
	dev.feed <- 1
	if m, err := dec.Next(); err != nil || m.Type != wire.TypeNetResponse {
		b.Fatalf("first 103: %v %v", m.Type, err)
	}
	var received atomic.Int64
	got := make(chan int)
	go func() {
		n := 0
		for n < b.N {
			m, err := dec.Next()
			if err != nil {
				break
			}
			if m.Type == wire.TypeNetResponse {
				n++
				received.Store(int64(n))
			}
		}
		got <- n
	}()
	b.SetBytes(int64(len(dev.pkt)))
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		// Keep at most a window in flight, as TCP's own window would:
		// faster, and the queue would (rightly) drop.
		for int64(sent)-received.Load() > 2048 {
			time.Sleep(20 * time.Microsecond)
		}
		n := min(64, b.N-sent)
		dev.feed <- n
		sent += n
	}
	if n := <-got; n != b.N {
		b.Fatalf("client got %d of %d packets", n, b.N)
	}
}

// BenchmarkForwardFromClient: 102 messages read from the client's TCP
// connection, decoded, checked and written to the TUN. One op is one packet.
func BenchmarkForwardFromClient(b *testing.B) {
	dev := newBenchTUN(nil)
	addr, stop := benchDataplane(b, dev)
	defer stop()
	c, _, me := leaseConn(b, addr)
	defer c.Close()
	pkt := packet.BuildICMPEcho(me, netip.MustParseAddr("13.8.0.1"), 1, 1, make([]byte, 1372), false)
	var batch []byte
	for range 64 {
		batch = wire.AppendMsg(batch, wire.TypeNetRequest, pkt)
	}
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; sent += 64 {
		n := min(64, b.N-sent)
		if _, err := c.Write(batch[:n*(wire.HeaderLen+len(pkt))]); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for dev.written.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("TUN got %d of %d packets", dev.written.Load(), b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
}
