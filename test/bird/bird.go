// Package bird runs a real BIRD 2 routing daemon for tests: started in a
// network namespace the test made, with its configuration, control socket,
// pid file and log in the test's temporary directory (never the system
// service or its files), and asked about its routes with birdc.
//
// BIRD comes from Debian's bird2 package (test/deps.sh installs it); a
// missing binary fails the test with that hint rather than skipping it.
package bird

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// Config is a BIRD configuration with one BGP protocol per neighbour. It
// imports every IPv4 route its neighbours send and exports nothing, as an
// access router learning where the clients are would.
type Config struct {
	RouterID netip.Addr
	ASN      uint32
	Peers    []Peer
	// Extra is appended verbatim (filters, more protocols).
	Extra string
}

// Peer is one BGP neighbour of the router.
type Peer struct {
	Name     string     // the BIRD protocol name, e.g. "dp1"
	Local    netip.Addr // the router's address toward the neighbour
	Neighbor netip.Addr
	ASN      uint32
	// Port is where BIRD dials the neighbour when Active; 0: 179.
	Port int
	// HoldTime in seconds; 0: BIRD's default (240 s).
	HoldTime int
	// GracefulRestart makes BIRD a receiving speaker (RFC 4724): it keeps
	// a restarting neighbour's routes, stale, until the neighbour's
	// End-of-RIB or its restart time.
	GracefulRestart bool
	// ExtendedNextHop accepts IPv4 routes with an IPv6 next hop (RFC
	// 8950) on an IPv6 session.
	ExtendedNextHop bool
	// Active makes BIRD dial too; by default it only waits for the
	// neighbour's connection (passive).
	Active bool
	// Debug logs every route change and session event (Log shows them):
	// "dp1.ipv4 > added [best] 203.0.113.1/32 ..." and "... > removed ...".
	Debug bool
}

// String renders the configuration file.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log stderr all;\nrouter id %s;\n", c.RouterID)
	// BIRD learns interfaces and their addresses from the device
	// protocol; BGP checks next hops against them.
	b.WriteString("protocol device { scan time 1; }\n")
	for _, p := range c.Peers {
		fmt.Fprintf(&b, "protocol bgp %s {\n", p.Name)
		fmt.Fprintf(&b, "\tlocal %s as %d;\n\tneighbor %s", p.Local, c.ASN, p.Neighbor)
		if p.Port != 0 {
			fmt.Fprintf(&b, " port %d", p.Port)
		}
		fmt.Fprintf(&b, " as %d;\n", p.ASN)
		if !p.Active {
			b.WriteString("\tpassive on;\n")
		}
		if p.HoldTime > 0 {
			fmt.Fprintf(&b, "\thold time %d;\n\tstartup hold time %d;\n\tkeepalive time %d;\n",
				p.HoldTime, p.HoldTime, max(p.HoldTime/3, 1))
		}
		if p.GracefulRestart {
			b.WriteString("\tgraceful restart on;\n")
		} else {
			b.WriteString("\tgraceful restart off;\n")
		}
		if p.Debug {
			b.WriteString("\tdebug { routes, events };\n")
		}
		b.WriteString("\tconnect retry time 1;\n\terror wait time 1, 2;\n")
		b.WriteString("\tipv4 {\n\t\timport all;\n\t\texport none;\n")
		if p.ExtendedNextHop {
			b.WriteString("\t\textended next hop on;\n")
		}
		b.WriteString("\t};\n}\n")
	}
	b.WriteString(c.Extra)
	return b.String()
}

// look finds a BIRD binary on PATH or where Debian puts it (a PATH
// without the sbin directories is common for non-login shells).
func look(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install BIRD 2 with test/deps.sh (apt-get install bird2)", name)
}

// Router is a running BIRD.
type Router struct {
	NS    *topo.NS
	Dir   string
	Sock  string // control socket, for birdc -s
	birdc string
	cmd   *exec.Cmd
	log   *os.File
	done  chan struct{}
}

// Start writes cfg to a temporary directory of t and runs bird in ns in
// the foreground; it is killed at the end of the test, and its log is
// printed when the test failed.
func Start(t testing.TB, ns *topo.NS, cfg Config) *Router {
	t.Helper()
	bin, err := look("bird")
	if err != nil {
		t.Fatal(err)
	}
	birdc, err := look("birdc")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := &Router{NS: ns, Dir: dir, Sock: filepath.Join(dir, "bird.ctl"), birdc: birdc, done: make(chan struct{})}
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if r.log, err = os.Create(filepath.Join(dir, "bird.log")); err != nil {
		t.Fatal(err)
	}
	// Parse errors come back at once, with the offending line.
	if out, err := exec.Command(bin, "-p", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("bird rejects its configuration: %v: %s\n%s", err, bytes.TrimSpace(out), cfg)
	}
	r.cmd = ns.Command(context.Background(), bin, "-f", "-c", conf, "-s", r.Sock, "-P", filepath.Join(dir, "bird.pid"))
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start bird: %v", err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.Close()
		if t.Failed() || os.Getenv("FOUROVER6_BGP_TEST_LOGS") != "" {
			b, _ := os.ReadFile(r.log.Name())
			t.Logf("bird log (%s):\n%s", r.log.Name(), b)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.Control("show", "status"); err == nil {
			return r
		} else if time.Now().After(deadline) {
			t.Fatalf("bird did not answer on %s: %v", r.Sock, err)
		}
		select {
		case <-r.done:
			b, _ := os.ReadFile(r.log.Name())
			t.Fatalf("bird exited: %s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops BIRD (SIGTERM, then SIGKILL).
func (r *Router) Close() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
	default:
		// ip netns exec execs bird itself: the signal reaches bird.
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(3 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
	}
	r.log.Close()
}

// Control runs birdc against this router and returns its output without
// the greeting line.
func (r *Router) Control(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.birdc, append([]string{"-s", r.Sock}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("birdc %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	s := string(out)
	if strings.HasPrefix(s, "BIRD ") {
		if _, rest, ok := strings.Cut(s, "\n"); ok {
			s = rest
		}
	}
	return s, nil
}

// Log returns what BIRD logged so far.
func (r *Router) Log() string {
	b, _ := os.ReadFile(r.log.Name())
	return string(b)
}

// Route is one route of BIRD's table (a prefix may have several).
type Route struct {
	Prefix    netip.Prefix
	Type      string // unicast, unreachable, ...
	Protocol  string // the BGP protocol (neighbour) it came from
	Primary   bool   // BIRD's best route for the prefix
	Preflags  string // flags after the preference, e.g. "s" for stale (LLGR)
	Via       netip.Addr
	Interface string
	ASPath    string
	NextHop   []netip.Addr // BGP.next_hop (global, and link-local for IPv6)
	// Communities as ASN:VALUE, in BIRD's order.
	Communities []string
	Attrs       map[string]string // every "Name: value" line, e.g. "BGP.origin"
}

var (
	routeLine = regexp.MustCompile(`^(\S+)?\s+(unicast|unreachable|blackhole|prohibit)\s+\[(\S+)\s[^\]]*\]\s*(\*)?\s*\((\d+)([^)]*)\)`)
	viaLine   = regexp.MustCompile(`^\s+via\s+(\S+)\s+on\s+(\S+)`)
	community = regexp.MustCompile(`\((\d+),(\d+)\)`)
)

// Routes returns the routes of the IPv4 master table ("show route all").
func (r *Router) Routes() ([]Route, error) {
	out, err := r.Control("show", "route", "all", "table", "master4")
	if err != nil {
		return nil, err
	}
	return ParseRoutes(out)
}

// ParseRoutes reads the output of birdc "show route all".
func ParseRoutes(out string) ([]Route, error) {
	var routes []Route
	var prefix netip.Prefix
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "Table ") {
			continue
		}
		if m := routeLine.FindStringSubmatch(line); m != nil {
			if m[1] != "" {
				p, err := netip.ParsePrefix(m[1])
				if err != nil {
					return nil, fmt.Errorf("bird route %q: %v", line, err)
				}
				prefix = p
			}
			if !prefix.IsValid() {
				return nil, fmt.Errorf("bird route without a prefix: %q", line)
			}
			routes = append(routes, Route{
				Prefix: prefix, Type: m[2], Protocol: m[3], Primary: m[4] == "*",
				Preflags: m[6], Attrs: map[string]string{},
			})
			continue
		}
		if len(routes) == 0 {
			continue
		}
		rt := &routes[len(routes)-1]
		if m := viaLine.FindStringSubmatch(line); m != nil {
			rt.Via, _ = netip.ParseAddr(m[1])
			rt.Interface = m[2]
			continue
		}
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		rt.Attrs[name] = value
		switch name {
		case "BGP.as_path":
			rt.ASPath = value
		case "BGP.next_hop":
			for _, f := range strings.Fields(value) {
				if a, err := netip.ParseAddr(f); err == nil {
					rt.NextHop = append(rt.NextHop, a)
				}
			}
		case "BGP.community":
			for _, m := range community.FindAllStringSubmatch(value, -1) {
				rt.Communities = append(rt.Communities, m[1]+":"+m[2])
			}
		}
	}
	return routes, sc.Err()
}

// Lookup returns the routes for p.
func Lookup(routes []Route, p netip.Prefix) []Route {
	var out []Route
	for _, r := range routes {
		if r.Prefix == p {
			out = append(out, r)
		}
	}
	return out
}

// Prefixes returns the distinct prefixes learnt from protocol proto (all
// protocols when proto is empty), sorted.
func Prefixes(routes []Route, proto string) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range routes {
		if (proto == "" || r.Protocol == proto) && !slices.Contains(out, r.Prefix) {
			out = append(out, r.Prefix)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// Protocol is the state of one BGP protocol ("show protocols NAME").
type Protocol struct {
	Name     string
	State    string // up, start, down
	BGPState string // Established, Connect, Active, Passive, Idle, ...
}

// Established reports whether the session is up.
func (p Protocol) Established() bool { return p.BGPState == "Established" }

// Protocol returns the state of the protocol name.
func (r *Router) Protocol(name string) (Protocol, error) {
	out, err := r.Control("show", "protocols", name)
	if err != nil {
		return Protocol{}, err
	}
	// Name Proto Table State Since Info
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == name {
			p := Protocol{Name: name, State: f[3]}
			if len(f) >= 6 {
				p.BGPState = f[5]
			}
			return p, nil
		}
	}
	return Protocol{}, fmt.Errorf("bird has no protocol %q: %s", name, out)
}

// Wait polls fn every 20 ms until it returns nil or timeout passes, and
// returns the time it took or fn's last error.
func Wait(timeout time.Duration, fn func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := fn()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitEstablished waits until the protocol name is Established.
func (r *Router) WaitEstablished(name string, timeout time.Duration) error {
	_, err := Wait(timeout, func() error {
		p, err := r.Protocol(name)
		if err != nil {
			return err
		}
		if !p.Established() {
			return fmt.Errorf("bird protocol %s: %s %s", name, p.State, p.BGPState)
		}
		return nil
	})
	return err
}

// FormatRoutes renders routes one a line, for failure messages.
func FormatRoutes(routes []Route) string {
	var b strings.Builder
	for _, r := range routes {
		fmt.Fprintf(&b, "%s from %s via %s nh %v %v comm %v\n", r.Prefix, r.Protocol, r.Via, r.NextHop, r.Preflags, r.Communities)
	}
	if b.Len() == 0 {
		return "(no routes)"
	}
	return b.String()
}

// FirstAS is the first AS of the route's AS path: the neighbour's.
func (r Route) FirstAS() uint32 {
	f := strings.Fields(r.ASPath)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 32)
	return uint32(n)
}
