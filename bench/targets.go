package main

import (
	"fmt"
	"strings"
)

// Goals of issue 6, checked against a run. They are printed, never
// asserted: a benchmark reports, it does not fail a build.
const (
	goalKernelRatio   = 0.35
	goalAddedRTTUs    = 100
	goalRSSPerClient  = 20 // KiB
	goalIdleCPUPct    = 5
	goalConnectS      = 10
	goalScaleN        = 10000
	fourStreamNoWorse = 0.95 // "no worse" with 5% allowance for run-to-run noise
)

func evaluateTargets(rep *Report) []Target {
	var ts []Target
	add := func(name, goal, value string, met *bool) {
		ts = append(ts, Target{Name: name, Goal: goal, Value: value, Met: met})
	}
	gbps := func(path, dir string, streams int) (float64, bool) {
		for _, t := range rep.Throughput {
			if t.Path == path && t.Direction == dir && t.Streams == streams && t.Error == "" {
				return t.Gbps, true
			}
		}
		return 0, false
	}
	backends := rep.Config.TunBackends
	for _, b := range backends {
		p := "ours-" + b
		for _, dir := range []string{"upload", "download"} {
			for _, t := range rep.Throughput {
				if t.Path == p && t.Direction == dir && t.Streams == 1 && t.RatioKernel != nil {
					add(fmt.Sprintf("%s 1-stream %s vs kernel", p, dir), fmt.Sprintf(">= %.0f%% of kernel", goalKernelRatio*100),
						fmt.Sprintf("%.1f%% (%.2f Gbit/s)", *t.RatioKernel*100, t.Gbps), ptr(*t.RatioKernel >= goalKernelRatio))
				}
			}
			one, ok1 := gbps(p, dir, 1)
			four, ok4 := gbps(p, dir, 4)
			if ok1 && ok4 {
				add(fmt.Sprintf("%s 4 streams %s", p, dir), "no worse than 1 stream (within 5%)",
					fmt.Sprintf("%.2f vs %.2f Gbit/s", four, one), ptr(four >= fourStreamNoWorse*one))
			}
		}
		for _, r := range rep.RTT {
			if r.Path == p && r.Load == "idle" && r.AddedAvgUs != nil {
				got := fmt.Sprintf("%.1f µs (avg)", *r.AddedAvgUs)
				for _, f := range rep.RTT {
					if f.Kind == KindFloor && f.AddedAvgUs != nil {
						// What a bare Go TCP echo adds here puts the number
						// in proportion: each user-space hop wakes a thread.
						got += fmt.Sprintf("; a Go TCP echo adds %.1f µs", *f.AddedAvgUs)
					}
				}
				add(p+" added RTT at idle", fmt.Sprintf("< %d µs over raw", goalAddedRTTUs),
					got, ptr(*r.AddedAvgUs < goalAddedRTTUs))
			}
		}
	}
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
