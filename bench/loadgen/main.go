// Command 4over6-loadgen is the scale load generator of the benchmark suite
// (issue 6). Run inside the client network namespace, it opens N concurrent
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
