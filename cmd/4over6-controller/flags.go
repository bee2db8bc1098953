package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fourover6/fourover6/cmd/internal/endpoint"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/pool"
)

// Defaults. The flag names and these values are contracts (issue 2).
const (
	defaultPool       = "13.8.0.0/24"
	defaultResolvConf = "/etc/resolv.conf"
	defaultRoute      = "0.0.0.0"
	defaultListen     = "unix:///run/fourover6/controller.sock"
	defaultState      = "/var/lib/fourover6/controller.db"
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
	logLevel   string
	logFormat  string
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
	fs.StringVar(&f.state, "state", defaultState, "`PATH` of the lease database (not used yet: leases are kept in memory in this version)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
}

// config is the validated configuration.
type config struct {
	pool       pool.Config
	dns        []netip.Addr // configured; empty means resolv.conf + fallbacks
	resolvConf string
	route      netip.Addr
	listen     endpoint.Endpoint
	state      string
	log        logging.Options
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
	}

	c.state = f.state
	if err := checkStatePath(f.state); err != nil {
		add(err)
	}

	c.log = logging.Options{Level: f.logLevel, Format: f.logFormat}
	if _, _, err := logging.New(nil, c.log); err != nil {
		add(err) // logging names the flag itself
	}
	return c, errors.Join(errs...)
}

// checkStatePath validates --state without creating anything: durability
// comes in a later version, but a bad path should fail now, not then.
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
