package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// capPacket is one packet of a capture file, as a pcapng reader sees it.
type capPacket struct {
	data     []byte
	inbound  bool // from the client
	outbound bool // to the client
	comments []string
}

// readCapture reads the packets of a pcapng file, as much of it as is
// written (a capture still running ends mid-file).
func readCapture(path string) []capPacket {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	r, err := pcapgo.NewNgReader(bytes.NewReader(b), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		return nil
	}
	var out []capPacket
	for {
		data, _, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			return out
		}
		p := capPacket{data: append([]byte(nil), data...), comments: opts.Comments}
		if opts.Flags != nil {
			p.inbound = opts.Flags.Direction == pcapgo.NgEpbFlagDirectionInbound
			p.outbound = opts.Flags.Direction == pcapgo.NgEpbFlagDirectionOutbound
		}
		out = append(out, p)
	}
}

// Fields of a captured IPv4 packet, for the checks.
func (p capPacket) proto() byte { return p.data[9] }
func (p capPacket) src() string { return netip.AddrFrom4([4]byte(p.data[12:16])).String() }
func (p capPacket) dst() string { return netip.AddrFrom4([4]byte(p.data[16:20])).String() }
func (p capPacket) l4() []byte  { return p.data[int(p.data[0]&0x0f)*4:] }

// icmpType is the ICMP type (8 echo request, 0 echo reply), -1 if not ICMP.
func (p capPacket) icmpType() int {
	if p.proto() != 1 {
		return -1
	}
	return int(p.l4()[0])
}

// tcpFlags are the TCP flags, 0 if not TCP.
func (p capPacket) tcpFlags() byte {
	if p.proto() != 6 {
		return 0
	}
	return p.l4()[13]
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpACK = 0x10
)

// capture is a 4over6ctl clients capture running in the background.
type capture struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error
}

// startCapture runs 4over6ctl clients capture with only the controller's
// address: the CLI finds the data plane through it. It returns once the
// data plane logged the capture's start (the tap is attached then).
func (e *env) startCapture(dpLog string, args ...string) *capture {
	e.t.Helper()
	return e.startCaptureTo(dpLog, nil, args...)
}

// wait waits for the capture to end by itself and returns its stderr.
func (c *capture) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-c.done:
		if err != nil {
			t.Fatalf("capture: %v: %s", err, c.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("capture did not end: %s", c.stderr.String())
	}
	return c.stderr.String()
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// dataplaneLog is the log file of the env's data plane.
func (e *env) dataplaneLog() string {
	for _, p := range e.procs {
		if p.name == "4over6-dataplane" {
			return p.log
		}
	}
	e.t.Fatal("no data plane")
	return ""
}

// tcpdump reads a capture file with tcpdump and returns what it printed.
func tcpdump(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("tcpdump", "-n", "-r", path).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", path, err, out)
	}
	return string(out)
}

// TestCaptureRealClient captures our Linux client's ping and HTTP request
// with 4over6ctl, which finds the data plane through the controller, and
// reads the files with tcpdump and with a pcapng reader.
func TestCaptureRealClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "200ms"}})
	srv := e.startHTTP()
	defer srv.Close()
	e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	e.waitFor("client lease", func() bool { return len(e.clients()) == 1 })
	url := "http://" + net.JoinHostPort(internetV4, "8080")
	hc := &http.Client{Transport: &http.Transport{DialContext: e.cli.Dial, DisableKeepAlives: true}, Timeout: 20 * time.Second}
	e.waitFor("HTTP through the tunnel", func() bool {
		resp, err := hc.Get(url + "/ping")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	dpLog := e.dataplaneLog()

	// -c 4 while the client pings twice: two echo requests, two replies.
	file := filepath.Join(e.dir, "ping.pcapng")
	c := e.startCapture(dpLog, "13.8.0.2", "-c", "4", "-w", file)
	if out, err := e.cli.Output("ping", "-n", "-c", "2", "-i", "0.2", "-W", "5", internetV4); err != nil {
		t.Fatalf("ping through the tunnel: %v\n%s", err, out)
	}
	summary := c.wait(t)
	if !strings.Contains(summary, "4 packets captured") || !strings.Contains(summary, "ended: count") {
		t.Errorf("summary: %s", summary)
	}
	dump := tcpdump(t, file)
	if strings.Count(dump, "ICMP echo request") != 2 || strings.Count(dump, "ICMP echo reply") != 2 {
		t.Errorf("tcpdump -r of the ping capture:\n%s", dump)
	}
	pkts := readCapture(file)
	if len(pkts) != 4 {
		t.Fatalf("%d packets in the ping capture, want 4", len(pkts))
	}
	for i, p := range pkts {
		request := i%2 == 0 // request, reply, request, reply
		switch {
		case request && (p.icmpType() != 8 || !p.inbound || p.src() != "13.8.0.2" || p.dst() != internetV4):
			t.Errorf("packet %d: ICMP type %d, inbound %v, %s > %s; want an echo request from the client", i, p.icmpType(), p.inbound, p.src(), p.dst())
		case !request && (p.icmpType() != 0 || !p.outbound || p.src() != internetV4 || p.dst() != "13.8.0.2"):
			t.Errorf("packet %d: ICMP type %d, outbound %v, %s > %s; want an echo reply to the client", i, p.icmpType(), p.outbound, p.src(), p.dst())
		}
		if len(p.comments) != 0 {
			t.Errorf("packet %d forwarded but commented %q", i, p.comments)
		}
	}

	// An HTTP request, captured to standard output until Ctrl-C.
	file = filepath.Join(e.dir, "http.pcapng")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	c = e.startCaptureTo(dpLog, out, "13.8.0.2")
	resp, err := hc.Get(url + "/data?n=3000")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n != 3000 {
		t.Fatalf("HTTP: %d bytes", n)
	}
	// Once the server's FIN is in the file, the exchange is.
	e.waitFor("the server's FIN in the capture", func() bool {
		for _, p := range readCapture(file) {
			if p.outbound && p.tcpFlags()&tcpFIN != 0 {
				return true
			}
		}
		return false
	})
	c.cmd.Process.Signal(os.Interrupt)
	summary = c.wait(t)
	if !strings.Contains(summary, "ended: interrupted") {
		t.Errorf("summary after Ctrl-C: %s", summary)
	}
	dump = tcpdump(t, file)
	if !strings.Contains(dump, "13.8.0.2.") || !strings.Contains(dump, internetV4+".8080: Flags [S]") || !strings.Contains(dump, "HTTP") {
		t.Errorf("tcpdump -r of the HTTP capture:\n%s", dump)
	}
	// The handshake, in order, each packet with its direction.
	var hs []string
	for _, p := range readCapture(file) {
		f := p.tcpFlags()
		switch {
		case f&(tcpSYN|tcpACK) == tcpSYN && p.inbound && p.dst() == internetV4:
			hs = append(hs, "SYN in")
		case f&(tcpSYN|tcpACK) == tcpSYN|tcpACK && p.outbound && p.src() == internetV4:
			hs = append(hs, "SYN-ACK out")
		case f&(tcpSYN|tcpACK) == tcpACK && p.inbound && len(hs) == 2:
			hs = append(hs, "ACK in")
		}
	}
	if strings.Join(hs, ", ") != "SYN in, SYN-ACK out, ACK in" {
		t.Errorf("handshake in the capture: %v, want SYN in, SYN-ACK out, ACK in", hs)
	}

	// Live rates: while the client pings every 10 ms, the client table
	// shows packets per second both ways, and clients top lists it.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pinger := e.cli.Command(ctx, "ping", "-n", "-q", "-i", "0.01", "-w", "30", internetV4)
	if err := pinger.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); pinger.Wait() }()
	var rated []ctlRatedClient
	e.waitFor("rates in the client table", func() bool {
		e.ctlJSON(&rated, "clients", "list", "--sort", "rate")
		return len(rated) == 1 && rated[0].PacketsFromClientPerSecond > 10 && rated[0].PacketsToClientPerSecond > 10 &&
			rated[0].BytesFromClientPerSecond > 800 && rated[0].BytesToClientPerSecond > 800
	})
	var one ctlRatedClient
	e.ctlJSON(&one, "clients", "get", "13.8.0.2")
	if one.PacketsFromClientPerSecond <= 0 || one.BytesToClientPerSecond <= 0 {
		t.Errorf("clients get: rates %+v", one)
	}
	top, errOut, code := e.ctl("clients", "top", "--once")
	if code != 0 || !strings.Contains(top, "13.8.0.2") || !strings.Contains(top, "FROM CLIENT/S") || strings.Contains(top, "\x1b") {
		t.Errorf("clients top --once: exit %d: %s%s", code, top, errOut)
	}
}

type ctlRatedClient struct {
	IPv4                       string  `json:"ipv4"`
	BytesFromClientPerSecond   float64 `json:"bytes_from_client_per_second"`
	PacketsFromClientPerSecond float64 `json:"packets_from_client_per_second"`
	BytesToClientPerSecond     float64 `json:"bytes_to_client_per_second"`
	PacketsToClientPerSecond   float64 `json:"packets_to_client_per_second"`
}

// startCaptureTo is startCapture with the CLI's standard output to out
// (nil: discarded).
func (e *env) startCaptureTo(dpLog string, out io.Writer, args ...string) *capture {
	e.t.Helper()
	before := strings.Count(readFile(dpLog), "capture started")
	c := &capture{done: make(chan error, 1)}
	c.cmd = exec.Command(filepath.Join(binDir, "4over6ctl"), append([]string{"--controller", "unix://" + e.ctlSock, "clients", "capture"}, args...)...)
	c.cmd.Stdout, c.cmd.Stderr = out, &c.stderr
	if err := c.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	e.t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	e.waitFor("the capture to start", func() bool {
		select {
		case err := <-c.done:
			e.t.Fatalf("capture exited before it started: %v: %s", err, c.stderr.String())
		default:
		}
		return strings.Count(readFile(dpLog), "capture started") > before
	})
	return c
}

// TestCaptureDropsDisconnectAndRoles: a spoofed 102 of a lab client appears
// in its capture marked with its drop reason; the client's disconnect ends
// the capture cleanly; a caller without the operator role is refused, and
// every capture is in the data plane's audit log.
func TestCaptureDropsDisconnectAndRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	c := e.dialLab()
	addr := c.lease().Addr
	dpLog := e.dataplaneLog()
	gw := netip.MustParseAddr(gateway)

	file := filepath.Join(e.dir, "lab.pcapng")
	cp := e.startCapture(dpLog, addr.String(), "-w", file)
	good := packet.BuildICMPEcho(addr, gw, 9, 1, []byte("ok"), false)
	spoofed := packet.BuildICMPEcho(netip.MustParseAddr("13.8.0.99"), gw, 9, 2, []byte("spoofed"), false)
	c.write(wire.AppendMsg(nil, wire.TypeNetRequest, good))
	c.nextOf(wire.TypeNetResponse) // the gateway's echo reply
	// A 103 is published to the capture once the queue has taken it, which
	// may be after the client read it: the spoofed 102 goes once the
	// reply is in the capture, for the order below.
	e.waitFor("the reply in the capture", func() bool { return len(readCapture(file)) >= 2 })
	c.write(wire.AppendMsg(nil, wire.TypeNetRequest, spoofed))
	e.waitFor("three packets in the capture", func() bool { return len(readCapture(file)) >= 3 })
	// The client leaves: the capture ends by itself, exit 0.
	c.conn.Close()
	summary := cp.wait(t)
	if !strings.Contains(summary, "3 packets captured") || !strings.Contains(summary, "1 dropped") || !strings.Contains(summary, "ended: disconnected") {
		t.Errorf("summary: %s", summary)
	}
	pkts := readCapture(file)
	if len(pkts) != 3 {
		t.Fatalf("%d packets captured, want 3", len(pkts))
	}
	if p := pkts[0]; !bytes.Equal(p.data, good) || !p.inbound || len(p.comments) != 0 {
		t.Errorf("first packet: %+v, want the echo request, inbound, no comment", p)
	}
	if p := pkts[1]; p.icmpType() != 0 || !p.outbound || p.src() != gateway {
		t.Errorf("second packet: %+v, want the gateway's reply, outbound", p)
	}
	if p := pkts[2]; !bytes.Equal(p.data, spoofed) || !p.inbound || fmt.Sprint(p.comments) != "[dropped: spoofed_source]" {
		t.Errorf("third packet: comments %q inbound %v, want the spoofed echo marked dropped: spoofed_source", p.comments, p.inbound)
	}
	if dump := tcpdump(t, file); strings.Count(dump, "ICMP echo request") != 2 || !strings.Contains(dump, "13.8.0.99 > "+gateway) {
		t.Errorf("tcpdump -r:\n%s", dump)
	}

	// Nobody holds the address now: exit 4.
	if _, errOut, code := e.ctl("clients", "capture", addr.String(), "-w", filepath.Join(e.dir, "none.pcapng")); code != 4 {
		t.Errorf("capture of a gone client: exit %d: %s", code, errOut)
	}

	// A viewer (anyone but root, the daemon's user and the socket's group,
	// on the unix socket) may not capture: exit 5, naming the role.
	c2 := e.dialLab()
	addr2 := c2.lease().Addr
	e.dpStatus()
	for _, d := range []string{binDir, filepath.Dir(e.dir), e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{e.ctlSock, e.dpSock} {
		if err := os.Chmod(s, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	out, code := e.ctlAsUser(nobody, "clients", "capture", addr2.String(), "-w", "/dev/null")
	if code != 5 || !strings.Contains(out, "needs the operator role") || !strings.Contains(out, "CaptureClient") {
		t.Errorf("nobody's capture: exit %d: %s", code, out)
	}
	// Every capture is audited: the allowed one and the refused one.
	log := readFile(dpLog)
	if !strings.Contains(log, "method=CaptureClient") || !strings.Contains(log, "result=ok") || !strings.Contains(log, "result=permission_denied") {
		t.Errorf("data plane log lacks the captures' audit lines")
	}
	if !strings.Contains(log, "capture ended") {
		t.Errorf("data plane log lacks the capture's end")
	}
}
