package dataplane_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The forwarding benchmarks run the production path end to end for each
// TUN backend: a real TUN in a fresh network namespace (so they need root),
// the data plane's own loops and send queue, and a lab client on loopback
// TCP in the same namespace. The kernel is the other side of the TUN: it
// sends the packets the data plane reads, and takes (and drops: the
// namespace does not forward) the packets it writes.

const (
	benchGW      = "13.8.0.1"
	benchPktLen  = 1400 // IPv4 packet bytes, per op
	benchTUNName = "fo6bench0"
)

// benchEnv is a data plane on a real TUN with one leased client.
type benchEnv struct {
	dp     *dataplane.Dataplane
	ns     netns.NsHandle
	netDev *os.File // /proc/net/dev of ns, read without allocating
	buf    []byte
	client net.Conn
	me     netip.Addr   // the client's leased address
	udp    *net.UDPConn // in ns, to me port 9: the kernel's traffic for the client
	got    atomic.Int64 // 103s the client read for port 9
	probed atomic.Bool  // a 103 for port 7 (a probe) reached the client
}

const benchPort, probePort = 9, 7

func startBench(b *testing.B, backend tun.Backend) *benchEnv {
	b.Helper()
	env := &benchEnv{}
	var dev tun.Device
	var ln net.Listener
	env.ns = netnstest.Do(b, func(netns.NsHandle) {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			b.Errorf("loopback up: %v", err)
			return
		}
		if dev, err = tun.Open(tun.Config{Name: benchTUNName, Backend: backend, MTU: 1500}); err != nil {
			b.Errorf("open TUN: %v", err)
			return
		}
		if err := netcfg.Configure(netcfg.LinkConfig{Name: dev.Name(), MTU: 1500, Addr: netip.MustParsePrefix(benchGW + "/24")}); err != nil {
			b.Errorf("configure TUN: %v", err)
			return
		}
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			b.Errorf("listen: %v", err)
			return
		}
		if env.client, err = net.Dial("tcp", ln.Addr().String()); err != nil {
			b.Errorf("dial: %v", err)
			return
		}
		// Opened here, the file shows this namespace's interfaces.
		if env.netDev, err = os.Open("/proc/thread-self/net/dev"); err != nil {
			b.Errorf("open /proc/net/dev: %v", err)
		}
	})
	if b.Failed() {
		b.FailNow()
	}
	env.buf = make([]byte, 64<<10)
	dp, err := dataplane.New(dataplane.Config{
		ID: "bench", Listener: ln, TUN: dev, ControlPlane: dataplanetest.NewMemController(253),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ReportInterval: time.Hour,
		// Room for toClientWindow packets, however long they wait: this
		// measures forwarding, not the queue's bounds.
		SendQueueBytes: 1 << 20, SendQueueDelay: time.Minute, SendQueueTarget: time.Minute,
	})
	if err != nil {
		b.Fatal(err)
	}
	env.dp = dp
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { dp.Run(ctx); close(done) }()
	b.Cleanup(func() {
		env.client.Close()
		cancel()
		<-done
		env.netDev.Close()
	})

	env.client.Write(wire.AddrRequest[:])
	dec := wire.NewDecoder(env.client, 0)
	env.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := dec.Next()
	if err != nil || m.Type != wire.TypeAddrResponse {
		b.Fatalf("no 101: %v %v", m.Type, err)
	}
	env.client.SetReadDeadline(time.Time{})
	r, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		b.Fatal(err)
	}
	env.me = r.Addr
	// The client reads all along, as a lab client does.
	go env.read(dec)

	// The kernel's side: UDP to the client, in segments of one IPv4 packet
	// each, handed to the stack 44 at a time (UDP_SEGMENT): the offload
	// TUN gets them as one super-packet, water one by one.
	var probe *net.UDPConn
	netnstest.In(b, env.ns, func() {
		env.udp, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(env.me, benchPort)))
		if err == nil {
			probe, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(env.me, probePort)))
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer probe.Close()
	b.Cleanup(func() { env.udp.Close() })
	rc, err := env.udp.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, benchPktLen-28)
	})
	if serr != nil {
		b.Fatalf("UDP_SEGMENT: %v", serr)
	}
	// The route to the client is in place once a probe comes back.
	payload := make([]byte, benchPktLen-28)
	for i := 0; !env.probed.Load(); i++ {
		if i == 1000 {
			b.Fatal("no 103 for a probe: the route to the client never came")
		}
		probe.Write(payload)
		time.Sleep(5 * time.Millisecond)
	}
	return env
}

// read counts the 103s for benchPort until the connection closes.
func (env *benchEnv) read(dec *wire.Decoder) {
	for {
		m, err := dec.Next()
		if err != nil {
			return
		}
		if m.Type != wire.TypeNetResponse || len(m.Data) < 28 {
			continue
		}
		switch binary.BigEndian.Uint16(m.Data[22:]) {
		case benchPort:
			env.got.Add(1)
		case probePort:
			env.probed.Store(true)
		}
	}
}

// backends runs fn as one sub-benchmark per TUN backend; every round has
// its own namespace and data plane (set up before the timer starts).
func backends(b *testing.B, fn func(b *testing.B, env *benchEnv)) {
	for _, backend := range tun.Backends() {
		b.Run(string(backend), func(b *testing.B) { fn(b, startBench(b, backend)) })
	}
}

// BenchmarkForwardToClient: packets the kernel routes into the TUN, read
// by the data plane (water: one per read; offload: super-packets split),
// routed, framed as 103 and written to the client's TCP connection by its
// send queue. One op is one packet.
func BenchmarkForwardToClient(b *testing.B) {
	backends(b, func(b *testing.B, env *benchEnv) {
		payload := make([]byte, toClientChunk*(benchPktLen-28))
		env.toClient(b, payload, warmUp) // pools, buffers and goroutines in place
		b.SetBytes(benchPktLen)
		b.ReportAllocs()
		b.ResetTimer()
		env.toClient(b, payload, b.N)
		b.StopTimer()
	})
}

// warmUp packets go through a path before it is measured: what a steady
// flow does not allocate (pooled buffers, a session's grown read buffer)
// is then in place even in a one-op run.
const warmUp = 2000

const (
	toClientChunk  = 44  // UDP segments per send
	toClientWindow = 256 // packets in flight at most: the TUN's queue holds 500
)

// toClient has the kernel send n packets to the client and waits until the
// client has read them all.
func (env *benchEnv) toClient(b *testing.B, payload []byte, n int) {
	start := env.got.Load()
	for sent := 0; sent < n; {
		for int64(sent)-(env.got.Load()-start) > toClientWindow-toClientChunk {
			time.Sleep(20 * time.Microsecond)
		}
		k := min(toClientChunk, n-sent)
		if _, err := env.udp.Write(payload[:k*(benchPktLen-28)]); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	for deadline := time.Now().Add(30 * time.Second); env.got.Load()-start < int64(n); {
		if time.Now().After(deadline) {
			b.Fatalf("client got %d of %d packets", env.got.Load()-start, n)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// tcpRun is a run of TCP segments of one flow from src, as a peer's kernel
// sends them (ACK set, consecutive sequence numbers), framed as 102s.
type tcpRun struct {
	msgs []byte
	seq  uint32
}

const (
	tcpHdrs    = 40 // IPv4 + TCP headers of benchPktLen packets
	tcpPayload = benchPktLen - tcpHdrs
	msgLen     = wire.HeaderLen + benchPktLen
)

func newTCPRun(src netip.Addr, n int) *tcpRun {
	p := make([]byte, benchPktLen)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], benchPktLen)
	p[6] = 0x40 // DF
	p[8], p[9] = 64, 6
	s4, d4 := src.As4(), netip.MustParseAddr("198.51.100.9").As4() // not forwarded: the kernel drops it
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], packet.Checksum(p[:20]))
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 5201)
	binary.BigEndian.PutUint32(t[8:], 1)
	t[12] = 5 << 4
	t[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(t[14:], 1000)
	r := &tcpRun{}
	for range n {
		r.msgs = wire.AppendMsg(r.msgs, wire.TypeNetRequest, p)
	}
	return r
}

// next numbers the first n segments on from the last run and returns them.
func (r *tcpRun) next(n int) []byte {
	for i := range n {
		binary.BigEndian.PutUint32(r.msgs[i*msgLen+wire.HeaderLen+20+4:], r.seq)
		r.seq += tcpPayload
	}
	return r.msgs[:n*msgLen]
}

// tunPayload is what the TUN has taken so far: the bytes written to it
// beyond one set of headers per write (a coalesced super-packet carries
// many segments' payloads behind one).
func (env *benchEnv) tunPayload(b *testing.B) int64 {
	n, writes := env.tunCounters(b)
	return n - writes*tcpHdrs
}

// tunCounters returns the TUN's receive counters: the bytes and writes
// user space gave it.
func (env *benchEnv) tunCounters(b *testing.B) (int64, int64) {
	n, err := env.netDev.ReadAt(env.buf, 0)
	if err != nil && err != io.EOF {
		b.Fatal(err)
	}
	line := env.buf[:n]
	i := bytes.Index(line, []byte(benchTUNName+":"))
	if i < 0 {
		b.Fatalf("%s not in /proc/net/dev", benchTUNName)
	}
	line = line[i+len(benchTUNName)+1:]
	var f [2]int64 // receive bytes, packets
	for k := range f {
		for len(line) > 0 && line[0] == ' ' {
			line = line[1:]
		}
		for len(line) > 0 && line[0] >= '0' && line[0] <= '9' {
			f[k] = 10*f[k] + int64(line[0]-'0')
			line = line[1:]
		}
	}
	return f[0], f[1]
}

// BenchmarkForwardFromClient: 102s read from the client's TCP connection,
// decoded, checked and handed to the backend's TUN writer (water: one
// write per packet; offload: segments of the flow merged into
// super-packets). One op is one packet.
func BenchmarkForwardFromClient(b *testing.B) {
	backends(b, func(b *testing.B, env *benchEnv) {
		run := newTCPRun(env.me, fromClientBatch)
		env.fromClient(b, run, warmUp)
		_, writes0 := env.tunCounters(b)
		b.SetBytes(benchPktLen)
		b.ReportAllocs()
		b.ResetTimer()
		env.fromClient(b, run, b.N)
		b.StopTimer()
		// How much the backend merged: 1 for water, far less with offload.
		_, writes := env.tunCounters(b)
		b.ReportMetric(float64(writes-writes0)/float64(b.N), "tun-writes/op")
	})
}

const fromClientBatch = 64 // 102s per write of the client

// fromClient sends n segments as 102s and waits until the TUN has taken
// every payload byte.
func (env *benchEnv) fromClient(b *testing.B, run *tcpRun, n int) {
	start := env.tunPayload(b)
	for sent := 0; sent < n; sent += fromClientBatch {
		if _, err := env.client.Write(run.next(min(fromClientBatch, n-sent))); err != nil {
			b.Fatal(err)
		}
	}
	// Polls back off, so that their own cost stays out of the numbers.
	want := int64(n) * tcpPayload
	wait := 100 * time.Microsecond
	for deadline := time.Now().Add(30 * time.Second); env.tunPayload(b)-start < want; wait = min(2*wait, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("TUN took %d of %d payload bytes", env.tunPayload(b)-start, want)
		}
		time.Sleep(wait)
	}
	if got := env.tunPayload(b) - start; got != want {
		b.Fatalf("TUN took %d payload bytes, want %d", got, want)
	}
}
