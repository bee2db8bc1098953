package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/nice"
	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	"github.com/fourover6/fourover6/dataplane/policy"
	"github.com/fourover6/fourover6/dataplane/sendq"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/spf13/cobra"
)

type options struct {
	id                string
	controller        string
	listen            string
	tunName           string
	tunBackend        string
	mtu               int
	api               string
	keepaliveInterval time.Duration
	keepaliveTimeout  time.Duration
	writeTimeout      time.Duration
	reportInterval    time.Duration
	allocateTimeout   time.Duration
	sendQueue         int
	sendQueueBytes    int
	sendQueueDelay    time.Duration
	maxClients        int
	maxConnsPerIP     int
	maxConnsPerPrefix int
	prefixLen         int
	acceptRate        float64
	acceptBurst       int
	prefixAcceptRate  float64
	prefixAcceptBurst int
	logLevel          string
	logFormat         string
	logPrefix         string
	tls               tlsconf.Files
	pprof             string
	nice              int
	rtPriority        int
	metrics           string
	nat               bool
	natInterfaces     []string
	allow, deny       []string
	clientToClient    bool
	handoffTimeout    time.Duration
	pidFile           string
	bgp               bgpOptions
	configFile        *string
	checks            *config.Checks
	args              []string // the command line, read again on SIGHUP
}

func newCommand(o *options) *cobra.Command {
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "4over6-dataplane",
		Short: "4over6 data plane: TUN, client connections, 102/103 forwarding, keepalives",
		Long: `4over6 data plane: TUN, client connections, 102/103 forwarding, keepalives.

It opens its TUN, its client listener and its API first, then registers with
the controller (waiting for it as long as it takes) and gives the TUN the
address the controller assigns. On SIGTERM or SIGINT it stops accepting,
closes the sessions and tells the controller it stopped (their leases are
released in one call).

On SIGUSR2 (or 4over6ctl dataplane upgrade) it hands over, live: it starts
the binary at its path with the same arguments and gives the new process
its listeners, the TUN, every client connection and each session's state;
the new process carries on the same instance at the controller and this one
exits. Clients see a pause, not a disconnect. A new process that fails or
is not ready within --handoff-timeout is killed, and this one serves on.

Exit codes:
  0  stopped on a signal
  1  a failure at run time (restarting may help)
  2  a configuration error an operator must fix: bad flags or config file,
     --listen or --api not usable (port in use, address not on this host),
     the TUN busy, another data plane running with this --id, the
     controller refusing the registration`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %q: all settings are flags (see --help)", args[0])}
			}
			return nil
		},
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := cmd.Flags()
	f.StringVar(&o.id, "id", host, "unique name of this data plane")
	f.StringVar(&o.controller, "controller", "unix:///run/fourover6/controller.sock", "controller gRPC address(es): unix:///path or host:port; several, comma separated, for controllers sharing etcd (the leader is followed)")
	f.StringVar(&o.listen, "listen", "[::]:5678", "address clients connect to (TCP over IPv6)")
	f.StringVar(&o.tunName, "tun", "4o6", "name of the TUN interface")
	f.StringVar(&o.tunBackend, "tun-backend", string(tun.BackendAuto), fmt.Sprintf("TUN implementation %v: auto takes offload (TSO, several times faster) where the kernel supports it, else water (one packet per system call)", tun.Choices()))
	f.IntVar(&o.mtu, "mtu", 1500, "TUN MTU; keeps every message within 2053 bytes as lab clients need")
	f.StringVar(&o.api, "api", "unix:///run/fourover6/dataplane.sock", "this data plane's gRPC API: unix:///path or host:port")
	f.DurationVar(&o.keepaliveInterval, "keepalive-interval", 20*time.Second, "send a 104 to every client this often")
	f.DurationVar(&o.keepaliveTimeout, "keepalive-timeout", 60*time.Second, "drop a client silent for longer than this (also: time allowed before its 100)")
	f.DurationVar(&o.writeTimeout, "write-timeout", 10*time.Second, "drop a client that does not read for this long")
	f.DurationVar(&o.reportInterval, "report-interval", 5*time.Second, "how often sessions' liveness and counters are reported to the controller")
	f.DurationVar(&o.allocateTimeout, "allocate-timeout", 5*time.Second, "how long a 100 waits for an unreachable controller before the connection is closed")
	f.IntVar(&o.sendQueue, "send-queue", 256, "messages queued per client before drops")
	f.IntVar(&o.sendQueueBytes, "send-queue-bytes", sendq.DefaultMaxBytes, "message bytes queued per client: past it the client's flow holding the most loses its oldest")
	f.DurationVar(&o.sendQueueDelay, "send-queue-delay", sendq.DefaultMaxDelay, "a packet that waited this long in a client's send queue is dropped (CoDel drops earlier from a standing queue)")
	f.IntVar(&o.maxClients, "max-clients", 20000, "most client connections at once (0: unlimited)")
	f.IntVar(&o.maxConnsPerIP, "max-conns-per-ip", 256, "most connections from one client IPv6 address (0: unlimited)")
	f.IntVar(&o.maxConnsPerPrefix, "max-conns-per-prefix", 1024, "most connections from one client prefix of --prefix-length bits (0: unlimited)")
	f.IntVar(&o.prefixLen, "prefix-length", 64, "client prefix length for --max-conns-per-prefix and --accept-rate-per-prefix (a /64 is one subscriber)")
	f.Float64Var(&o.acceptRate, "accept-rate", 1000, "new connections accepted per second, on average (0: unlimited)")
	f.IntVar(&o.acceptBurst, "accept-burst", 2000, "new connections accepted at once above --accept-rate")
	f.Float64Var(&o.prefixAcceptRate, "accept-rate-per-prefix", 500, "new connections accepted per second from one client prefix of --prefix-length bits, on average (0: unlimited): one prefix's flood leaves --accept-rate to the others")
	f.IntVar(&o.prefixAcceptBurst, "accept-burst-per-prefix", 1000, "new connections accepted at once from one prefix above --accept-rate-per-prefix")
	f.StringVar(&o.tls.Cert, "tls-cert", "", "certificate (PEM) for the gRPC API and for calls to the controller (mutual TLS)")
	f.StringVar(&o.tls.Key, "tls-key", "", "private key (PEM) of --tls-cert")
	f.StringVar(&o.tls.CA, "tls-ca", "", "CA (PEM) that signs the peers' certificates")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	f.StringVar(&o.logPrefix, logging.PriorityFlag, logging.PriorityAuto, logging.PriorityUsage)
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus /metrics, /healthz and /readyz on this address (host:port or unix:///path; empty: off)")
	f.BoolVar(&o.nat, "nat", false, "enable IPv4 forwarding and masquerade the pool out of the uplinks (nftables table \"ip fourover6\", removed on exit)")
	f.StringSliceVar(&o.natInterfaces, "nat-interface", nil, "with --nat: masquerade only out of these interfaces (default: every interface but the TUN)")
	f.StringSliceVar(&o.allow, "allow", nil, "let clients reach `CIDR` (or an address; comma separated, repeatable) although a built-in rule refuses it; the most specific prefix wins (reloaded on SIGHUP)")
	f.StringSliceVar(&o.deny, "deny", nil, "refuse clients every destination in `CIDR` (or an address; comma separated, repeatable); the most specific prefix wins (reloaded on SIGHUP)")
	f.BoolVar(&o.clientToClient, "allow-client-to-client", false, "let clients reach each other's addresses through the tunnel (the host must forward IPv4; reloaded on SIGHUP)")
	f.DurationVar(&o.handoffTimeout, "handoff-timeout", 15*time.Second, "on SIGUSR2 or 4over6ctl dataplane upgrade: how long the new process may take to become ready before this one gives up and serves on")
	f.StringVar(&o.pidFile, "pid-file", "", "write the serving process's id to this file (rewritten by the new process after a hand-off); for service managers that follow a PID file")
	o.bgp.addFlags(f)
	o.configFile = config.AddFlag(f, "")
	o.checks = config.AddCheckFlags(f)
	f.IntVar(&o.nice, "nice", nice.Default, "nice value of this process (-20..19): below 0 lets a packet's wake-up come before bulk work on a busy host; 0 keeps the inherited priority")
	f.IntVar(&o.rtPriority, "rt-priority", nice.DefaultRealtime, "real-time (SCHED_RR) priority of this process (1..99) so that a packet's wake-up does not wait for bulk work on a busy host at all; 0 keeps the time-sharing scheduler")
	f.StringVar(&o.pprof, "pprof", "", "serve Go profiles (net/http/pprof) on this address, for debugging")
	f.MarkHidden("pprof")
	version.SetCommand(cmd) // --version: version, commit, build date, Go version
	return cmd
}

func (o *options) validate() error {
	if strings.TrimSpace(o.id) == "" {
		return errors.New("--id is empty: give this data plane a unique name")
	}
	ctlEPs, err := endpoint.ParseList(o.controller)
	if err != nil {
		return fmt.Errorf("--controller: %v", err)
	}
	apiEP, err := endpoint.Parse(o.api)
	if err != nil {
		return fmt.Errorf("--api: %v", err)
	}
	if err := o.tls.Validate(); err != nil {
		return err
	}
	for _, ep := range ctlEPs {
		if err := o.tls.RequireForDial("--controller "+ep.String(), ep, "--tls-cert, --tls-key and --tls-ca"); err != nil {
			return err
		}
	}
	if err := o.tls.RequireFor("--api", apiEP); err != nil {
		return err
	}
	if _, err := netip.ParseAddrPort(o.listen); err != nil {
		if _, _, err2 := net.SplitHostPort(o.listen); err2 != nil {
			return fmt.Errorf("--listen %q: want host:port, e.g. [::]:5678", o.listen)
		}
	}
	if o.tunName == "" || len(o.tunName) > 15 {
		return fmt.Errorf("--tun %q: want an interface name of 1 to 15 characters", o.tunName)
	}
	if o.mtu < 576 || o.mtu > 2048 {
		return fmt.Errorf("--mtu %d: want 576..2048 (messages must stay within 2053 bytes)", o.mtu)
	}
	if o.keepaliveInterval <= 0 {
		return fmt.Errorf("--keepalive-interval %s: must be positive", o.keepaliveInterval)
	}
	if o.keepaliveTimeout <= o.keepaliveInterval {
		return fmt.Errorf("--keepalive-timeout %s must be longer than --keepalive-interval %s", o.keepaliveTimeout, o.keepaliveInterval)
	}
	for name, d := range map[string]time.Duration{"--write-timeout": o.writeTimeout, "--report-interval": o.reportInterval, "--allocate-timeout": o.allocateTimeout} {
		if d <= 0 {
			return fmt.Errorf("%s %s: must be positive", name, d)
		}
	}
	if o.handoffTimeout <= 0 {
		return fmt.Errorf("--handoff-timeout %s: must be positive", o.handoffTimeout)
	}
	if err := nice.Validate("--nice", o.nice); err != nil {
		return err
	}
	if err := nice.ValidateRealtime("--rt-priority", o.rtPriority); err != nil {
		return err
	}
	if o.sendQueue < 1 || o.sendQueue > 65536 {
		return fmt.Errorf("--send-queue %d: want 1..65536", o.sendQueue)
	}
	if o.sendQueueBytes < 4096 || o.sendQueueBytes > 64<<20 {
		return fmt.Errorf("--send-queue-bytes %d: want 4096..%d", o.sendQueueBytes, 64<<20)
	}
	if o.sendQueueDelay < time.Millisecond || o.sendQueueDelay > time.Minute {
		return fmt.Errorf("--send-queue-delay %s: want 1ms..1m", o.sendQueueDelay)
	}
	for name, v := range map[string]int{"--max-clients": o.maxClients, "--max-conns-per-ip": o.maxConnsPerIP, "--max-conns-per-prefix": o.maxConnsPerPrefix, "--accept-burst": o.acceptBurst, "--accept-burst-per-prefix": o.prefixAcceptBurst} {
		if v < 0 {
			return fmt.Errorf("%s %d: must be 0 (unlimited) or more", name, v)
		}
	}
	if o.prefixLen < 1 || o.prefixLen > 128 {
		return fmt.Errorf("--prefix-length %d: want 1..128", o.prefixLen)
	}
	if o.acceptRate < 0 {
		return fmt.Errorf("--accept-rate %g: must be 0 (unlimited) or more", o.acceptRate)
	}
	if o.prefixAcceptRate < 0 {
		return fmt.Errorf("--accept-rate-per-prefix %g: must be 0 (unlimited) or more", o.prefixAcceptRate)
	}
	valid := false
	for _, b := range tun.Choices() {
		valid = valid || string(b) == o.tunBackend
	}
	if !valid {
		return fmt.Errorf("--tun-backend %q: want one of %v", o.tunBackend, tun.Choices())
	}
	if _, _, err := logging.New(io.Discard, o.logOptions()); err != nil {
		return err
	}
	if o.metrics != "" {
		if _, err := endpoint.Parse(o.metrics); err != nil {
			return fmt.Errorf("--metrics: %v", err)
		}
	}
	if len(o.natInterfaces) > 0 && !o.nat {
		return errors.New("--nat-interface needs --nat")
	}
	if _, err := o.policyRules(); err != nil {
		return err
	}
	if _, _, err := o.bgp.config(); err != nil {
		return err
	}
	return nil
}

// policyRules are the operator's additions to the destination policy.
func (o *options) policyRules() (policy.Rules, error) {
	r := policy.Rules{ClientToClient: o.clientToClient}
	for _, l := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--allow", o.allow, &r.Allow}, {"--deny", o.deny, &r.Deny}} {
		for _, s := range l.in {
			p, err := policy.ParsePrefix(s)
			if err != nil {
				return r, fmt.Errorf("%s: %v", l.flag, err)
			}
			*l.out = append(*l.out, p)
		}
	}
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("--allow and --deny: %v", err)
	}
	return r, nil
}

// checkFiles is what --check-config checks beyond validate: that the TLS
// files load. It reads files and opens nothing else.
func (o *options) checkFiles() error {
	if !o.tls.Set() {
		return nil
	}
	_, err := o.tls.ServerOption()
	return err
}

// listenNetwork keeps an IPv6 listener IPv6-only ("tcp6" sets IPV6_V6ONLY):
// this is IPv4 over IPv6, and the controller leases to IPv6 clients only.
func listenNetwork(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		return "tcp6"
	}
	return "tcp"
}

// logOptions are the logging flags.
func (o *options) logOptions() logging.Options {
	return logging.Options{Level: o.logLevel, Format: o.logFormat, Priority: o.logPrefix}
}
