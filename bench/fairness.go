package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// The fairness runs: -fairness-clients bulk clients (8) and one more that
// pings, each a real 4over6-client with its own TUN in its own namespace,
// joined to the server namespace by its own veth (fd00:47:<i>::2 ->
// fd00:47:<i>::1), all through one data plane on default flags. Real
// clients rather than load-generator connections: what is judged is the
// whole packet path (kernel TCP -> client TUN -> 102s -> data plane ->
// server TUN and back), and the load generator carries no TCP of its own.
// A veth each keeps the link out of the way (each carries 18 Gbit/s here):
// what the clients share is the data plane.
//
// The second run adds a flood: one more lab-protocol connection
// (4over6-loadgen -flood, from the main client namespace) sends 102s of
// -flood-size bytes to a black-hole route on the server side as fast as
// its TCP connection takes them, a greedy client no congestion control
// inside the tunnel holds back.
const (
	fairPortBase = 5301
	floodDst     = "203.0.113.200"    // TEST-NET-3, in the black hole below
	floodNet     = "203.0.113.128/25" // clear of the kernel tunnel's 203.0.113.0/30
)

var fairScenarios = []string{"bulk", "bulk+flood"}

// fairClient is one client namespace of the fairness runs.
type fairClient struct {
	ns   *topo.NS
	proc *proc
	srv  *iperfServer // bulk clients only
}

func (l *lab) runFairness(ctx context.Context, rep *Report) {
	fail := func(err error) {
		rep.addError(secFairness, "setup", err)
		for _, sc := range fairScenarios {
			rep.Fairness = append(rep.Fairness, Fairness{Scenario: sc, Backend: backendDefault, Clients: l.o.fairClients, Error: err.Error()})
		}
	}
	n := l.o.fairClients
	l.log.Info("fairness", "bulk_clients", n, "backend", backendDefault)
	if err := l.startController(ctx); err != nil {
		fail(err)
		return
	}
	defer l.stopController()
	dp, err := l.startDataplane(ctx, "bench-fair", backendDefault)
	if err != nil {
		fail(err)
		return
	}
	defer dp.stop(10 * time.Second)
	// The flood's destination: dropped by the server's kernel without an
	// ICMP error (a black hole route needs forwarding on to stay silent).
	if err := l.srv.Exec("ip", "route", "add", "blackhole", floodNet); err != nil {
		fail(err)
		return
	}
	defer l.srv.Exec("ip", "route", "del", "blackhole", floodNet)
	if err := l.srv.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		fail(err)
		return
	}
	defer l.srv.Sysctl("net.ipv4.ip_forward", "0")

	clients := make([]*fairClient, 0, n+1)
	defer func() {
		for _, c := range clients {
			if c.srv != nil {
				c.srv.stop()
			}
			if c.proc != nil {
				c.proc.stop(10 * time.Second)
			}
			c.ns.Delete()
		}
	}()
	for i := 1; i <= n+1; i++ {
		if ctx.Err() != nil {
			return
		}
		c, err := l.fairClient(ctx, i, i <= n)
		if c != nil {
			clients = append(clients, c)
		}
		if err != nil {
			fail(fmt.Errorf("client %d: %w", i, err))
			return
		}
	}
	for _, sc := range fairScenarios {
		if ctx.Err() != nil {
			return
		}
		f := l.fairOnce(ctx, sc, clients[:n], clients[n])
		if f.Error != "" {
			rep.addError(secFairness, sc, fmt.Errorf("%s", f.Error))
		}
		rep.Fairness = append(rep.Fairness, f)
	}
}

// fairClient makes namespace i, its veth to the server namespace and its
// 4over6-client (default flags), and for a bulk client an iperf3 server of
// its own on the gateway address.
func (l *lab) fairClient(ctx context.Context, i int, bulk bool) (*fairClient, error) {
	ns, err := topo.NewNS(fmt.Sprintf("%sf%d-%d", nsPrefix, i, os.Getpid()))
	if err != nil {
		return nil, err
	}
	c := &fairClient{ns: ns}
	srvIf, srvAddr := fmt.Sprintf("vf%d", i), fmt.Sprintf("fd00:47:%x::1", i)
	steps := []func() error{
		func() error { return topo.Veth(l.srv, srvIf, ns, "v6s") },
		func() error { return l.srv.AddAddr(srvIf, srvAddr+"/64") },
		func() error { return ns.AddAddr("v6s", fmt.Sprintf("fd00:47:%x::2/64", i)) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return c, err
		}
	}
	if c.proc, err = l.startClientIn(ctx, l.o.bin, ns, fmt.Sprintf("fair-client-%d", i), srvAddr, backendDefault); err != nil {
		return c, err
	}
	if bulk {
		if c.srv, err = l.startIperfServer(gateway, fairPortBase+i-1); err != nil {
			return c, err
		}
	}
	return c, nil
}

// fairOnce runs one scenario: every bulk client's iperf3 upload at once,
// the pinger meanwhile, and for bulk+flood the flood from before the
// first byte to after the last.
func (l *lab) fairOnce(ctx context.Context, scenario string, bulk []*fairClient, pinger *fairClient) Fairness {
	secs, omit := l.o.iperfSeconds, l.o.iperfOmit
	f := Fairness{Scenario: scenario, Backend: backendDefault, Clients: len(bulk), Seconds: secs}
	l.log.Info("fairness run", "scenario", scenario, "clients", len(bulk), "seconds", secs)

	var floodDone <-chan loadgenEvent
	if scenario == "bulk+flood" {
		var err error
		if floodDone, err = l.startFlood(ctx, time.Duration(secs+omit+3)*time.Second); err != nil {
			f.Error = "flood: " + err.Error()
			return f
		}
	}

	rates := make([]float64, len(bulk))
	errs := make([]error, len(bulk))
	var wg sync.WaitGroup
	for i, c := range bulk {
		wg.Go(func() {
			rates[i], _, errs[i] = l.runIperfFrom(ctx, c.ns, c.srv, iperfRun{seconds: secs, omit: omit, streams: 1})
		})
	}
	// The pings start once the uploads are past their warm-up and end
	// before the first of them does.
	delay := time.Duration(omit)*time.Second + 300*time.Millisecond
	count := int((float64(secs) - 0.5) / pingInterval)
	select {
	case <-ctx.Done():
	case <-time.After(delay):
	}
	s, perr := pingFrom(ctx, pinger.ns, gateway, count)
	f.Ping = s.dist()
	if perr != nil {
		f.Ping.Error = perr.Error()
	}
	wg.Wait()

	for i, err := range errs {
		if err != nil && f.Error == "" {
			f.Error = fmt.Sprintf("bulk client %d: %v", i+1, err)
		}
	}
	f.ClientGbps = make([]float64, len(rates))
	for i, r := range rates {
		f.ClientGbps[i] = round3(r)
	}
	f.AggregateGbps, f.MinGbps, f.MaxGbps, f.Jain = fairStats(rates)
	if f.Ping.Error != "" && f.Error == "" {
		f.Error = "ping: " + f.Ping.Error
	}

	if floodDone != nil {
		e, ok := <-floodDone
		switch {
		case !ok:
			f.FloodError = "the flooding load generator ended without a result"
		case e.Error != "":
			f.FloodError = e.Error
		}
		if ok && e.FloodSeconds > 0 {
			f.FloodGbps = round3(float64(e.FloodBytes) * 8 / e.FloodSeconds / 1e9)
			f.FloodFrames = e.FloodFrames
			_, _, _, f.JainWithFlood = fairStats(append(slices.Clone(rates), f.FloodGbps))
		}
		if f.FloodFrames == 0 && f.Error == "" {
			f.Error = "the flood sent nothing: " + f.FloodError
		}
	}
	l.log.Info("fairness result", "scenario", scenario, "aggregate_gbps", f.AggregateGbps, "jain", f.Jain,
		"ping_p99_us", f.Ping.P99Us, "ping_loss_pct", f.Ping.LossPct, "flood_gbps", f.FloodGbps)
	return f
}

// startFlood starts one flooding lab client in the main client namespace
// and returns once it floods; the channel then yields its flood_done.
func (l *lab) startFlood(ctx context.Context, d time.Duration) (<-chan loadgenEvent, error) {
	if l.loadgen == "" {
		bin, err := loadgenBinary(ctx, l.o, l.dir)
		if err != nil {
			return nil, err
		}
		l.loadgen = bin
	}
	args := []string{"netns", "exec", l.cli.Name, l.loadgen,
		"-server", "[" + serverV6 + "]:" + clientPort, "-gateway", gateway, "-n", "1", "-connect-timeout", "20s",
		"-flood", d.String(), "-flood-dst", floodDst, "-flood-size", strconv.Itoa(l.o.floodSize)}
	fctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	events, lg, err := l.startEvents(fctx, "loadgen-flood", args)
	if err != nil {
		cancel()
		return nil, err
	}
	for e := range events {
		switch e.Event {
		case "flooding":
			out := make(chan loadgenEvent, 1)
			go func() {
				defer cancel()
				defer close(out)
				for e := range events {
					if e.Event == "flood_done" || e.Event == "error" {
						if e.Event == "error" && e.Error == "" {
							e.Error = "load generator failed"
						}
						out <- e
					}
				}
				lg.stop(5 * time.Second)
			}()
			// A moment for the flood to reach its full rate.
			time.Sleep(500 * time.Millisecond)
			return out, nil
		case "error":
			cancel()
			lg.stop(5 * time.Second)
			return nil, fmt.Errorf("load generator: %s", e.Error)
		case "connected":
			if e.Connected == 0 {
				cancel()
				lg.stop(5 * time.Second)
				return nil, fmt.Errorf("the flooding client got no 101: %s", e.FirstError)
			}
		}
	}
	cancel()
	<-lg.done
	return nil, lg.failure(fmt.Errorf("load generator ended before flooding"))
}

// fairStats returns the sum, the smallest and largest rate, and Jain's
// fairness index (sum x)^2 / (n * sum x^2): 1 when all are equal, 1/n
// when one client has everything.
func fairStats(rates []float64) (sum, lo, hi, jain float64) {
	if len(rates) == 0 {
		return 0, 0, 0, 0
	}
	lo = math.Inf(1)
	var sq float64
	for _, r := range rates {
		sum += r
		sq += r * r
		lo, hi = min(lo, r), max(hi, r)
	}
	if sq > 0 {
		jain = sum * sum / (float64(len(rates)) * sq)
	}
	return round3(sum), round3(lo), round3(hi), round3(jain)
}
