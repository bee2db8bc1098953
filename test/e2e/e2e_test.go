// Package e2e runs the real binaries in network namespaces joined by an
// IPv6-only veth, and checks the whole tunnel from outside.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

var gw = netip.MustParseAddr(gateway)

// TestLabProtocol speaks the lab protocol byte by byte, as the black-box
// acceptance client does: 104 before 100, a repeated 100, 16 data messages
// in one write, and ICMP echo to the gateway through the tunnel.
func TestLabProtocol(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := e.dialLab()
	for _, b := range append(wire.Keepalive[:], wire.AddrRequest[:]...) {
		c.write([]byte{b})
		time.Sleep(2 * time.Millisecond)
	}
	m, err := c.next(10 * time.Second)
	if err != nil || m.Type != wire.TypeAddrResponse {
		t.Fatalf("first message: %v %v, want 101", m.Type, err)
	}
	want := "13.8.0.2 0.0.0.0 192.0.2.53 192.0.2.54 192.0.2.55 "
	if string(m.Data) != want {
		t.Fatalf("101 data %q, want %q", m.Data, want)
	}
	c.write(wire.AddrRequest[:])
	if m := c.nextOf(wire.TypeAddrResponse); string(m.Data) != want {
		t.Fatalf("repeated 100 got %q", m.Data)
	}
	me := netip.MustParseAddr("13.8.0.2")

	var batch []byte
	for i := 0; i < 16; i++ {
		batch = wire.AppendMsg(batch, wire.TypeNetRequest, packet.BuildICMPEcho(me, gw, 0x4f36, uint16(i), []byte("lab"), false))
	}
	c.write(batch)
	seen := map[uint16]bool{}
	for len(seen) < 16 {
		r := c.nextOf(wire.TypeNetResponse)
		if _, prob := packet.CheckIPv4(r.Data); prob != packet.OK {
			t.Fatalf("103 with bad IPv4: %v", prob)
		}
		if packet.Src(r.Data) != gw || packet.Dst(r.Data) != me || r.Data[20] != 0 {
			t.Fatalf("103 is not an echo reply from %s to %s", gw, me)
		}
		seen[uint16(r.Data[26])<<8|uint16(r.Data[27])] = true
	}
	// One more echo, its 102 written one byte at a time.
	for _, b := range wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(me, gw, 0x4f36, 99, nil, false)) {
		c.write([]byte{b})
	}
	if r := c.nextOf(wire.TypeNetResponse); r.Data[27] != 99 {
		t.Fatal("no reply to the byte-by-byte echo")
	}

	cs := e.clients()
	if len(cs) != 1 || cs[0].IPv4 != "13.8.0.2" || cs[0].IPv6 != clientV6 || cs[0].Dataplane != "dp1" || cs[0].Port == 0 {
		t.Fatalf("clients list: %+v", cs)
	}
}

// TestConcurrentClients: 200 clients connecting at once get 200 distinct
// addresses; when they leave, the pool is whole again.
func TestConcurrentClients(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const n = 200
	conns := make([]*labClient, n)
	for i := range conns {
		conns[i] = e.dialLab()
	}
	addrs := make([]netip.Addr, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := c.conn.Write(wire.AddrRequest[:]); err != nil {
				t.Error(err)
				return
			}
			m, err := c.next(20 * time.Second)
			if err != nil || m.Type != wire.TypeAddrResponse {
				t.Errorf("client %d: %v %v", i, m.Type, err)
				return
			}
			r, err := wire.ParseAddrResponse(m.Data)
			if err != nil {
				t.Error(err)
				return
			}
			addrs[i] = r.Addr
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if j, dup := seen[a]; dup {
			t.Fatalf("clients %d and %d both got %s", j, i, a)
		}
		seen[a] = i
	}
	if p := e.pool(); p.Leased != n {
		t.Fatalf("pool shows %d leased, want %d", p.Leased, n)
	}
	if cs := e.clients(); len(cs) != n {
		t.Fatalf("clients list has %d rows, want %d", len(cs), n)
	}
	for _, c := range conns {
		c.conn.Close()
	}
	e.waitFor("all leases released", func() bool { return e.pool().Leased == 0 })
}

// TestKeepalive uses the acceptance settings: interval 1s, timeout 3s.
func TestKeepalive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--keepalive-interval", "1s", "--keepalive-timeout", "3s"}})
	c := e.dialLab()
	// Taken before the 100 is written: the server hears it later still,
	// so closedAt-lastSent can only overstate the silence it measured.
	lastSent := time.Now()
	c.lease()
	m, err := c.next(2 * time.Second)
	if err != nil || m.Type != wire.TypeKeepalive {
		t.Fatalf("no 104 within 2s of the 101: %v %v", m.Type, err)
	}
	// Now stay silent (but keep reading) and see when the server cuts us.
	var closedAt time.Time
	for {
		_, err := c.next(15 * time.Second)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, wire.ErrTruncated) {
				t.Fatalf("connection not closed by the server: %v", err)
			}
			closedAt = time.Now()
			break
		}
	}
	// "About 3 s, not before": a busy machine can only make it later.
	if silent := closedAt.Sub(lastSent); silent < 3*time.Second {
		t.Fatalf("dropped after %s of silence, before the 3s timeout", silent)
	}
	e.waitFor("address back in the pool", func() bool { return e.pool().Leased == 0 })

	// A client that keeps sending 104s is never dropped.
	c2 := e.dialLab()
	c2.lease()
	for i := 0; i < 5; i++ {
		time.Sleep(time.Second)
		c2.write(wire.Keepalive[:])
	}
	if p := e.pool(); p.Leased != 1 {
		t.Fatalf("a client sending keepalives lost its lease: %+v", p)
	}
}

func TestDisconnectReleasesAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := e.dialLab()
	r := c.lease()
	if p := e.pool(); p.Leased != 1 {
		t.Fatalf("pool %+v after one lease", p)
	}
	c.conn.Close()
	e.waitFor("release after disconnect", func() bool { return e.pool().Leased == 0 })
	// The next client gets a working lease (FIFO reuse may pick another address).
	c2 := e.dialLab()
	if r2 := c2.lease(); !r2.Addr.IsValid() || r2.DNS != r.DNS {
		t.Fatalf("second lease %+v", r2)
	}
}

// TestTunnelHTTP runs our Linux client and moves a few MB each way over
// HTTP between the IPv6-only client namespace and an IPv4 host beyond the
// server, checking SHA-256 sums; then the client table shows the client.
func TestTunnelHTTP(t *testing.T) {
	for _, backend := range []string{"water", "offload", "auto"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testTunnelHTTP(t, backend)
		})
	}
}

func testTunnelHTTP(t *testing.T, backend string) {
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "200ms", "--tun-backend", backend}})
	srv := e.startHTTP()
	defer srv.Close()
	e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c", "--tun-backend", backend)
	e.waitFor("client lease", func() bool { return len(e.clients()) == 1 })

	hc := &http.Client{Transport: &http.Transport{DialContext: e.cli.Dial}, Timeout: 60 * time.Second}
	url := "http://" + net.JoinHostPort(internetV4, "8080")
	const size = 4 << 20
	e.waitFor("HTTP through the tunnel", func() bool {
		resp, err := hc.Get(url + "/ping")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})

	// Download.
	resp, err := hc.Get(url + "/data?n=" + strconv.Itoa(size))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != resp.Header.Get("X-Sha256") {
		t.Fatalf("download checksum %s, server says %s", got, resp.Header.Get("X-Sha256"))
	}

	// Upload.
	body := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(body)
	resp, err = hc.Post(url+"/upload", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if string(got) != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload checksum: server got %s, sent %x", got, sum)
	}

	var cs []ctlClient
	e.waitFor("counters reported", func() bool {
		cs = e.clients()
		return len(cs) == 1 && cs[0].BytesToClient > size && cs[0].BytesFromClient > size
	})
	if cs[0].IPv6 != clientV6 || cs[0].IPv4 != "13.8.0.2" {
		t.Fatalf("clients list: %+v", cs)
	}
}

// startHTTP serves test data from the IPv4 host.
func (e *env) startHTTP() *http.Server {
	e.t.Helper()
	ln, err := e.inet.Listen("tcp4", net.JoinHostPort(internetV4, "8080"))
	if err != nil {
		e.t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pong") })
	mux.HandleFunc("/data", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		b := make([]byte, n)
		rand.NewChaCha8([32]byte{2}).Read(b)
		sum := sha256.Sum256(b)
		w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
		w.Write(b)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		io.Copy(h, r.Body)
		io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	return srv
}

var _ = context.Background
