package bgp

// The routed tests run speakers against a real BIRD. GoBGP opens its
// sockets from goroutines of its own, on whatever OS thread they land, so
// a speaker cannot be confined to a namespace inside the test process:
// each speaker is this test binary re-run as a helper process inside its
// namespace (ip netns exec), driven over stdin/stdout. That also lets the
// tests kill or freeze a speaker the way a crashed or hung host would.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/bird"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

const (
	helperEnv = "FOUROVER6_BGP_SPEAKER" // JSON helperSpec: run as a speaker
	routerASN = 65001
	ourASN    = 65000
	holdTime  = 3 * time.Second // short, so dead speakers are noticed fast
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(speakerProcess(spec))
	}
	os.Exit(m.Run())
}

// helperSpec is what a helper process is started with.
type helperSpec struct {
	Config   Config
	Announce []netip.Addr // before Start
}

// speakerProcess is the helper: it starts a speaker and obeys one command
// a line: announce A, withdraw A, aggregate P|none, status, stop, handoff.
// It answers each with one line: ok, err: ..., or JSON for status.
func speakerProcess(spec string) int {
	var hs helperSpec
	if err := json.Unmarshal([]byte(spec), &hs); err != nil {
		fmt.Fprintln(os.Stderr, "helper spec:", err)
		return 2
	}
	hs.Config.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sp, err := New(hs.Config)
	if err != nil {
		fmt.Printf("err: %v\n", err)
		return 1
	}
	for _, a := range hs.Announce {
		if err := sp.Announce(a); err != nil {
			fmt.Printf("err: %v\n", err)
			return 1
		}
	}
	if err := sp.Start(context.Background()); err != nil {
		fmt.Printf("err: %v\n", err)
		return 1
	}
	fmt.Println("ok")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		verb, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		var err error
		switch verb {
		case "announce", "withdraw":
			var a netip.Addr
			if a, err = netip.ParseAddr(arg); err == nil {
				if verb == "announce" {
					err = sp.Announce(a)
				} else {
					err = sp.Withdraw(a)
				}
			}
		case "aggregate":
			var p netip.Prefix
			if arg != "none" {
				p, err = netip.ParsePrefix(arg)
			}
			if err == nil {
				err = sp.SetAggregate(p)
			}
		case "status":
			b, _ := json.Marshal(sp.Status())
			fmt.Println(string(b))
			continue
		case "stop":
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = sp.Stop(ctx)
			cancel()
		case "handoff":
			err = sp.Handoff()
		default:
			err = fmt.Errorf("unknown command %q", verb)
		}
		if err != nil {
			fmt.Printf("err: %v\n", err)
			continue
		}
		fmt.Println("ok")
		if verb == "stop" || verb == "handoff" {
			return 0
		}
	}
	return 0
}

// speakerProc is a helper process as the test sees it.
type speakerProc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	log   string
	done  chan struct{}
}

// startSpeaker runs a speaker with cfg in ns and waits for its Start.
func startSpeaker(t *testing.T, ns *topo.NS, name string, cfg Config, announce ...netip.Addr) *speakerProc {
	t.Helper()
	spec, err := json.Marshal(helperSpec{Config: cfg, Announce: announce})
	if err != nil {
		t.Fatal(err)
	}
	p := &speakerProc{t: t, name: name, lines: make(chan string, 16), done: make(chan struct{}),
		log: filepath.Join(t.TempDir(), name+".log")}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = ns.Command(context.Background(), os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
	p.cmd.Stderr = logf
	if p.in, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start speaker %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() { p.cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() || os.Getenv("FOUROVER6_BGP_TEST_LOGS") != "" {
			b, _ := os.ReadFile(p.log)
			t.Logf("speaker %s log:\n%s", name, b)
		}
	})
	if got := p.reply(); got != "ok" {
		t.Fatalf("speaker %s did not start: %s", name, got)
	}
	return p
}

func (p *speakerProc) reply() string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			return "exited"
		}
		return l
	case <-time.After(10 * time.Second):
		p.t.Fatalf("speaker %s: no answer", p.name)
		return ""
	}
}

// do sends a command and fails the test unless the speaker says ok.
func (p *speakerProc) do(format string, args ...any) {
	p.t.Helper()
	cmd := fmt.Sprintf(format, args...)
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		p.t.Fatalf("speaker %s: %s: %v", p.name, cmd, err)
	}
	if got := p.reply(); got != "ok" {
		p.t.Fatalf("speaker %s: %s: %s", p.name, cmd, got)
	}
}

func (p *speakerProc) status() Status {
	p.t.Helper()
	fmt.Fprintln(p.in, "status")
	var st Status
	if err := json.Unmarshal([]byte(p.reply()), &st); err != nil {
		p.t.Fatalf("speaker %s status: %v", p.name, err)
	}
	return st
}

// waitEstablished waits until every session of the speaker is up.
func (p *speakerProc) waitEstablished(timeout time.Duration) Status {
	p.t.Helper()
	var st Status
	if _, err := bird.Wait(timeout, func() error {
		st = p.status()
		for _, ps := range st.Peers {
			if !ps.Established() {
				return fmt.Errorf("session to %s: %s", ps.Addr, ps.State)
			}
		}
		return nil
	}); err != nil {
		p.t.Fatalf("speaker %s: %v", p.name, err)
	}
	return st
}

func (p *speakerProc) signal(sig syscall.Signal) {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

func (p *speakerProc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// exited waits for the helper to end by itself.
func (p *speakerProc) exited() {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Fatalf("speaker %s did not exit", p.name)
	}
}

// lab is a router namespace running BIRD, joined by a veth to each of n
// speaker namespaces. Link i (from 0) is 198.51.100.8i/29: the speaker is
// .8i+1, the router .8i+2, and .8i+3 is a spare address of the speaker's
// (an explicit next hop); 2001:db8:i+1::1 and ::2 are the IPv6 ends.
type lab struct {
	router  *topo.NS
	bird    *bird.Router
	birdCfg bird.Config
	ns      []*topo.NS
}

func (l *lab) speakerAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, 100, byte(8*i + 1)})
}
func (l *lab) routerAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, 100, byte(8*i + 2)})
}
func (l *lab) spareAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, 100, byte(8*i + 3)})
}
func (l *lab) speaker6(i int) netip.Addr { return l6(i, 1) }
func (l *lab) router6(i int) netip.Addr  { return l6(i, 2) }

// proto is BIRD's protocol name for speaker i's session.
func (l *lab) proto(i int) string { return fmt.Sprintf("dp%d", i+1) }

// newLab builds the namespaces and starts BIRD with one passive session
// per speaker; peer tweaks BIRD's side of each session.
func newLab(t *testing.T, n int, peer func(i int, p *bird.Peer)) *lab {
	t.Helper()
	netnstest.RequireRoot(t)
	l := &lab{}
	mk := func(tag string) *topo.NS {
		ns, err := topo.NewNS(topo.UniqueName(tag))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Delete)
		return ns
	}
	l.router = mk("bgr")
	l.birdCfg = bird.Config{RouterID: l.routerAddr(0), ASN: routerASN}
	for i := range n {
		ns := mk("bgs")
		l.ns = append(l.ns, ns)
		rdev := fmt.Sprintf("s%d", i+1)
		if err := topo.Veth(l.router, rdev, ns, "r0"); err != nil {
			t.Fatal(err)
		}
		for _, step := range []error{
			l.router.AddAddr(rdev, l.routerAddr(i).String()+"/29"),
			l.router.AddAddr(rdev, l.router6(i).String()+"/64"),
			ns.AddAddr("r0", l.speakerAddr(i).String()+"/29"),
			ns.AddAddr("r0", l.spareAddr(i).String()+"/29"),
			ns.AddAddr("r0", l.speaker6(i).String()+"/64"),
		} {
			if step != nil {
				t.Fatal(step)
			}
		}
		p := bird.Peer{Name: l.proto(i), Local: l.routerAddr(i), Neighbor: l.speakerAddr(i), ASN: ourASN,
			HoldTime: int(holdTime / time.Second)}
		if peer != nil {
			peer(i, &p)
		}
		l.birdCfg.Peers = append(l.birdCfg.Peers, p)
	}
	l.bird = bird.Start(t, l.router, l.birdCfg)
	return l
}

// config is a speaker configuration for speaker i peering with the router
// over IPv4.
func (l *lab) config(i int) Config {
	return Config{
		ASN:          ourASN,
		Peers:        []Peer{{Addr: l.routerAddr(i), ASN: routerASN}},
		HoldTime:     holdTime,
		ConnectRetry: time.Second,
	}
}

// routes returns BIRD's IPv4 routes.
func (l *lab) routes(t *testing.T) []bird.Route {
	t.Helper()
	rs, err := l.bird.Routes()
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// waitPrefixes waits until the prefixes BIRD learnt from speaker i (all
// speakers when i < 0) are exactly want, and returns how long it took.
func (l *lab) waitPrefixes(t *testing.T, i int, timeout time.Duration, want ...netip.Prefix) time.Duration {
	t.Helper()
	proto := ""
	if i >= 0 {
		proto = l.proto(i)
	}
	var got []netip.Prefix
	var routes []bird.Route
	took, err := bird.Wait(timeout, func() error {
		routes = l.routes(t)
		got = bird.Prefixes(routes, proto)
		if fmt.Sprint(got) != fmt.Sprint(sortPrefixes(want)) {
			return fmt.Errorf("bird has %v from %q, want %v", got, proto, sortPrefixes(want))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v after %v; routes:\n%s", err, took.Round(time.Millisecond), bird.FormatRoutes(routes))
	}
	return took
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	var rs []bird.Route
	for _, p := range ps {
		rs = append(rs, bird.Route{Prefix: p})
	}
	return bird.Prefixes(rs, "")
}

func host(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }
