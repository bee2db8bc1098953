package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
			if o.Path == r.Path && o.Load == r.Load && o.Error == "" && r.Error == "" {
				add(fmt.Sprintf("rtt %s %s p50", r.Path, r.Load), "µs", o.P50Us, r.P50Us)
			}
		}
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
