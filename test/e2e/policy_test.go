package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/topo"
)

// The destination policy, tried from outside as an attacker with a lab
// client would: the data-plane host's own services, its broadcast and the
// other clients are out of reach through the tunnel; the IPv4 world beyond,
// and ping to the gateway, are not.

// noAnswer is how long a dial waits for a SYN-ACK that must not come.
const noAnswer = 2 * time.Second

// tcpUnanswered checks that a TCP SYN from the client namespace to addr
// gets no SYN-ACK (nor a reset): the dial times out.
func (e *env) tcpUnanswered(addr string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), noAnswer)
	defer cancel()
	c, err := e.cli.Dial(ctx, "tcp4", addr)
	if err == nil {
		c.Close()
		e.t.Errorf("TCP to %s through the tunnel connected: the data-plane host answered", addr)
		return
	}
	if !errors.Is(err, context.DeadlineExceeded) && !os.IsTimeout(err) {
		e.t.Errorf("TCP to %s through the tunnel: %v, want no answer at all (a timeout)", addr, err)
	}
}

// get fetches url (host:port given) from ns and wants a 200. The
// connection is dialed here, not by an http.Transport: a transport goes on
// dialing in the background after its request timed out, and a SYN that
// gets no answer would outlive the test and its namespace.
func get(ns *topo.NS, url string) error {
	_, err := fetch(ns, url)
	return err
}

// fetch is get, returning the body.
func fetch(ns *topo.NS, url string) (string, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), noAnswer)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp4", req.URL.Host)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := req.Write(c); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return string(body), err
}

// ping sends one ICMP echo from the client namespace.
func (e *env) ping(addr string) error {
	return e.cli.Exec("ping", "-n", "-c", "1", "-W", "2", addr)
}

// drops reads the data plane's drop counters, as 4over6ctl shows them.
func (e *env) drops() map[string]uint64 {
	e.t.Helper()
	var st struct{ Drops map[string]uint64 }
	e.ctlJSON(&st, "dataplane", "status")
	return st.Drops
}

// waitDrops waits until the named counters moved from before by exactly
// want.
func (e *env) waitDrops(before map[string]uint64, want map[string]uint64) {
	e.t.Helper()
	var now map[string]uint64
	moved := func() bool {
		for r, n := range want {
			if now[r]-before[r] != n {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if now = e.drops(); moved() || time.Now().After(deadline) {
			break
		}
	}
	// Late drops would show as more than wanted: look once more.
	time.Sleep(200 * time.Millisecond)
	now = e.drops()
	for r, n := range want {
		if now[r]-before[r] != n {
			e.t.Errorf("drops %s moved by %d, want %d", r, now[r]-before[r], n)
		}
	}
}

// udpPacket is a UDP datagram from src to dst:port carrying payload.
func udpPacket(src, dst netip.Addr, port uint16, payload string) []byte {
	return packet.BuildUDP(src, dst, 40000, port, []byte(payload))
}

// udpSink listens for UDP in ns and collects the payloads it receives.
type udpSink struct {
	c   net.PacketConn
	mu  sync.Mutex
	got []string
}

func (e *env) udpSink(ns *topo.NS, addr string) *udpSink {
	e.t.Helper()
	var c net.PacketConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	s := &udpSink{c: c}
	e.t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *udpSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func (s *udpSink) has(payload string) bool {
	for _, g := range s.received() {
		if g == payload {
			return true
		}
	}
	return false
}

// startClient runs our Linux client in the client namespace and waits
// until an echo to the gateway comes back through it.
func (e *env) startClient() {
	e.t.Helper()
	e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	e.waitFor("ping to the gateway through the client", func() bool { return e.ping(gateway) == nil })
}

// dataplane returns the data plane's process.
func (e *env) dataplane() *proc {
	for _, p := range e.procs {
		if p.name == "4over6-dataplane" {
			return p
		}
	}
	e.t.Fatal("no data plane running")
	return nil
}

// logCount counts the lines of p's log containing s.
func logCount(p *proc, s string) int {
	f, err := os.Open(p.log)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// TestPolicyDataplaneHost: a client cannot reach the data-plane host's
// services, however they are bound, while the host forwards IPv4 and ping
// to the gateway works; nor its broadcast addresses.
func TestPolicyDataplaneHost(t *testing.T) {
	t.Parallel()
	// The metrics endpoint bound to every address, as in the attack: it
	// would give a client the command line and counters.
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--metrics", "0.0.0.0:9462"}})
	ln, err := e.srv.Listen("tcp4", "0.0.0.0:7070")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	srvUDP := e.udpSink(e.srv, "0.0.0.0:7071")
	inetUDP := e.udpSink(e.inet, internetV4+":7072")
	web := e.startHTTP()
	defer web.Close()

	e.startClient()
	// The tunnel carries IPv4 beyond the host (the host forwards).
	e.waitFor("HTTP beyond the host", func() bool {
		return get(e.cli, "http://"+net.JoinHostPort(internetV4, "8080")+"/ping") == nil
	})
	// SYNs to the host's services, on the gateway and on its uplink
	// address, get no answer.
	var wg sync.WaitGroup
	for _, addr := range []string{gateway + ":7070", gateway + ":9462", serverV4 + ":7070", serverV4 + ":9462"} {
		wg.Add(1)
		go func() { defer wg.Done(); e.tcpUnanswered(addr) }()
	}
	wg.Wait()
	if err := e.ping(gateway); err != nil {
		t.Errorf("ping to the gateway after the refusals: %v", err)
	}
	if err := e.ping(serverV4); err == nil {
		t.Error("ping to the host's uplink address answered: only the gateway's echo passes")
	}
	// The host's metrics are still there for the host itself.
	metrics, err := fetch(e.srv, "http://127.0.0.1:9462/metrics")
	if err != nil {
		t.Fatalf("metrics from the host itself: %v", err)
	}
	if !strings.Contains(metrics, `fourover6_dataplane_drops_total{reason="policy_host"}`) {
		t.Errorf("metrics lack the policy_host drops:\n%s", metrics)
	}

	// A lab client's UDP to the host and its broadcasts: none arrives.
	lab := e.dialLab()
	me := lab.lease().Addr
	before := e.drops()
	for _, dst := range []string{"255.255.255.255", "13.8.0.255", gateway, serverV4, "198.51.100.255"} {
		lab.write(wire.AppendMsg(nil, wire.TypeNetRequest, udpPacket(me, netip.MustParseAddr(dst), 7071, "to "+dst)))
	}
	// A datagram that passes comes after them: once it is there, the
	// others have been decided.
	lab.write(wire.AppendMsg(nil, wire.TypeNetRequest, udpPacket(me, netip.MustParseAddr(internetV4), 7072, "beyond")))
	e.waitFor("the datagram beyond the host", func() bool { return inetUDP.has("beyond") })
	e.waitDrops(before, map[string]uint64{"policy_broadcast": 3, "policy_host": 2})
	time.Sleep(200 * time.Millisecond)
	if got := srvUDP.received(); len(got) != 0 {
		t.Errorf("the host's UDP socket on 0.0.0.0 received %q through the tunnel", got)
	}
	if metrics, err = fetch(e.srv, "http://127.0.0.1:9462/metrics"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, fmt.Sprintf("fourover6_dataplane_drops_total{reason=\"policy_broadcast\"} %d", before["policy_broadcast"]+3)) {
		t.Errorf("metrics do not show the 3 broadcast drops:\n%s", grepLines(metrics, "policy_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPolicyClientToClient: two clients (our Linux client and a lab
// client) cannot reach each other by default; with
// --allow-client-to-client they can, and broadcast stays refused.
func TestPolicyClientToClient(t *testing.T) {
	for _, allowed := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowed=%v", allowed), func(t *testing.T) {
			t.Parallel()
			var args []string
			if allowed {
				args = []string{"--allow-client-to-client"}
			}
			e := newEnv(t, envOptions{dataplaneArgs: args})
			cliUDP := e.udpSink(e.cli, "0.0.0.0:7074")
			e.startClient() // 13.8.0.2
			var a netip.Addr
			e.waitFor("the client's lease", func() bool {
				cs := e.clients()
				if len(cs) == 1 {
					a = netip.MustParseAddr(cs[0].IPv4)
				}
				return len(cs) == 1
			})
			lab := e.dialLab()
			b := lab.lease().Addr
			before := e.drops()

			// From the Linux client to the lab client's address.
			var sendErr error
			e.cli.Do(func() error {
				c, err := net.Dial("udp4", net.JoinHostPort(b.String(), "7073"))
				if err != nil {
					sendErr = err
					return nil
				}
				defer c.Close()
				_, sendErr = c.Write([]byte("a to b"))
				return nil
			})
			if sendErr != nil {
				t.Fatal(sendErr)
			}
			// From the lab client to the Linux client's address, and to the
			// pool's broadcast address.
			lab.write(wire.AppendMsg(nil, wire.TypeNetRequest, udpPacket(b, a, 7074, "b to a")))
			lab.write(wire.AppendMsg(nil, wire.TypeNetRequest, udpPacket(b, netip.MustParseAddr("13.8.0.255"), 7074, "b to all")))

			if !allowed {
				e.waitDrops(before, map[string]uint64{"policy_client": 2, "policy_broadcast": 1})
				// Decided and dropped; and nothing arrives later either.
				if m, err := lab.nextData(time.Second); err == nil {
					t.Errorf("the lab client got a 103 from %s: %q", packet.Src(m.Data), m.Data[28:])
				}
				if got := cliUDP.received(); len(got) != 0 {
					t.Errorf("the Linux client received %q from the other client", got)
				}
				return
			}
			m, err := lab.nextData(10 * time.Second)
			if err != nil {
				t.Fatalf("the lab client never got the Linux client's datagram: %v", err)
			}
			if packet.Src(m.Data) != a || packet.Dst(m.Data) != b || string(m.Data[28:]) != "a to b" {
				t.Fatalf("the lab client got %s -> %s %q", packet.Src(m.Data), packet.Dst(m.Data), m.Data[28:])
			}
			e.waitFor("the lab client's datagram at the Linux client", func() bool { return cliUDP.has("b to a") })
			e.waitDrops(before, map[string]uint64{"policy_broadcast": 1})
			if cliUDP.has("b to all") {
				t.Error("the pool broadcast reached the Linux client")
			}
		})
	}
}

// nextData returns the next 103 carrying UDP, skipping keepalives and
// anything else (the Linux client's own traffic never reaches the lab
// client).
func (c *labClient) nextData(timeout time.Duration) (wire.Msg, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := c.next(time.Until(deadline))
		if err != nil {
			return m, err
		}
		if m.Type == wire.TypeNetResponse && len(m.Data) >= 28 && packet.Protocol(m.Data) == packet.ProtoUDP {
			return m, nil
		}
	}
}

// TestPolicyMetadataAndReload: with --nat, a metadata service behind the
// host (169.254.169.254, which would see the host's own address) is out of
// reach; operator rules from the config file open it and close the IPv4
// host instead, applied by a SIGHUP; a broken file changes nothing. DNS to
// the gateway passes as the 101 names it.
func TestPolicyMetadataAndReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dataplane.yaml")
	if err := os.WriteFile(cfg, []byte("log-level: info\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{noReturnRoute: true, dataplaneArgs: []string{"--nat", "--config", cfg}})
	if _, errOut, code := e.ctl("dns", "set", gateway+",192.0.2.54,192.0.2.55"); code != 0 {
		t.Fatalf("dns set: %s", errOut)
	}
	// The metadata service: on the IPv4 side, routed by the host as a
	// cloud VM routes it.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.inet.AddAddr("v4s", "169.254.169.254/32"))
	must(e.srv.Exec("ip", "route", "add", "169.254.169.254/32", "via", internetV4, "dev", "v4i"))
	mdLn, err := e.inet.Listen("tcp4", "169.254.169.254:80")
	must(err)
	seen := make(chan string, 16)
	md := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case seen <- host:
		default:
		}
		io.WriteString(w, "instance credentials")
	})}
	go md.Serve(mdLn)
	defer md.Close()
	web := e.startHTTP()
	defer web.Close()
	hostTCP, err := e.srv.Listen("tcp4", "0.0.0.0:7070")
	must(err)
	defer hostTCP.Close()
	go func() {
		for {
			c, err := hostTCP.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dns := e.udpSink(e.srv, gateway+":53")
	notDNS := e.udpSink(e.srv, gateway+":54")

	e.startClient()
	metadata := "http://169.254.169.254:80/latest/meta-data/"
	internet := "http://" + net.JoinHostPort(internetV4, "8080") + "/ping"
	e.waitFor("HTTP beyond the host through NAT", func() bool { return get(e.cli, internet) == nil })
	before := e.drops()
	if err := get(e.cli, metadata); err == nil {
		t.Fatal("the metadata service answered a client")
	}
	if d := e.drops(); d["policy_link_local"] <= before["policy_link_local"] {
		t.Errorf("link-local drops did not move: %d", d["policy_link_local"])
	}
	e.tcpUnanswered(gateway + ":7070")

	// DNS to the gateway passes (the 101 names it); another port does not.
	e.cli.Do(func() error {
		for _, port := range []string{"53", "54"} {
			if c, err := net.Dial("udp4", net.JoinHostPort(gateway, port)); err == nil {
				c.Write([]byte("query " + port))
				c.Close()
			}
		}
		return nil
	})
	e.waitFor("the DNS query at the gateway", func() bool { return dns.has("query 53") })
	time.Sleep(200 * time.Millisecond)
	if got := notDNS.received(); len(got) != 0 {
		t.Errorf("UDP to the gateway's port 54 arrived: %q", got)
	}

	// The operator opens the metadata service and the host's port, and
	// closes the IPv4 host, in the file; a SIGHUP applies it.
	dp := e.dataplane()
	hup := func(content string) {
		t.Helper()
		must(os.WriteFile(cfg, []byte(content), 0o644))
		n := logCount(dp, "SIGHUP:")
		must(dp.cmd.Process.Signal(syscall.SIGHUP))
		e.waitFor("the SIGHUP handled", func() bool { return logCount(dp, "SIGHUP:") > n })
	}
	hup("log-level: info\nallow: [169.254.169.254/32, " + gateway + "/32]\ndeny:\n  - " + internetV4 + "/32\n")
	if logCount(dp, "destination policy changed") != 1 {
		t.Fatal("no \"destination policy changed\" line after the SIGHUP")
	}
	if err := get(e.cli, metadata); err != nil {
		t.Fatalf("the allowed metadata service: %v", err)
	}
	if src := <-seen; src != serverV4 {
		t.Errorf("the metadata service saw %s, want the host's %s (the reason it is refused by default)", src, serverV4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := e.cli.Dial(ctx, "tcp4", gateway+":7070")
	cancel()
	if err != nil {
		t.Errorf("the host's port after --allow %s/32: %v", gateway, err)
	} else {
		c.Close()
	}
	before = e.drops()
	if err := get(e.cli, internet); err == nil {
		t.Error("the denied IPv4 host answered")
	}
	if d := e.drops(); d["policy_denied"] <= before["policy_denied"] {
		t.Errorf("policy_denied did not move: %d", d["policy_denied"])
	}

	// A broken file: logged, nothing changes.
	hup("deny: [10.1.2.3/8]\n")
	if logCount(dp, "did you mean 10.0.0.0/8?") == 0 {
		t.Error("the bad prefix was not reported with its fix")
	}
	if err := get(e.cli, metadata); err != nil {
		t.Errorf("after a broken file, the metadata service (still allowed): %v", err)
	}
}
