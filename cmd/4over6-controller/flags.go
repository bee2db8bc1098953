package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
)

// Defaults. The flag names and these values are contracts: scripts and units rely on them.
const (
	defaultPool       = "13.8.0.0/24"
	defaultResolvConf = "/etc/resolv.conf"
	defaultRoute      = "0.0.0.0"
	defaultListen     = "unix:///run/fourover6/controller.sock"
	defaultState      = "/var/lib/fourover6/controller.db"
	defaultStore      = "bbolt"
)

// flags are the raw command-line values.
type flags struct {
	pool       string
	poolRange  string
	dns        []string
	resolvConf string
	route      string
	listen     string
	state      string
	store      string
	restore    stateFlags
	id         string
	grace      time.Duration
	dpTimeout  time.Duration
	heartbeat  time.Duration
	cooldown   time.Duration
	electTTL   time.Duration
	perIP      leaseLimit
	perPrefix  leaseLimit
	prefixLen  int
	logLevel   string
	logFormat  string
	logPrefix  string
	metrics    string
	pprof      string
	tls        tlsconf.Files
	configFile *string
	checks     *cfgpkg.Checks
}

func (f *flags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.pool, "pool", defaultPool, "IPv4 `CIDR` of the address pool; its first host address is the gateway (the data planes' TUN address)")
	fs.StringVar(&f.poolRange, "pool-range", "", "narrow the client addresses to `FIRST-LAST`, e.g. 13.8.0.2-13.8.0.128 (default: every host address but the gateway)")
	fs.StringSliceVar(&f.dns, "dns", nil, "up to three IPv4 DNS servers for the 101 message, comma separated `a,b,c` (default: nameservers of --resolv-conf, padded with 8.8.8.8, 1.1.1.1, 9.9.9.9)")
	fs.StringVar(&f.resolvConf, "resolv-conf", defaultResolvConf, "resolv.conf to read DNS servers from when --dns is not given")
	fs.StringVar(&f.route, "route", defaultRoute, "route field of the 101 message (0.0.0.0: default route through the tunnel)")
	fs.StringVar(&f.listen, "listen", defaultListen, "gRPC `address`: unix:///path/to.sock or host:port")
	fs.StringVar(&f.state, "state", defaultState, "`PATH` of the bbolt state file (leases, reservations, settings, data planes); its directory is created")
	fs.StringVar(&f.store, "store", defaultStore, "where state lives: bbolt (the file at --state) or etcd://host:2379[,host:2379][/prefix] (several controllers, one leads)")
	f.restore.register(fs)
	host, _ := os.Hostname()
	fs.StringVar(&f.id, "controller-id", host, "this controller's name in status output and the leader election")
	fs.DurationVar(&f.grace, "grace-period", controller.DefaultGracePeriod, "release the leases of a data plane down this long, and leases its complete reports stopped listing this long")
	fs.DurationVar(&f.dpTimeout, "dataplane-timeout", controller.DefaultDataplaneTimeout, "a data plane not heard from for this long is marked DOWN")
	fs.DurationVar(&f.heartbeat, "heartbeat-interval", controller.DefaultHeartbeatInterval, "how often data planes are told to heartbeat")
	fs.DurationVar(&f.cooldown, "reuse-cooldown", controller.DefaultReuseCooldown, "a released address rests this long before it is reused, unless no other address is free")
	fs.Var(&f.perIP, "max-leases-per-ip", fmt.Sprintf("leases one client IPv6 address may hold at once, across all data planes: `N`, 0 for no limit, or auto (1/%d of the pool's client addresses, at least 1); a client's reservation is exempt", autoPerIP))
	fs.Var(&f.perPrefix, "max-leases-per-prefix", fmt.Sprintf("leases the clients of one --lease-prefix-length prefix may hold at once: `N`, 0 for no limit, or auto (1/%d of the pool's client addresses, at least 1)", autoPerPrefix))
	fs.IntVar(&f.prefixLen, "lease-prefix-length", pool.DefaultLimitPrefixLen, "length of the client IPv6 prefixes --max-leases-per-prefix counts (a /64 is usually one site)")
	fs.DurationVar(&f.electTTL, "election-ttl", 5*time.Second, "etcd only: session TTL of the leader election; a dead leader is replaced within about this long (whole seconds, at least 1s)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logPrefix, logging.PriorityFlag, logging.PriorityAuto, logging.PriorityUsage)
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics, /healthz and /readyz on this `address` (host:port or unix:///path; empty: off)")
	fs.StringVar(&f.pprof, "pprof", "", "serve Go profiles (net/http/pprof) on this `address`, for debugging")
	fs.MarkHidden("pprof")
	fs.StringVar(&f.tls.Cert, "tls-cert", "", "certificate (PEM) of the gRPC API; with --tls-key and --tls-ca it requires client certificates (mutual TLS)")
	fs.StringVar(&f.tls.Key, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&f.tls.CA, "tls-ca", "", "CA (PEM) that signs the clients' certificates")
	f.configFile = cfgpkg.AddFlag(fs, "")
	f.checks = cfgpkg.AddCheckFlags(fs)
}

// config is the validated configuration.
type config struct {
	pool       pool.Config
	dns        []netip.Addr // configured; empty means resolv.conf + fallbacks
	resolvConf string
	route      netip.Addr
	listen     endpoint.Endpoint
	state      string
	etcd       *store.EtcdConfig // nil: bbolt at state
	restore    stateFlags
	id         string
	grace      time.Duration
	dpTimeout  time.Duration
	heartbeat  time.Duration
	cooldown   time.Duration
	electTTL   time.Duration
	limits     pool.Limits
	log        logging.Options
	metrics    string
	pprof      string
	tls        tlsconf.Files
	configFile string
}

// config validates every flag before anything is started, so a typo fails
// fast with exit code 2 and a message naming the flag.
func (f *flags) config() (config, error) {
	var c config
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	prefix, err := netip.ParsePrefix(strings.TrimSpace(f.pool))
	if err != nil {
		add(fmt.Errorf("--pool %q: not a CIDR prefix: want e.g. %s", f.pool, defaultPool))
	}
	rng, err := pool.ParseRange(f.poolRange)
	if err != nil {
		add(fmt.Errorf("--pool-range %v", err))
	}
	if len(errs) == 0 {
		c.pool = pool.Config{Prefix: prefix, Range: rng}
		if _, err := pool.New(c.pool); err != nil {
			var ce *pool.ConfigError
			if errors.As(err, &ce) && ce.Field == "range" {
				add(fmt.Errorf("--pool-range %q: %v", f.poolRange, err))
			} else {
				add(fmt.Errorf("--pool %q: %v", f.pool, err))
			}
		}
	}

	if len(f.dns) > 0 {
		list, err := dns.ParseList(strings.Join(f.dns, ","))
		if err != nil {
			add(fmt.Errorf("--dns: %v", err))
		}
		c.dns = list
	}
	c.resolvConf = f.resolvConf
	if len(f.dns) == 0 && strings.TrimSpace(f.resolvConf) == "" {
		add(errors.New("--resolv-conf is empty: give a path (a missing file is fine) or set --dns"))
	}

	if c.route, err = netip.ParseAddr(strings.TrimSpace(f.route)); err != nil || !c.route.Is4() {
		add(fmt.Errorf("--route %q: want an IPv4 address (0.0.0.0 for the default route)", f.route))
	}

	if c.listen, err = endpoint.Parse(f.listen); err != nil {
		add(fmt.Errorf("--listen: %v", err))
	} else if err := f.tls.RequireFor("--listen", c.listen); err != nil {
		add(err)
	}
	if err := f.tls.Validate(); err != nil {
		add(err)
	}
	c.tls = f.tls
	if f.metrics != "" {
		if _, err := endpoint.Parse(f.metrics); err != nil {
			add(fmt.Errorf("--metrics: %v", err))
		}
	}
	c.metrics = f.metrics
	c.pprof = f.pprof
	if f.configFile != nil {
		c.configFile = *f.configFile
	}

	c.state = f.state
	switch st := strings.TrimSpace(f.store); {
	case st == "bbolt" || st == "":
		if err := checkStatePath(f.state); err != nil {
			add(err)
		}
	case strings.HasPrefix(st, "etcd://"):
		ec, err := store.ParseEtcdURL(st)
		if err != nil {
			add(fmt.Errorf("--store %v", err))
		} else {
			c.etcd = &ec
		}
	default:
		add(fmt.Errorf("--store %q: want bbolt or etcd://host:2379[,host:2379]", f.store))
	}
	c.restore = f.restore
	for _, err := range f.restore.check(c.etcd != nil) {
		add(err)
	}
	c.id = strings.TrimSpace(f.id)
	if c.id == "" || len(c.id) > controller.MaxIDLen {
		add(fmt.Errorf("--controller-id %q: give a name of 1 to %d bytes", f.id, controller.MaxIDLen))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--grace-period", f.grace}, {"--dataplane-timeout", f.dpTimeout}, {"--heartbeat-interval", f.heartbeat}, {"--election-ttl", f.electTTL}} {
		if d.v <= 0 {
			add(fmt.Errorf("%s %s: must be positive", d.name, d.v))
		}
	}
	if f.heartbeat > 0 && f.dpTimeout > 0 && f.dpTimeout < 2*f.heartbeat {
		add(fmt.Errorf("--dataplane-timeout %s: must be at least twice --heartbeat-interval %s, or one late heartbeat marks a data plane down", f.dpTimeout, f.heartbeat))
	}
	if f.cooldown < 0 {
		add(fmt.Errorf("--reuse-cooldown %s: must be 0 or more", f.cooldown))
	}
	if f.electTTL > 0 && f.electTTL < time.Second {
		add(fmt.Errorf("--election-ttl %s: etcd leases count whole seconds; give at least 1s", f.electTTL))
	}
	c.grace, c.dpTimeout, c.heartbeat, c.cooldown, c.electTTL = f.grace, f.dpTimeout, f.heartbeat, f.cooldown, f.electTTL
	if f.prefixLen < 1 || f.prefixLen > 128 {
		add(fmt.Errorf("--lease-prefix-length %d: want 1 to 128 (64: one IPv6 subnet)", f.prefixLen))
	}
	if p, err := pool.New(c.pool); err == nil {
		size := int(p.Stats().Size)
		c.limits = pool.Limits{PerIP: f.perIP.value(size, autoPerIP), PerPrefix: f.perPrefix.value(size, autoPerPrefix), PrefixLen: f.prefixLen}
	}

	c.log = logging.Options{Level: f.logLevel, Format: f.logFormat, Priority: f.logPrefix}
	if _, _, err := logging.New(nil, c.log); err != nil {
		add(err) // logging names the flag itself
	}
	return c, errors.Join(errs...)
}

// checkFiles is what --check-config checks beyond config: that the TLS
// files load. It reads files and opens no socket and no store.
func (c config) checkFiles() error {
	if !c.tls.Set() {
		return nil
	}
	_, err := c.tls.ServerOption()
	return err
}

// checkStatePath validates --state before anything is started.
func checkStatePath(p string) error {
	if strings.TrimSpace(p) == "" {
		return fmt.Errorf("--state is empty: give a file path such as %s", defaultState)
	}
	if strings.HasSuffix(p, "/") {
		return fmt.Errorf("--state %q: is a directory path; give a file path such as %s", p, defaultState)
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		return fmt.Errorf("--state %q: is a directory; give a file path such as %s", p, defaultState)
	}
	return nil
}

// The auto lease limits: these fractions of the pool's client addresses
// (at least 1), so that no one host (an IPv6 address) takes more than about
// 6% of the pool, and no one site (a /64) more than a quarter of it, however
// many connections it opens. Reservations are exempt.
const (
	autoPerIP     = 16
	autoPerPrefix = 4
)

// leaseLimit is the value of --max-leases-per-ip and --max-leases-per-prefix:
// a number of leases (0: no limit) or "auto".
type leaseLimit struct {
	n   int
	set bool // a number was given; otherwise auto
}

func (l *leaseLimit) String() string {
	if !l.set {
		return "auto"
	}
	return strconv.Itoa(l.n)
}

func (l *leaseLimit) Set(s string) error {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "auto") {
		*l = leaseLimit{}
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a number of leases, 0 for no limit, or auto", s)
	}
	*l = leaseLimit{n: n, set: true}
	return nil
}

func (l *leaseLimit) Type() string { return "N|auto" }

// value is the limit for a pool of size client addresses.
func (l *leaseLimit) value(size, fraction int) int {
	if l.set {
		return l.n
	}
	return max(1, size/fraction)
}
