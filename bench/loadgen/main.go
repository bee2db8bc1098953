// Command 4over6-loadgen is the scale load generator of the benchmark suite.
// Run inside the client network namespace, it opens N concurrent
// lab-protocol connections to a 4over6 server, leases an address on each
// (100 -> 101), then holds the leases the way real lab clients do: it reads
// everything, sends a 104 every keepalive interval and, during an echo
// phase, a small ICMP echo to the gateway through each tunnel.
//
// Phases, in order: connect (until all N have their 101, or the connect
// timeout), echo (-echo-phase, then -echo-grace for late replies), idle
// (-idle: only keepalives flow, so the harness can measure the server at
// rest), done. Each phase boundary is one JSON line on stdout (see event)
// so the harness can sample the server's /proc at the right moments;
// progress logs go to stderr.
//
// Two other modes follow the connect phase instead of echo and idle:
// -storm waits for the server to drop every connection (the harness kills
// it) and reconnects each client at once, reporting when each has its 101
// again; -flood sends 102s as fast as TCP takes them, for the fairness
// measurement.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"
)

type config struct {
	server          string
	n               int
	inflight        int
	gateway         netip.Addr
	connectTimeout  time.Duration
	keepalive       time.Duration
	echoInterval    time.Duration
	echoPhase       time.Duration
	echoGrace       time.Duration
	idle            time.Duration
	tick            time.Duration
	maxDialAttempts int

	storm        bool
	stormTimeout time.Duration
	reconnectMin time.Duration
	reconnectMax time.Duration

	flood     time.Duration
	floodDst  netip.Addr
	floodSize int
}

func main() {
	var c config
	var gw string
	flag.StringVar(&c.server, "server", "[fd00:46::1]:5678", "4over6 server host:port (TCP over IPv6)")
	flag.IntVar(&c.n, "n", 1000, "number of concurrent clients")
	flag.IntVar(&c.inflight, "inflight", 512, "most handshakes (dialled, no 101 yet) at once; keeps the SYN backlog from overflowing")
	flag.StringVar(&gw, "gateway", "13.8.0.1", "IPv4 address the echoes go to through the tunnel")
	flag.DurationVar(&c.connectTimeout, "connect-timeout", 60*time.Second, "time allowed for all N to get their 101")
	flag.DurationVar(&c.keepalive, "keepalive", 20*time.Second, "send a 104 on every connection this often (as lab clients do)")
	flag.DurationVar(&c.echoInterval, "echo-interval", 2*time.Second, "one ICMP echo per client this often during the echo phase")
	flag.DurationVar(&c.echoPhase, "echo-phase", 10*time.Second, "how long echoes are sent (0: none)")
	flag.DurationVar(&c.echoGrace, "echo-grace", 2*time.Second, "wait this long after the echo phase for late replies")
	flag.DurationVar(&c.idle, "idle", 20*time.Second, "idle phase: only keepalives flow")
	flag.DurationVar(&c.tick, "tick", 50*time.Millisecond, "scheduler tick; keepalives and echoes are spread evenly over the ticks of an interval")
	flag.IntVar(&c.maxDialAttempts, "dial-attempts", 3, "attempts per connection before it counts as failed")
	flag.BoolVar(&c.storm, "storm", false, "after the connect phase: wait for the server to drop every connection, reconnect each at once (then with backoff), report when each has its 101 again (event storm_done)")
	flag.DurationVar(&c.stormTimeout, "storm-timeout", 60*time.Second, "with -storm: how long after the first lost connection the clients may take to come back")
	flag.DurationVar(&c.reconnectMin, "reconnect-min", 250*time.Millisecond, "with -storm: delay after a failed reconnect attempt (doubles, with 0-50% jitter, up to -reconnect-max)")
	flag.DurationVar(&c.reconnectMax, "reconnect-max", 2*time.Second, "with -storm: longest delay between reconnect attempts")
	flag.DurationVar(&c.flood, "flood", 0, "after the connect phase: every client sends 102s (IPv4/UDP to -flood-dst) as fast as TCP takes them, for this long (event flood_done)")
	floodDst := flag.String("flood-dst", "203.0.113.200", "destination of the -flood packets: a black hole on the server side")
	flag.IntVar(&c.floodSize, "flood-size", 1500, "IPv4 packet size of the -flood packets, in bytes (28 to 2048)")
	echoAddr := flag.String("echo-server", "", "instead: serve a TCP echo on this address (the RTT floor's server)")
	pingAddr := flag.String("ping-pong", "", "instead: time -count TCP round trips to this echo server, one per -interval, print them as JSON")
	count := flag.Int("count", 50, "round trips for -ping-pong")
	interval := flag.Duration("interval", 10*time.Millisecond, "pause between -ping-pong round trips")
	flag.Parse()
	if *echoAddr != "" || *pingAddr != "" {
		var err error
		if *echoAddr != "" {
			err = serveEcho(*echoAddr)
		} else {
			err = pingPong(*pingAddr, *count, *interval)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "4over6-loadgen:", err)
			os.Exit(1)
		}
		return
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var err error
	if c.gateway, err = netip.ParseAddr(gw); err != nil || !c.gateway.Is4() {
		fmt.Fprintf(os.Stderr, "4over6-loadgen: -gateway %q: want an IPv4 address\n", gw)
		os.Exit(2)
	}
	if c.n < 1 || c.inflight < 1 || c.keepalive <= 0 || c.echoInterval <= 0 || c.tick <= 0 {
		fmt.Fprintln(os.Stderr, "4over6-loadgen: -n, -inflight, -keepalive, -echo-interval and -tick must be positive")
		os.Exit(2)
	}
	if c.floodDst, err = netip.ParseAddr(*floodDst); err != nil || !c.floodDst.Is4() {
		fmt.Fprintf(os.Stderr, "4over6-loadgen: -flood-dst %q: want an IPv4 address\n", *floodDst)
		os.Exit(2)
	}
	if c.floodSize < udpHeaderLen || c.floodSize > 2048 {
		fmt.Fprintf(os.Stderr, "4over6-loadgen: -flood-size %d: want 28 to 2048 bytes\n", c.floodSize)
		os.Exit(2)
	}
	if c.storm && c.flood > 0 {
		fmt.Fprintln(os.Stderr, "4over6-loadgen: -storm and -flood are separate modes: pick one")
		os.Exit(2)
	}
	if c.stormTimeout <= 0 || c.reconnectMin <= 0 || c.reconnectMax < c.reconnectMin {
		fmt.Fprintln(os.Stderr, "4over6-loadgen: -storm-timeout and -reconnect-min must be positive, -reconnect-max at least -reconnect-min")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	out := json.NewEncoder(os.Stdout)
	emit := func(e event) {
		e.UnixNano = time.Now().UnixNano()
		if err := out.Encode(e); err != nil {
			log.Error("stdout", "err", err)
		}
	}
	if err := run(ctx, c, log, emit); err != nil {
		emit(event{Event: "error", Error: err.Error()})
		log.Error("loadgen failed", "err", err)
		os.Exit(1)
	}
}
