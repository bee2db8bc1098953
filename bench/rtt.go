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
)

const pingInterval = 0.01 // seconds; below 0.2 needs root, which the bench has

// pingStats are the round trips of one ping series, in microseconds.
type pingStats struct {
	sent, received          int
	min, avg, p50, p99, max float64
}

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
	s.p50, s.p99 = percentile(times, 50), percentile(times, 99)
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
	timeout := time.Duration(float64(count)*pingInterval*float64(time.Second)) + 10*time.Second
	out, err := output(ctx, l.cli, timeout, "ping", "-n", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(pingInterval, 'f', -1, 64), "-W", "1", "-w", strconv.Itoa(int(timeout.Seconds())-2), target)
	s, perr := parsePing(out)
	if perr != nil {
		if err != nil {
			return s, err
		}
		return s, perr
	}
	return s, nil // ping exits 1 when some replies are lost; the counts say so
}

// measureRTT pings the path at idle, then again while a 1-stream iperf3
// upload runs through it.
func (l *lab) measureRTT(ctx context.Context, p path, srv *iperfServer) []RTT {
	base := RTT{Path: p.name, Kind: p.kind, Backend: p.backend}
	idle := base
	idle.Load = "idle"
	l.log.Info("rtt", "path", p.name, "load", "idle")
	if s, err := l.ping(ctx, p.target, l.o.pingCount); err != nil {
		idle.Error = err.Error()
	} else {
		idle.fill(s)
	}

	loaded := base
	loaded.Load = "loaded"
	if srv == nil {
		loaded.Error = "no iperf3 server for this path"
		return []RTT{idle, loaded}
	}
	l.log.Info("rtt", "path", p.name, "load", "1-stream iperf3 upload")
	pingSecs := float64(l.o.pingCount) * pingInterval
	type res struct {
		gbps float64
		err  error
	}
	done := make(chan res, 1)
	// The upload starts a second ahead of the pings (TCP is at full rate by
	// then) and ends at least half a second after them.
	go func() {
		g, _, err := l.runIperf(ctx, srv, iperfRun{seconds: int(math.Ceil(1.5 + pingSecs)), streams: 1})
		done <- res{g, err}
	}()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	if s, err := l.ping(ctx, p.target, l.o.pingCount); err != nil {
		loaded.Error = err.Error()
	} else {
		loaded.fill(s)
	}
	r := <-done
	loaded.LoadedGbps = r.gbps
	if r.err != nil {
		loaded.LoaderError = r.err.Error()
	}
	return []RTT{idle, loaded}
}

func (r *RTT) fill(s pingStats) {
	r.Sent, r.Received = s.sent, s.received
	r.MinUs, r.AvgUs, r.P50Us, r.P99Us, r.MaxUs = round1(s.min), round1(s.avg), round1(s.p50), round1(s.p99), round1(s.max)
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
		avg: sum / float64(len(times)), p50: percentile(times, 50), p99: percentile(times, 99)})
	return r
}
