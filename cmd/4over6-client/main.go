// Command 4over6-client is the Linux client of the 4over6 tunnel: it
// connects over TCP/IPv6 to a 4over6 server (ours or the lab's), asks for an
// IPv4 address (100), applies the answer (101) to a TUN interface, and then
// carries IPv4 packets both ways (TUN -> 102, 103 -> TUN). It sends a 104
// every --keepalive-interval, drops a server silent for --keepalive-timeout
// and reconnects with exponential backoff. See PROTOCOL.md for the wire
// format.
//
// Usage:
//
//	4over6-client --server '[fd00:46::1]:5678' [--tun 4o6c] [--keep-default-route]
//
// The TUN gets the leased address as a /32 (it is point-to-point); routes
// decide what goes through it:
//
//   - ROUTE 0.0.0.0 in the 101: the IPv4 default route goes through the TUN,
//     replacing the host's (safe: the server is reached over IPv6). The old
//     default route is restored on disconnect and on exit.
//   - with --keep-default-route, or when ROUTE is anything else: the pool
//     (--pool, default the /24 holding the leased address) so the gateway and
//     the other clients are reachable, plus ROUTE itself: a bare address is a
//     host route (/32), "a.b.c.d/n" (not sent by known servers, but accepted)
//     that prefix.
//   - --route prefixes are added in every case.
//
// DNS is left alone unless --resolv-conf names a file: the three servers of
// the 101 are then written there as nameserver lines, and the file's old
// content is put back on exit.
//
// The TUN is created once and kept across reconnects; SIGINT or SIGTERM
// closes the connection, removes the routes, restores the default route and
// --resolv-conf, closes the TUN and exits 0. Bad flags exit 2; with --once a
// failed session exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/debug"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
)

const (
	// maxMTU keeps every 102/103 at most 2053 bytes on the wire: two public
	// lab clients drop larger messages (PROTOCOL.md).
	maxMTU = 2053 - wire.HeaderLen
	// minMTU is the smallest MTU IPv4 allows (RFC 791).
	minMTU = 68
	// helloResend is how often the 100 is repeated while no 101 came back;
	// PROTOCOL.md allows it and one lab client does the same every 3 s.
	helloResend = 3 * time.Second
)

// config is the validated command line.
type config struct {
	server            string // host:port, dialled over TCP/IPv6
	tunName           string
	tunBackend        tun.Backend
	mtu               int
	keepDefaultRoute  bool
	pool              netip.Prefix   // zero: the /24 holding the leased address
	routes            []netip.Prefix // extra prefixes through the tunnel
	resolvConf        string         // empty: leave DNS alone
	keepaliveInterval time.Duration
	keepaliveTimeout  time.Duration
	reconnectMin      time.Duration
	reconnectMax      time.Duration
	helloResend       time.Duration
	once              bool
	log               logging.Options
	pprof             string // debugging: net/http/pprof address
}

// usageError is a bad command line; main exits 2 on it.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func flagErr(name, format string, a ...any) error {
	return &usageError{msg: "--" + name + " " + fmt.Sprintf(format, a...)}
}

// prefixList is a repeatable flag that also takes comma-separated lists.
type prefixList []netip.Prefix

func (p *prefixList) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		pfx, err := parsePrefix4(part)
		if err != nil {
			return err
		}
		if !slices.Contains(*p, pfx) {
			*p = append(*p, pfx)
		}
	}
	return nil
}

// parsePrefix4 takes an IPv4 CIDR or a bare IPv4 address (a /32). Host bits
// are cleared: 10.1.2.3/8 means 10.0.0.0/8.
func parsePrefix4(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not IPv4 (the tunnel carries IPv4 only)", s)
	}
	return p.Masked(), nil
}

// parseFlags parses and validates args. Problems are printed to out; a
// *usageError (or the flag package's own error) means exit 2, flag.ErrHelp
// exit 0.
func parseFlags(args []string, out io.Writer) (config, bool, error) {
	fs := flag.NewFlagSet("4over6-client", flag.ContinueOnError)
	fs.SetOutput(out)
	var (
		c        config
		backend  string
		pool     string
		routes   prefixList
		showVers bool
	)
	fs.StringVar(&c.server, "server", "", "4over6 server `host:port`, e.g. [fd00:46::1]:5678 (required; reached over IPv6)")
	fs.StringVar(&c.tunName, "tun", "4o6c", "TUN interface `name`")
	fs.StringVar(&backend, "tun-backend", string(tun.BackendWater), fmt.Sprintf("TUN backend %v", tun.Backends()))
	fs.IntVar(&c.mtu, "mtu", 1500, fmt.Sprintf("TUN MTU (%d..%d: messages stay within 2053 bytes on the wire)", minMTU, maxMTU))
	fs.BoolVar(&c.keepDefaultRoute, "keep-default-route", false, "keep the existing IPv4 default route; route only --pool (and --route) through the tunnel")
	fs.StringVar(&pool, "pool", "", "`CIDR` routed through the tunnel when the default route is not taken (default: the /24 holding the leased address)")
	fs.Var(&routes, "route", "extra `CIDR` to route through the tunnel (repeatable, or a comma-separated list)")
	fs.StringVar(&c.resolvConf, "resolv-conf", "", "write the server's three DNS servers to this `file` as nameserver lines, restored on exit (default: leave DNS alone)")
	fs.DurationVar(&c.keepaliveInterval, "keepalive-interval", 20*time.Second, "send a 104 this often")
	fs.DurationVar(&c.keepaliveTimeout, "keepalive-timeout", 60*time.Second, "drop and reconnect when the server is silent this long; also the wait for the 101")
	fs.DurationVar(&c.reconnectMin, "reconnect-min", time.Second, "first reconnect delay (doubles, with jitter, up to --reconnect-max)")
	fs.DurationVar(&c.reconnectMax, "reconnect-max", 30*time.Second, "longest reconnect delay")
	fs.BoolVar(&c.once, "once", false, "exit instead of reconnecting (non-zero exit status when the session failed)")
	fs.StringVar(&c.log.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.log.Format, "log-format", "text", "text or json")
	fs.StringVar(&c.pprof, "pprof", "", "serve Go profiles (net/http/pprof) on this `address`, for debugging")
	fs.BoolVar(&showVers, "version", false, "print the version and exit")
	fs.Usage = func() { usage(fs) }

	if err := fs.Parse(args); err != nil {
		return c, false, err // the flag package printed it with the usage
	}
	if showVers {
		return c, true, nil
	}
	c.tunBackend = tun.Backend(backend)
	c.routes = routes
	c.helloResend = helloResend
	err := c.validate(fs.Args(), pool)
	if err != nil {
		fmt.Fprintf(out, "4over6-client: %v\n", err)
	}
	return c, false, err
}

// usage prints the flags the way they are documented: with two dashes.
func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintf(w, "Usage: 4over6-client --server HOST:PORT [flags]\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		name, help := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n    \t%s", help)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func (c *config) validate(rest []string, pool string) error {
	if len(rest) > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected argument %q (all settings are flags)", rest[0])}
	}
	if err := validateServer(c.server); err != nil {
		return err
	}
	if c.tunName == "" || len(c.tunName) > 15 || strings.ContainsAny(c.tunName, "/ \t\n:") || c.tunName == "." || c.tunName == ".." {
		return flagErr("tun", "%q: want an interface name of 1..15 characters without '/', ':' or spaces", c.tunName)
	}
	if !slices.Contains(tun.Backends(), c.tunBackend) {
		return flagErr("tun-backend", "%q: want one of %v", c.tunBackend, tun.Backends())
	}
	if c.mtu < minMTU || c.mtu > maxMTU {
		return flagErr("mtu", "%d: want %d..%d (larger messages exceed 2053 bytes on the wire)", c.mtu, minMTU, maxMTU)
	}
	if pool != "" {
		p, err := parsePrefix4(pool)
		if err != nil {
			return flagErr("pool", "%v", err)
		}
		if p.Bits() == 0 {
			return flagErr("pool", "%s is the whole IPv4 space: leave out --keep-default-route instead", p)
		}
		c.pool = p
	}
	if c.resolvConf != "" {
		if st, err := os.Stat(filepath.Dir(c.resolvConf)); err != nil || !st.IsDir() {
			return flagErr("resolv-conf", "%q: directory %q does not exist", c.resolvConf, filepath.Dir(c.resolvConf))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"keepalive-interval", c.keepaliveInterval},
		{"keepalive-timeout", c.keepaliveTimeout},
		{"reconnect-min", c.reconnectMin},
		{"reconnect-max", c.reconnectMax},
	} {
		if d.v <= 0 {
			return flagErr(d.name, "%s: want a positive duration", d.v)
		}
	}
	if c.reconnectMax < c.reconnectMin {
		return flagErr("reconnect-max", "%s is below --reconnect-min %s", c.reconnectMax, c.reconnectMin)
	}
	if _, _, err := logging.New(io.Discard, c.log); err != nil {
		return &usageError{msg: err.Error()} // already names the flag
	}
	return nil
}

// validateServer checks host:port. The transport is IPv6 (that is the point
// of 4over6, and it is what makes taking the IPv4 default route safe), so an
// IPv4 literal is refused; a host name is allowed and resolved to IPv6.
func validateServer(s string) error {
	if s == "" {
		return flagErr("server", "is required, e.g. --server '[fd00:46::1]:5678'")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return flagErr("server", "%q: want host:port with IPv6 literals in brackets, e.g. [fd00:46::1]:5678", s)
	}
	if host == "" {
		return flagErr("server", "%q: missing host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return flagErr("server", "%q: port %q is not a number in 1..65535", s, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() || a.Is4In6() {
			return flagErr("server", "%q: %s is an IPv4 address; the 4over6 server is reached over IPv6", s, host)
		}
	} else if strings.ContainsAny(host, " /%[]") || strings.Count(host, ":") > 0 {
		return flagErr("server", "%q: %q is neither an IPv6 address nor a host name", s, host)
	}
	return nil
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	cfg, showVersion, err := parseFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	case showVersion:
		fmt.Fprintln(stdout, "4over6-client", version.String())
		return 0
	}
	log, _, err := logging.New(stderr, cfg.log)
	if err != nil { // validated already
		fmt.Fprintf(stderr, "4over6-client: %v\n", err)
		return 2
	}
	if err := debug.ServePprof(cfg.pprof, log); err != nil {
		fmt.Fprintf(stderr, "4over6-client: --pprof: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "version", version.String(), "server", cfg.server, "tun", cfg.tunName)
	if err := newClient(cfg, log).run(ctx); err != nil {
		log.Error("client stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}
