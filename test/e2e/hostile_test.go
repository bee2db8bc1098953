package e2e

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// pinger is a well-behaved lab client that pings the gateway through the
// tunnel every interval and counts echoes sent and answered.
type pinger struct {
	c          *labClient
	addr       netip.Addr
	sent, got  atomic.Int64
	lost       atomic.Int64 // replies that did not come within the deadline
	stop, done chan struct{}
}

func (e *env) startPinger(interval time.Duration) *pinger {
	e.t.Helper()
	c := e.dialLab()
	p := &pinger{c: c, addr: c.lease().Addr, stop: make(chan struct{}), done: make(chan struct{})}
	replies := make(chan uint16, 1024)
	go func() { // reader
		for {
			m, err := c.next(time.Minute)
			if err != nil {
				close(replies)
				return
			}
			if m.Type == wire.TypeNetResponse && len(m.Data) >= 28 && m.Data[20] == 0 {
				replies <- binary.BigEndian.Uint16(m.Data[26:28])
			}
		}
	}()
	go func() { // writer: one echo at a time, each must be answered
		defer close(p.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for seq := uint16(1); ; seq++ {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			msg := wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(p.addr, gw, 0x600d, seq, []byte("still here"), false))
			if _, err := c.conn.Write(msg); err != nil {
				p.lost.Add(1)
				return
			}
			p.sent.Add(1)
			deadline := time.After(5 * time.Second)
		wait:
			for {
				select {
				case r, ok := <-replies:
					if !ok {
						p.lost.Add(1)
						return
					}
					if r == seq {
						p.got.Add(1)
						break wait
					}
				case <-deadline:
					p.lost.Add(1)
					break wait
				}
			}
		}
	}()
	return p
}

// finish stops the pinger and fails the test unless every echo came back.
func (p *pinger) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	<-p.done
	if p.sent.Load() < 10 || p.lost.Load() != 0 || p.got.Load() != p.sent.Load() {
		t.Fatalf("the well-behaved client lost service: %d echoes sent, %d answered, %d lost", p.sent.Load(), p.got.Load(), p.lost.Load())
	}
	t.Logf("well-behaved client: %d of %d echoes answered", p.got.Load(), p.sent.Load())
}

type dpStatus struct {
	Sessions       int
	LeasedSessions int
	Drops          map[string]uint64
	Goroutines     int
	OpenFDs        int
	Refused        map[string]uint64
}

// dpStatus asks the data plane's gRPC API directly.
func (e *env) dpStatus() dpStatus {
	e.t.Helper()
	cc, err := grpc.NewClient("unix://"+e.dpSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := dpv1.NewDataplaneServiceClient(cc).GetStatus(ctx, &dpv1.GetStatusRequest{})
	if err != nil {
		e.t.Fatalf("data plane GetStatus: %v", err)
	}
	st := r.GetStatus()
	return dpStatus{
		Sessions: int(st.GetSessions()), LeasedSessions: int(st.GetLeasedSessions()),
		Drops: st.GetDrops(), Goroutines: int(st.GetGoroutines()), OpenFDs: int(st.GetOpenFds()),
		Refused: st.GetRefused(),
	}
}

// TestHostileClients throws every kind of malformed input at one data plane
// from many connections while a well-behaved client pings through it.
func TestHostileClients(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--keepalive-interval", "1s", "--keepalive-timeout", "3s", "--report-interval", "500ms"}})
	good := e.startPinger(20 * time.Millisecond)

	spoof := netip.MustParseAddr("13.8.0.99")
	echo := func(src netip.Addr) []byte { return packet.BuildICMPEcho(src, gw, 1, 1, nil, false) }
	withLease := func(c *labClient, f func(me netip.Addr) []byte) {
		me := c.lease().Addr
		c.write(f(me))
	}
	mod := func(me netip.Addr, f func(p []byte)) []byte {
		p := echo(me)
		f(p)
		return wire.AppendMsg(nil, wire.TypeNetRequest, p)
	}
	kinds := []struct {
		name string
		run  func(c *labClient)
	}{
		{"length above 4101", func(c *labClient) { c.write([]byte{0x06, 0x10, 0, 0, 102, 0, 0, 0}) }},
		{"negative length", func(c *labClient) { c.write([]byte{0xff, 0xff, 0xff, 0xff, 102}) }},
		{"102 before 100", func(c *labClient) { c.write(wire.AppendMsg(nil, wire.TypeNetRequest, echo(spoof))) }},
		{"spoofed source", func(c *labClient) {
			withLease(c, func(netip.Addr) []byte { return wire.AppendMsg(nil, wire.TypeNetRequest, echo(spoof)) })
		}},
		{"IPv6 packet in a 102", func(c *labClient) {
			withLease(c, func(me netip.Addr) []byte { return mod(me, func(p []byte) { p[0] = 0x60 }) })
		}},
		{"bad header length", func(c *labClient) {
			withLease(c, func(me netip.Addr) []byte { return mod(me, func(p []byte) { p[0] = 0x43 }) })
		}},
		{"bad total length", func(c *labClient) {
			withLease(c, func(me netip.Addr) []byte { return mod(me, func(p []byte) { p[2], p[3] = 0xff, 0xff }) })
		}},
		{"truncated packet", func(c *labClient) {
			withLease(c, func(me netip.Addr) []byte { return wire.AppendMsg(nil, wire.TypeNetRequest, echo(me)[:12]) })
		}},
		{"unknown types", func(c *labClient) {
			var b []byte
			for i := 0; i < 50; i++ {
				b = wire.AppendMsg(b, wire.Type(105+i), []byte("x"))
			}
			c.write(b)
		}},
		{"server-only types", func(c *labClient) {
			c.write(wire.AppendMsg(wire.AppendMsg(nil, wire.TypeAddrResponse, []byte("1.2.3.4 0.0.0.0 1.1.1.1 1.1.1.1 1.1.1.1 ")), wire.TypeNetResponse, echo(spoof)))
		}},
		{"random garbage", func(c *labClient) {
			b := make([]byte, 8192)
			rand.NewChaCha8([32]byte{9}).Read(b)
			c.write(b)
		}},
		{"half a frame, then silence", func(c *labClient) { c.write([]byte{0x40, 0x00, 0x00, 0x00, 102, 0x45}) }},
		{"silent connection", func(*labClient) {}},
		{"reset while traffic is in flight", func(c *labClient) {
			me := c.lease().Addr
			var b []byte
			for i := 0; i < 64; i++ {
				b = wire.AppendMsg(b, wire.TypeNetRequest, packet.BuildICMPEcho(me, gw, 2, uint16(i), make([]byte, 1000), false))
			}
			c.write(b)
			c.conn.(*net.TCPConn).SetLinger(0) // RST instead of FIN
			c.conn.Close()
		}},
	}
	var wg sync.WaitGroup
	for round := 0; round < 3; round++ { // several connections of each kind
		for _, k := range kinds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := e.dialLab()
				k.run(c)
			}()
		}
	}
	wg.Wait()
	// Every hostile connection is closed by the server: the frame errors at
	// once, the others by the 3s handshake/keepalive timeout.
	e.waitFor("hostile connections closed", func() bool {
		st := e.dpStatus()
		return st.Sessions == 1 && st.LeasedSessions == 1
	})
	good.finish(t)

	st := e.dpStatus()
	for _, reason := range []string{"frame_error", "data_before_lease", "spoofed_source", "ipv4_bad_version",
		"ipv4_bad_header_len", "ipv4_bad_total_len", "ipv4_too_short", "unknown_type", "unexpected_type"} {
		if st.Drops[reason] == 0 {
			t.Errorf("no %s drops counted: %v", reason, st.Drops)
		}
	}
	// Releases reach the controller after the sessions close: wait for them.
	e.waitFor("only the good client's lease left at the controller", func() bool { return e.pool().Leased == 1 })
	if cs := e.clients(); len(cs) != 1 || cs[0].IPv4 != good.addr.String() {
		t.Fatalf("client table: %+v", cs)
	}
}

// TestChurn: 1,000 connect / lease / disconnect cycles leave no lease, and
// the data plane's goroutines and open files return to where they were.
func TestChurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	// Warm up once so lazily started goroutines (gRPC, timers) exist.
	warm := e.dialLab()
	warm.lease()
	warm.conn.Close()
	e.waitFor("warm-up released", func() bool { return e.pool().Leased == 0 })
	before := e.dpStatus()

	const cycles, workers = 1000, 8
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= cycles {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				conn, err := e.cli.Dial(ctx, "tcp6", serverAddr)
				cancel()
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				conn.Write(wire.AddrRequest[:])
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				m, err := wire.NewDecoder(conn, wire.MaxMsgLen).Next()
				conn.Close()
				if err != nil || m.Type != wire.TypeAddrResponse {
					t.Errorf("cycle: %v %v", m.Type, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	e.waitFor("all churned leases released", func() bool { return e.pool().Leased == 0 })
	var after dpStatus
	deadline := time.Now().Add(20 * time.Second)
	for {
		after = e.dpStatus()
		if after.Sessions == 0 && after.Goroutines <= before.Goroutines && after.OpenFDs <= before.OpenFDs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d cycles: sessions %d, goroutines %d (before %d), open fds %d (before %d)",
				cycles, after.Sessions, after.Goroutines, before.Goroutines, after.OpenFDs, before.OpenFDs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after %d cycles: goroutines %d (before %d), open fds %d (before %d)", cycles, after.Goroutines, before.Goroutines, after.OpenFDs, before.OpenFDs)
}

// TestSlowReader: a client that never reads while traffic is sent to it
// does not disturb another client, and is disconnected with its address
// released.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--write-timeout", "2s"}})
	good := e.startPinger(20 * time.Millisecond)
	slow := e.dialLab()
	slowAddr := slow.lease().Addr
	// Shrink the slow client's receive buffer so the flood backs up sooner;
	// it never reads again.
	slow.conn.(*net.TCPConn).SetReadBuffer(4096)

	// Flood the slow client from the IPv4 internet with UDP.
	conn, err := e.inetDialUDP(net.JoinHostPort(slowAddr.String(), "9"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 1400)
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				flooded <- n
				return
			default:
			}
			if _, err := conn.Write(payload); err == nil {
				n++
			}
			// Fast enough to fill the queue and the socket buffers within a
			// second (about 2.8 MB/s), slow enough that the shared TUN never
			// overflows, even when a loaded machine holds the data plane's
			// reader off for a while (an overflow would drop the good
			// client's replies too: that is the TUN's, not a slow reader's).
			if n%2 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	e.waitFor("slow reader disconnected", func() bool {
		for _, c := range e.clients() {
			if c.IPv4 == slowAddr.String() {
				return false
			}
		}
		return true
	})
	close(stop)
	n := <-flooded
	good.finish(t)
	st := e.dpStatus()
	if st.Drops["send_queue_full"] == 0 {
		t.Errorf("no send_queue_full drops after %d flood packets: %v", n, st.Drops)
	}
	if p := e.pool(); p.Leased != 1 {
		t.Fatalf("pool has %d leases, want only the good client's", p.Leased)
	}
}

// inetDialUDP opens a UDP socket on the IPv4 internet host.
func (e *env) inetDialUDP(addr string) (net.Conn, error) {
	return e.inet.Dial(context.Background(), "udp4", addr)
}

// TestConnectionFlood: connections beyond the per-address limit are refused
// and counted; the data plane and a well-behaved client carry on.
func TestConnectionFlood(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--max-conns-per-ip", "20"}})
	good := e.startPinger(20 * time.Millisecond) // holds one of the 20
	var conns []net.Conn
	refused := 0
	for i := 0; i < 60; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := e.cli.Dial(ctx, "tcp6", serverAddr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// A refused connection is closed by the server at once.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			refused++
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if refused != 41 {
		t.Errorf("%d of 60 connections refused, want 41 (limit 20, one held by the good client)", refused)
	}
	if st := e.dpStatus(); st.Refused["max_conns_per_ip"] != 41 {
		t.Errorf("refused counters %v", st.Refused)
	}
	good.finish(t)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
