package main

import (
	"fmt"
	"slices"
	"strings"
)

// Goals for the packet path, checked against a run. They are printed,
// never asserted: a benchmark reports, it does not fail a build. Ratios
// are against baselines measured in the same run, so a busy machine moves
// both sides.
const (
	goalKernelRatio   = 0.50 // defaults, 1 stream, each direction, of the kernel baseline
	goalRawRatio      = 0.28 // defaults, 1 stream, each direction, of raw IPv6 over the same veth
	fourStreamNoWorse = 0.95 // "no worse" with 5% allowance for run-to-run noise
	goalLoadedP50Us   = 500  // RTT during a 1-stream load, each direction
	goalLoadedP99Us   = 2000 //
	goalIdleVsEcho    = 2.0  // added idle RTT at most this many times the Go TCP echo's
	goalJain          = 0.95
	goalFairP99Us     = 2000 // the pinging client's p99 among the bulk clients
	goalFairLossPct   = 0.1
	goalStormS        = 5.0
	goalStormN        = 10000
	goalAllocsPerS    = 5000
	goalRSSPerClient  = 20 // KiB
	goalIdleCPUPct    = 5
	goalConnectS      = 10
	goalScaleN        = 10000
	defaultPath       = "ours-" + backendDefault
)

var directions = []string{"upload", "download"}

func evaluateTargets(rep *Report) []Target {
	var ts []Target
	add := func(name, goal, value string, met *bool) {
		ts = append(ts, Target{Name: name, Goal: goal, Value: value, Met: met})
	}
	cell := func(path, dir string, streams int) *Through {
		for i := range rep.Throughput {
			t := &rep.Throughput[i]
			if t.Path == path && t.Direction == dir && t.Streams == streams && t.Error == "" && t.Gbps > 0 {
				return t
			}
		}
		return nil
	}
	rtt := func(path, load, dir string) *RTT {
		for i := range rep.RTT {
			r := &rep.RTT[i]
			if r.Path == path && r.Load == load && r.direction() == dir && r.Error == "" {
				return r
			}
		}
		return nil
	}

	// Throughput of the defaults row against the baselines of this run.
	for _, dir := range directions {
		if t := cell(defaultPath, dir, 1); t != nil && t.RatioKernel != nil {
			add(fmt.Sprintf("defaults 1 stream %s vs kernel", dir), fmt.Sprintf(">= %.0f%% of the kernel baseline", goalKernelRatio*100),
				fmt.Sprintf("%.1f%% (%.2f Gbit/s)", *t.RatioKernel*100, t.Gbps), ptr(*t.RatioKernel >= goalKernelRatio))
		}
		if t := cell(defaultPath, dir, 1); t != nil && t.RatioRaw != nil {
			add(fmt.Sprintf("defaults 1 stream %s vs raw IPv6", dir), fmt.Sprintf(">= %.2f of raw IPv6 over the same veth", goalRawRatio),
				fmt.Sprintf("%.3f (%.2f Gbit/s)", *t.RatioRaw, t.Gbps), ptr(*t.RatioRaw >= goalRawRatio))
		}
	}
	for _, p := range oursPaths(rep) {
		for _, dir := range directions {
			one, four := cell(p, dir, 1), cell(p, dir, 4)
			if one != nil && four != nil {
				add(fmt.Sprintf("%s 4 streams %s", p, dir), "no worse than 1 stream (within 5%)",
					fmt.Sprintf("%.2f vs %.2f Gbit/s", four.Gbps, one.Gbps), ptr(four.Gbps >= fourStreamNoWorse*one.Gbps))
			}
		}
	}

	// Latency of the defaults row.
	for _, dir := range directions {
		if r := rtt(defaultPath, "loaded", dir); r != nil && r.Received > 0 {
			add(fmt.Sprintf("defaults RTT during a 1-stream %s", dir), fmt.Sprintf("p50 < %.1f ms and p99 < %.0f ms", goalLoadedP50Us/1000.0, goalLoadedP99Us/1000.0),
				fmt.Sprintf("p50 %.3f ms, p99 %.3f ms", r.P50Us/1000, r.P99Us/1000), ptr(r.P50Us < goalLoadedP50Us && r.P99Us < goalLoadedP99Us))
		}
	}
	if r := rtt(defaultPath, "idle", ""); r != nil && r.AddedP50Us != nil {
		var echo *RTT
		for i := range rep.RTT {
			if f := &rep.RTT[i]; f.Kind == KindFloor && f.Error == "" && f.AddedP50Us != nil {
				echo = f
			}
		}
		goal := fmt.Sprintf("<= %.0fx the Go TCP echo's added RTT (p50 over raw)", goalIdleVsEcho)
		if echo == nil {
			add("defaults added RTT at idle", goal, fmt.Sprintf("%.1f µs; no Go TCP echo measured", *r.AddedP50Us), nil)
		} else {
			add("defaults added RTT at idle", goal, fmt.Sprintf("%.1f µs; the echo adds %.1f µs", *r.AddedP50Us, *echo.AddedP50Us),
				ptr(*r.AddedP50Us <= goalIdleVsEcho*max(*echo.AddedP50Us, 0)))
		}
	}

	// Fairness.
	for _, f := range rep.Fairness {
		if f.Error != "" && len(f.ClientGbps) == 0 {
			continue
		}
		name := fmt.Sprintf("%d bulk clients (%s)", f.Clients, f.Scenario)
		if one := cell(defaultPath, "upload", 1); one != nil {
			add(name+" aggregate", "at least the defaults 1-stream upload",
				fmt.Sprintf("%.2f vs %.2f Gbit/s", f.AggregateGbps, one.Gbps), ptr(f.AggregateGbps >= one.Gbps))
		}
		add(name+" Jain's index", fmt.Sprintf(">= %.2f", goalJain), fmt.Sprintf("%.3f", f.Jain), ptr(f.Jain >= goalJain))
		if f.Ping.Received > 0 {
			add(name+" pinging client", fmt.Sprintf("p99 < %.0f ms and loss < %.1f%%", goalFairP99Us/1000.0, goalFairLossPct),
				fmt.Sprintf("p50 %.3f ms, p99 %.3f ms, loss %.2f%% of %d", f.Ping.P50Us/1000, f.Ping.P99Us/1000, f.Ping.LossPct, f.Ping.Sent),
				ptr(f.Ping.P99Us < goalFairP99Us && f.Ping.LossPct < goalFairLossPct))
		}
	}

	// Reconnect storm.
	if s := rep.Storm; s != nil && s.Connected > 0 {
		met := ptr(s.Within5s == s.N)
		if s.N < goalStormN {
			met = nil // a smaller storm says nothing about this goal
		}
		add(fmt.Sprintf("reconnect storm N=%d", s.N), fmt.Sprintf("all %d clients have their 101 within %.0f s of the restart", goalStormN, goalStormS),
			fmt.Sprintf("%d/%d within 5 s; p50 %.2f s, p99 %.2f s, max %.2f s", s.Within5s, s.N, s.P50S, s.P99S, s.MaxS), met)
	}

	// Controller.
	if rep.Alloc != nil {
		for _, r := range rep.Alloc.Runs {
			if r.Allocations == 0 {
				continue
			}
			name := fmt.Sprintf("controller allocations, %d callers", r.Callers)
			if r.Releases == releasesBatched {
				name += ", releases batched"
			}
			add(name, fmt.Sprintf(">= %d durable allocations/s", goalAllocsPerS),
				fmt.Sprintf("%.0f/s", r.AllocsPerS), ptr(r.AllocsPerS >= goalAllocsPerS))
		}
	}

	// Scale.
	for _, s := range rep.Scale {
		if s.N < goalScaleN || s.Connected == 0 {
			continue
		}
		name := fmt.Sprintf("scale N=%d (%s)", s.N, s.Backend)
		add(name+" connected", fmt.Sprintf("all within %d s", goalConnectS),
			fmt.Sprintf("%d/%d in %.2f s", s.Connected, s.N, s.ConnectS), ptr(s.Connected == s.N && s.ConnectS <= goalConnectS))
		add(name+" RSS per client", fmt.Sprintf("< %d KiB", goalRSSPerClient),
			fmt.Sprintf("%.2f KiB", s.RSSPerClientKiB), ptr(s.RSSPerClientKiB < goalRSSPerClient))
		add(name+" idle CPU", fmt.Sprintf("< %d%% of a core", goalIdleCPUPct),
			fmt.Sprintf("%.2f%%", s.IdleCPUPct), ptr(s.IdleCPUPct < goalIdleCPUPct))
	}

	// The hot path's allocations.
	var fwd []string
	zero := true
	for _, m := range rep.Micro {
		if strings.Contains(strings.ToLower(m.Name), "forward") && m.AllocsPerOp != nil {
			fwd = append(fwd, fmt.Sprintf("%s %g", m.Name, *m.AllocsPerOp))
			zero = zero && *m.AllocsPerOp == 0
		}
	}
	if len(fwd) > 0 {
		add("allocations per forwarded packet", "0 allocs/op in every *Forward* benchmark", strings.Join(fwd, ", "), ptr(zero))
	} else if len(rep.Micro) > 0 {
		add("allocations per forwarded packet", "0 allocs/op in every *Forward* benchmark", "no benchmark named *Forward* yet", nil)
	}
	return ts
}

// oursPaths are our rows in the order measured.
func oursPaths(rep *Report) []string {
	var ps []string
	for _, t := range rep.Throughput {
		if t.Kind == KindOurs && !slices.Contains(ps, t.Path) {
			ps = append(ps, t.Path)
		}
	}
	return ps
}
