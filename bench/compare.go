package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Baseline names the earlier run this one is compared with.
type Baseline struct {
	File      string    `json:"file"`
	StartedAt time.Time `json:"started_at"`
	GitCommit string    `json:"git_commit"`
	Label     string    `json:"label,omitempty"`
}

// Delta is one number of this run next to the baseline's.
type Delta struct {
	Metric    string  `json:"metric"`
	Unit      string  `json:"unit"`
	Before    float64 `json:"before"`
	Now       float64 `json:"now"`
	ChangePct float64 `json:"change_pct"`
}

// loadBaseline reads the report named by -compare; "auto" means the
// output directory's latest.json (the previous full run), if any.
func loadBaseline(o *options) (*Report, string, error) {
	path := o.compare
	switch path {
	case "none", "":
		return nil, "", nil
	case "auto":
		path = filepath.Join(o.out, "latest.json")
		if !fileExists(path) {
			return nil, "", nil
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, path, err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	if rep.Schema != SchemaVersion {
		return nil, path, fmt.Errorf("%s has schema %d, this harness writes %d", path, rep.Schema, SchemaVersion)
	}
	return &rep, path, nil
}

// compare lists the headline numbers of both runs. Only numbers present
// and valid in both appear.
func compare(before, now *Report) []Delta {
	var ds []Delta
	add := func(metric, unit string, b, n float64) {
		if b == 0 && n == 0 {
			return
		}
		d := Delta{Metric: metric, Unit: unit, Before: b, Now: n}
		if b != 0 {
			d.ChangePct = round1(100 * (n - b) / b)
		}
		ds = append(ds, d)
	}
	for _, t := range now.Throughput {
		for _, o := range before.Throughput {
			if o.Path == t.Path && o.Direction == t.Direction && o.Streams == t.Streams && o.Error == "" && t.Error == "" {
				add(fmt.Sprintf("throughput %s %s x%d", t.Path, t.Direction, t.Streams), "Gbit/s", o.Gbps, t.Gbps)
			}
		}
	}
	for _, r := range now.RTT {
		for _, o := range before.RTT {
			if o.Path == r.Path && o.Load == r.Load && o.direction() == r.direction() && o.Error == "" && r.Error == "" {
				name := strings.TrimSpace(fmt.Sprintf("rtt %s %s %s", r.Path, r.Load, r.direction()))
				add(name+" p50", "µs", o.P50Us, r.P50Us)
				if o.P99Us > 0 {
					add(name+" p99", "µs", o.P99Us, r.P99Us)
				}
			}
		}
	}
	for _, f := range now.Fairness {
		for _, o := range before.Fairness {
			if o.Scenario == f.Scenario && o.Clients == f.Clients && len(o.ClientGbps) > 0 && len(f.ClientGbps) > 0 {
				add("fairness "+f.Scenario+" aggregate", "Gbit/s", o.AggregateGbps, f.AggregateGbps)
				add("fairness "+f.Scenario+" Jain", "", o.Jain, f.Jain)
				add("fairness "+f.Scenario+" ping p99", "µs", o.Ping.P99Us, f.Ping.P99Us)
			}
		}
	}
	if b, n := before.Storm, now.Storm; b != nil && n != nil && b.N == n.N && b.Reconnected > 0 && n.Reconnected > 0 {
		add(fmt.Sprintf("storm N=%d p99", n.N), "s", b.P99S, n.P99S)
		add(fmt.Sprintf("storm N=%d within 5 s", n.N), "clients", float64(b.Within5s), float64(n.Within5s))
	}
	for _, s := range now.Scale {
		for _, o := range before.Scale {
			if o.N == s.N && o.Connected > 0 && s.Connected > 0 {
				add(fmt.Sprintf("scale N=%d connect", s.N), "s", o.ConnectS, s.ConnectS)
				add(fmt.Sprintf("scale N=%d RSS per client", s.N), "KiB", o.RSSPerClientKiB, s.RSSPerClientKiB)
				add(fmt.Sprintf("scale N=%d idle CPU", s.N), "%", o.IdleCPUPct, s.IdleCPUPct)
			}
		}
	}
	if before.Alloc != nil && now.Alloc != nil && before.Alloc.Allocations > 0 && now.Alloc.Allocations > 0 {
		add("controller allocations (gRPC)", "allocs/s", before.Alloc.AllocsPerS, now.Alloc.AllocsPerS)
		for _, r := range now.Alloc.Runs {
			for _, o := range before.Alloc.Runs {
				if o.Callers != r.Callers || releasesOf(o) != releasesOf(r) || o.Allocations == 0 || r.Allocations == 0 {
					continue
				}
				switch {
				case releasesOf(r) == releasesBatched:
					add(fmt.Sprintf("controller allocations (gRPC, %d callers, releases batched)", r.Callers), "allocs/s", o.AllocsPerS, r.AllocsPerS)
				case r.Callers != now.Alloc.Callers:
					add(fmt.Sprintf("controller allocations (gRPC, %d callers)", r.Callers), "allocs/s", o.AllocsPerS, r.AllocsPerS)
				}
			}
		}
	}
	for _, m := range now.Micro {
		for _, o := range before.Micro {
			if o.Package == m.Package && o.Name == m.Name {
				add(m.Name+" ns/op", "ns", o.NsPerOp, m.NsPerOp)
				if o.AllocsPerOp != nil && m.AllocsPerOp != nil {
					add(m.Name+" allocs/op", "allocs", *o.AllocsPerOp, *m.AllocsPerOp)
				}
			}
		}
	}
	return ds
}

func compareTable(rep *Report) table {
	b := rep.Baseline
	t := table{title: fmt.Sprintf("Compared with %s (commit %s%s)", b.StartedAt.UTC().Format("2006-01-02 15:04 MST"), shortHash(b.GitCommit), labelSuffix(b.Label)),
		header: []string{"metric", "unit", "before", "now", "change"}}
	for _, d := range rep.Comparison {
		t.rows = append(t.rows, []string{d.Metric, d.Unit, fmt.Sprintf("%.4g", d.Before), fmt.Sprintf("%.4g", d.Now), fmt.Sprintf("%+.1f%%", d.ChangePct)})
	}
	t.notes = []string{"baseline: " + b.File + " (-compare FILE picks another, -compare none turns this off)"}
	return t
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
