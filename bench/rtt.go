package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// pingInterval is the gap between pings, everywhere the bench pings: 10 ms
// (below 0.2 s needs root, which the bench has). Ping does not wait for a
// reply before the next request, so a slow reply never thins the series.
const pingInterval = 0.01

// pingStats are the round trips of one ping series, in microseconds.
type pingStats struct {
	sent, received               int
	min, avg, p50, p90, p99, max float64
}

// loss is the share of pings without a reply, in percent.
func (s pingStats) loss() float64 {
	if s.sent == 0 {
		return 0
	}
	return 100 * float64(s.sent-s.received) / float64(s.sent)
}

func (s pingStats) dist() PingDist {
	return PingDist{Sent: s.sent, Received: s.received, LossPct: round3(s.loss()),
		P50Us: round1(s.p50), P90Us: round1(s.p90), P99Us: round1(s.p99), MaxUs: round1(s.max)}
}

// rttLoads are the ping series of every path, in table order: at idle,
// then during a 1-stream iperf3 each way.
var rttLoads = []struct{ load, direction string }{{"idle", ""}, {"loaded", "upload"}, {"loaded", "download"}}

// parsePing reads ping's per-reply "time=0.045 ms" lines and its
// "N packets transmitted" summary; the percentiles need the individual
// times, which the summary line does not give.
func parsePing(out string) (pingStats, error) {
	var s pingStats
	var times []float64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "time="); i >= 0 && strings.Contains(line, "bytes from") {
			f := strings.Fields(line[i+len("time="):])
			if len(f) == 0 {
				continue
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				continue
			}
			if len(f) > 1 && f[1] == "s" {
				v *= 1000
			}
			times = append(times, v*1000) // ms -> µs
		}
		if strings.Contains(line, "packets transmitted") {
			fmt.Sscanf(strings.TrimSpace(line), "%d packets transmitted, %d received", &s.sent, &s.received)
		}
	}
	if len(times) == 0 {
		return s, fmt.Errorf("no replies (sent %d): %q", s.sent, oneLine(out))
	}
	slices.Sort(times)
	var sum float64
	for _, t := range times {
		sum += t
	}
	s.min, s.max, s.avg = times[0], times[len(times)-1], sum/float64(len(times))
	s.p50, s.p90, s.p99 = percentile(times, 50), percentile(times, 90), percentile(times, 99)
	if s.received == 0 {
		s.received = len(times)
	}
	return s, nil
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// ping runs a ping series from the client namespace.
func (l *lab) ping(ctx context.Context, target string, count int) (pingStats, error) {
	return pingFrom(ctx, l.cli, target, count)
}

// pingFrom runs a ping series from ns, one request every pingInterval.
func pingFrom(ctx context.Context, ns *topo.NS, target string, count int) (pingStats, error) {
	timeout := time.Duration(float64(count)*pingInterval*float64(time.Second)) + 10*time.Second
	// No -w deadline: with one, ping stops at count replies and counts the
	// requests still in flight as lost. Without, it sends count requests
	// and waits twice the slowest round trip for the last replies.
	out, err := output(ctx, ns, timeout, "ping", "-n", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(pingInterval, 'f', -1, 64), "-W", "1", target)
	s, perr := parsePing(out)
	if perr != nil {
		if err != nil {
			return s, err
		}
		return s, perr
	}
	return s, nil // ping exits 1 when some replies are lost; the counts say so
}

// measureRTT pings the path at idle, then twice more while a 1-stream
// iperf3 runs through it, upload and then download.
func (l *lab) measureRTT(ctx context.Context, p path, srv *iperfServer) []RTT {
	var out []RTT
	for _, ld := range rttLoads {
		r := RTT{Path: p.name, Kind: p.kind, Backend: p.backend, Load: ld.load, LoadDirection: ld.direction}
		switch {
		case ld.load == "idle":
			l.log.Info("rtt", "path", p.name, "load", "idle")
			if s, err := l.ping(ctx, p.target, l.o.pingCount); err != nil {
				r.Error = err.Error()
			} else {
				r.fill(s)
			}
		case srv == nil:
			r.Error = "no iperf3 server for this path"
		default:
			l.log.Info("rtt", "path", p.name, "load", "1-stream iperf3 "+ld.direction)
			l.pingUnderLoad(ctx, p, srv, &r)
		}
		out = append(out, r)
	}
	return out
}

// pingUnderLoad pings while a 1-stream iperf3 runs in r's direction. The
// iperf3 starts a second ahead of the pings (a fifth of one in a quick
// run: over a veth TCP is at full rate long before either) and ends at
// least half a second after them.
func (l *lab) pingUnderLoad(ctx context.Context, p path, srv *iperfServer, r *RTT) {
	lead := time.Second
	if l.o.quick {
		lead = 200 * time.Millisecond
	}
	secs := int(math.Ceil(lead.Seconds() + float64(l.o.pingCount)*pingInterval + 0.5))
	type res struct {
		gbps float64
		err  error
	}
	done := make(chan res, 1)
	go func() {
		g, _, err := l.runIperf(ctx, srv, iperfRun{seconds: secs, streams: 1, reverse: r.LoadDirection == "download"})
		done <- res{g, err}
	}()
	select {
	case <-ctx.Done():
	case <-time.After(lead):
	}
	if s, err := l.ping(ctx, p.target, l.o.pingCount); err != nil {
		r.Error = err.Error()
	} else {
		r.fill(s)
	}
	x := <-done
	r.LoadedGbps = round3(x.gbps)
	if x.err != nil {
		r.LoaderError = x.err.Error()
	}
}

func (r *RTT) fill(s pingStats) {
	r.Sent, r.Received, r.LossPct = s.sent, s.received, round3(s.loss())
	r.MinUs, r.AvgUs, r.P50Us, r.P90Us, r.P99Us, r.MaxUs = round1(s.min), round1(s.avg), round1(s.p50), round1(s.p90), round1(s.p99), round1(s.max)
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// measureGoEcho times TCP round trips between two Go processes, an echo
// server on the server side and a client on the client side, over the IPv6
// veth at the ping cadence: the floor under any relay in user space here,
// where every hop wakes a thread on a virtual CPU that halts when idle.
func (l *lab) measureGoEcho(ctx context.Context) RTT {
	r := RTT{Path: "go-tcp-echo", Kind: KindFloor, Load: "idle"}
	l.log.Info("rtt", "path", r.Path, "load", "idle")
	if l.loadgen == "" {
		bin, err := loadgenBinary(ctx, l.o, l.dir)
		if err != nil {
			r.Error = err.Error()
			return r
		}
		l.loadgen = bin
	}
	const addr = "[fd00:46::1]:5699"
	srv, err := l.start(l.srv, "echo-server", l.loadgen, "-echo-server", addr)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer srv.stop(2 * time.Second)
	var out string
	err = waitFor(ctx, 10*time.Second, "echo server", func() bool {
		out, err = output(ctx, l.cli, 30*time.Second, l.loadgen, "-ping-pong", addr,
			"-count", strconv.Itoa(l.o.pingCount), "-interval", time.Duration(pingInterval*float64(time.Second)).String())
		return err == nil
	})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	var times []float64
	if err := json.Unmarshal([]byte(out), &times); err != nil || len(times) == 0 {
		r.Error = fmt.Sprintf("ping-pong output %q: %v", oneLine(out), err)
		return r
	}
	slices.Sort(times)
	var sum float64
	for _, t := range times {
		sum += t
	}
	r.fill(pingStats{sent: l.o.pingCount, received: len(times), min: times[0], max: times[len(times)-1],
		avg: sum / float64(len(times)), p50: percentile(times, 50), p90: percentile(times, 90), p99: percentile(times, 99)})
	return r
}
