package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fourover6/fourover6/cmd/internal/clidoc"
	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/nice"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
)

const (
	name = "4over6-client"
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
	routeHold         time.Duration
	helloResend       time.Duration
	once              bool
	log               logging.Options
	pprof             string // debugging: net/http/pprof address
	nice              int
	rtPriority        int
	configFile        string // --config, re-read on SIGHUP
}

// usageError is a bad command line or config file: exit status 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func flagErr(name, format string, a ...any) error {
	return usageError{errors.New("--" + name + " " + fmt.Sprintf(format, a...))}
}

// options are the flags as given, before validation turns them into a
// config.
type options struct {
	c          config
	backend    string
	pool       string
	routes     prefixList
	configFile *string
	checks     *cfgpkg.Checks
}

const long = `4over6-client is the Linux client of the 4over6 tunnel. It connects over
TCP/IPv6 to a 4over6 server (fourover6's data plane, or the lab's server),
asks for an IPv4 address (100), applies the answer (101) to a TUN interface,
and carries IPv4 packets both ways. It sends a 104 every --keepalive-interval,
drops a server silent for --keepalive-timeout and reconnects: at once after an
established connection breaks, then with exponential backoff (--reconnect-min
to --reconnect-max). While it reconnects the TUN, its address and the routes
stay (for --route-hold), so connections inside the tunnel survive a short
outage; a 101 with the same address changes nothing.

The TUN gets the leased address as a /32; routes decide what goes through it.
When the 101's route is 0.0.0.0, the IPv4 default route goes through the TUN
(the old one is restored on exit, or once a reconnect takes longer than
--route-hold); with --keep-default-route,
or another route in the 101, only the pool (--pool, default the /24 of the
leased address) and that route do. --route prefixes are added in every case.
DNS is left alone unless --resolv-conf names a file to write the 101's three
servers to (its content is put back on exit).

Every flag can also come from a YAML file (--config FILE): keys are flag
names, flags on the command line win, an unknown key is an error naming it.
SIGHUP re-reads the file and applies the log level. SIGINT or SIGTERM closes
the connection, undoes the routes and DNS, and exits 0.

Exit codes:
  0  stopped by a signal, or --check-config found nothing wrong
  1  with --once: the session failed
  2  bad flags or config file (restarting will not help)`

const examples = `  # The default route through the tunnel:
  4over6-client --server '[2001:db8::1]:5678'
  # Only the pool and one more network through it; the server's DNS in resolv.conf:
  4over6-client --server vpn.example.org:5678 --keep-default-route --route 10.0.0.0/8 --resolv-conf /etc/resolv.conf
  # Settings from a file (as the 4over6-client@NAME systemd unit does), checked first:
  4over6-client --config /etc/fourover6/client-lab.yaml --check-config
  4over6-client --config /etc/fourover6/client-lab.yaml`

// newCommand returns the client's command. start runs with the validated
// configuration unless --check-config or --print-config stops it first.
func newCommand(start func(*cobra.Command, config) error) *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:     name + " --server HOST:PORT [flags]",
		Short:   "The 4over6 client: IPv4 over a TCP/IPv6 tunnel, on a TUN interface",
		Long:    long,
		Example: examples,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %q (all settings are flags)", args[0])}
			}
			return nil
		},
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfgpkg.ApplyFlag(cmd.Flags()); err != nil {
				return usageError{err}
			}
			c, err := o.config()
			if err != nil {
				return err
			}
			if o.checks.Requested() { // validation only: no TUN, no connection
				return o.checks.Finish(cmd.OutOrStdout(), cmd.Flags())
			}
			return start(cmd, c)
		},
	}
	version.SetCommand(cmd) // --version: version, commit, build date, Go version
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	o.register(cmd.Flags())
	for flag, values := range map[string][]string{
		"tun-backend":        backendNames(),
		"log-level":          {"debug", "info", "warn", "error"},
		"log-format":         {"text", "json"},
		logging.PriorityFlag: logging.PriorityValues,
	} {
		cmd.RegisterFlagCompletionFunc(flag, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
	}
	clidoc.AddTo(cmd, "8")
	return cmd
}

// register defines the flags. Their names, defaults and meanings are
// contracts: scripts and the tests use them.
func (o *options) register(fs *pflag.FlagSet) {
	fs.SortFlags = false
	c := &o.c
	fs.StringVar(&c.server, "server", "", "4over6 server `host:port`, e.g. [fd00:46::1]:5678 (required; reached over IPv6)")
	fs.StringVar(&c.tunName, "tun", "4o6c", "TUN interface `name`")
	fs.StringVar(&o.backend, "tun-backend", string(tun.BackendAuto), fmt.Sprintf("TUN backend %v: auto takes offload (TSO, several times faster) where the kernel supports it, else water (one packet per system call)", tun.Choices()))
	fs.IntVar(&c.mtu, "mtu", 1500, fmt.Sprintf("TUN MTU (%d..%d: messages stay within 2053 bytes on the wire)", minMTU, maxMTU))
	fs.BoolVar(&c.keepDefaultRoute, "keep-default-route", false, "keep the existing IPv4 default route; route only --pool (and --route) through the tunnel")
	fs.StringVar(&o.pool, "pool", "", "`CIDR` routed through the tunnel when the default route is not taken (default: the /24 holding the leased address)")
	fs.Var(&o.routes, "route", "extra `CIDR` to route through the tunnel (repeatable, or a comma-separated list)")
	fs.StringVar(&c.resolvConf, "resolv-conf", "", "write the server's three DNS servers to this `file` as nameserver lines, restored on exit (default: leave DNS alone)")
	fs.DurationVar(&c.keepaliveInterval, "keepalive-interval", 20*time.Second, "send a 104 this often")
	fs.DurationVar(&c.keepaliveTimeout, "keepalive-timeout", 60*time.Second, "drop and reconnect when the server is silent this long; also the wait for the 101")
	fs.DurationVar(&c.reconnectMin, "reconnect-min", time.Second, "first reconnect delay (doubles, with jitter, up to --reconnect-max)")
	fs.DurationVar(&c.reconnectMax, "reconnect-max", 30*time.Second, "longest reconnect delay")
	fs.DurationVar(&c.routeHold, "route-hold", 2*time.Minute, "keep the address and routes this long while reconnecting, so connections inside the tunnel survive a short outage (0: give the host its routes back at once)")
	fs.BoolVar(&c.once, "once", false, "exit instead of reconnecting (non-zero exit status when the session failed)")
	fs.StringVar(&c.log.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.log.Format, "log-format", "text", "text or json")
	fs.StringVar(&c.log.Priority, logging.PriorityFlag, logging.PriorityAuto, logging.PriorityUsage)
	o.configFile = cfgpkg.AddFlag(fs, "")
	o.checks = cfgpkg.AddCheckFlags(fs)
	fs.IntVar(&c.nice, "nice", nice.Default, "nice `value` of this process (-20..19): below 0 lets a packet's wake-up come before the host's bulk work; 0 keeps the inherited priority")
	fs.IntVar(&c.rtPriority, "rt-priority", nice.DefaultRealtime, "real-time (SCHED_RR) `priority` of this process (1..99) so that a packet's wake-up does not wait for the host's bulk work at all; 0 keeps the time-sharing scheduler")
	fs.StringVar(&c.pprof, "pprof", "", "serve Go profiles (net/http/pprof) on this `address`, for debugging")
	fs.MarkHidden("pprof")
}

func backendNames() []string {
	var s []string
	for _, b := range tun.Choices() {
		s = append(s, string(b))
	}
	return s
}

// config validates the flags and returns the configuration.
func (o *options) config() (config, error) {
	c := o.c
	c.tunBackend = tun.Backend(o.backend)
	c.routes = slices.Clone(o.routes)
	c.helloResend = helloResend
	c.configFile = *o.configFile
	if err := validateServer(c.server); err != nil {
		return c, err
	}
	if c.tunName == "" || len(c.tunName) > 15 || strings.ContainsAny(c.tunName, "/ \t\n:") || c.tunName == "." || c.tunName == ".." {
		return c, flagErr("tun", "%q: want an interface name of 1..15 characters without '/', ':' or spaces", c.tunName)
	}
	if !slices.Contains(tun.Choices(), c.tunBackend) {
		return c, flagErr("tun-backend", "%q: want one of %v", c.tunBackend, tun.Choices())
	}
	if err := nice.Validate("--nice", c.nice); err != nil {
		return c, usageError{err}
	}
	if err := nice.ValidateRealtime("--rt-priority", c.rtPriority); err != nil {
		return c, usageError{err}
	}
	if c.mtu < minMTU || c.mtu > maxMTU {
		return c, flagErr("mtu", "%d: want %d..%d (larger messages exceed 2053 bytes on the wire)", c.mtu, minMTU, maxMTU)
	}
	if o.pool != "" {
		p, err := parsePrefix4(o.pool)
		if err != nil {
			return c, flagErr("pool", "%v", err)
		}
		if p.Bits() == 0 {
			return c, flagErr("pool", "%s is the whole IPv4 space: leave out --keep-default-route instead", p)
		}
		c.pool = p
	}
	if c.resolvConf != "" {
		if st, err := os.Stat(filepath.Dir(c.resolvConf)); err != nil || !st.IsDir() {
			return c, flagErr("resolv-conf", "%q: directory %q does not exist", c.resolvConf, filepath.Dir(c.resolvConf))
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
			return c, flagErr(d.name, "%s: want a positive duration", d.v)
		}
	}
	if c.routeHold < 0 {
		return c, flagErr("route-hold", "%s: want 0 or a positive duration", c.routeHold)
	}
	if c.reconnectMax < c.reconnectMin {
		return c, flagErr("reconnect-max", "%s is below --reconnect-min %s", c.reconnectMax, c.reconnectMin)
	}
	if _, _, err := logging.New(io.Discard, c.log); err != nil {
		return c, usageError{err} // already names the flag
	}
	return c, nil
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

// prefixList is --route: repeatable, and each value may be a
// comma-separated list. It is a pflag.SliceValue, so a config file can
// give it as a YAML list and --print-config prints it as one.
type prefixList []netip.Prefix

func (p *prefixList) String() string { return strings.Join(p.GetSlice(), ",") }

func (p *prefixList) Type() string { return "prefixList" }

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

func (p *prefixList) Append(v string) error { return p.Set(v) }

func (p *prefixList) Replace(vs []string) error {
	var q prefixList
	for _, v := range vs {
		if err := q.Set(v); err != nil {
			return err
		}
	}
	*p = q
	return nil
}

func (p *prefixList) GetSlice() []string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = v.String()
	}
	return s
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

// singleDash rewrites "-name" and "-name=value" to "--name" forms for the
// long flags of fs. The client parsed its command line with Go's flag
// package before, which takes both; command lines written for it keep
// working. Values of flags are passed through untouched, and so is
// everything after "--" or when the first argument is a subcommand.
func singleDash(fs *pflag.FlagSet, args []string) []string {
	if len(args) == 0 || !strings.HasPrefix(args[0], "-") {
		return args
	}
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			out = append(out, a)
			continue
		}
		dashes := 1
		if strings.HasPrefix(a, "--") {
			dashes = 2
		}
		flagName, _, hasValue := strings.Cut(a[dashes:], "=")
		f := fs.Lookup(flagName)
		if f == nil || (dashes == 1 && len(flagName) == 1) {
			out = append(out, a) // unknown (pflag says so) or a shorthand
			continue
		}
		out = append(out, "--"+a[dashes:])
		if !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
			i++
			out = append(out, args[i]) // the flag's value, whatever it looks like
		}
	}
	return out
}
