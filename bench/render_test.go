package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sampleReport is a small, complete report for the rendering tests.
func sampleReport() *Report {
	rep := &Report{Schema: SchemaVersion, StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Config: RunConfig{TunBackends: []string{"water", "offload"}, KernelEncap: "vxlan", IperfSeconds: 5, IperfOmitSeconds: 1, PingCount: 50, PingIntervalS: 0.01}}
	rates := map[string]float64{"raw": 20, "kernel": 16, "ours-water": 1.5, "ours-offload": 6}
	for _, p := range []struct{ path, kind, backend string }{{"raw", KindRaw, ""}, {"kernel", KindKernel, ""}, {"ours-water", KindOurs, "water"}, {"ours-offload", KindOurs, "offload"}} {
		for _, c := range cells {
			rep.Throughput = append(rep.Throughput, Through{Path: p.path, Kind: p.kind, Backend: p.backend, Direction: c.direction, Streams: c.streams, Gbps: rates[p.path]})
		}
		rep.RTT = append(rep.RTT, RTT{Path: p.path, Kind: p.kind, Backend: p.backend, Load: "idle", Sent: 50, Received: 50, AvgUs: 30 + rates[p.path], P50Us: 28})
	}
	rep.Scale = []Scale{{N: 10000, Backend: "offload", Connected: 10000, ConnectS: 2.5, RSSPerClientKiB: 12.5, IdleCPUPct: 1.2, EchoSuccessPct: 100}}
	rep.Micro = []Micro{{Package: module + "dataplane", Name: "BenchmarkForwardTUNToClient", Iterations: 1000, NsPerOp: 200, AllocsPerOp: ptr(0.0), BytesPerOp: ptr(0.0)}}
	computeRatios(rep)
	rep.Targets = evaluateTargets(rep)
	return rep
}

func TestRatiosAndTargets(t *testing.T) {
	rep := sampleReport()
	for _, x := range rep.Throughput {
		if x.Kind != KindOurs {
			if x.RatioRaw != nil || x.RatioKernel != nil {
				t.Errorf("%s has ratios; only ours should", x.Path)
			}
			continue
		}
		want := map[string]float64{"ours-water": 1.5 / 16, "ours-offload": 6.0 / 16}[x.Path]
		if x.RatioKernel == nil || *x.RatioKernel != round3(want) {
			t.Errorf("%s %s x%d ratio to kernel = %v, want %v", x.Path, x.Direction, x.Streams, x.RatioKernel, round3(want))
		}
	}
	met := map[string]*bool{}
	for _, x := range rep.Targets {
		met[x.Name] = x.Met
	}
	if m := met["ours-offload 1-stream upload vs kernel"]; m == nil || !*m {
		t.Errorf("offload at 37.5%% of kernel should meet the 35%% target: %+v", rep.Targets)
	}
	if m := met["ours-water 1-stream upload vs kernel"]; m == nil || *m {
		t.Errorf("water at 9%% of kernel should miss the target")
	}
	if m := met["allocations per forwarded packet"]; m == nil || !*m {
		t.Errorf("zero-alloc forwarding benchmark not recognised: %+v", rep.Targets)
	}
}

func TestWriteResults(t *testing.T) {
	dir := t.TempDir()
	rep := sampleReport()
	files, err := writeResults(rep, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"20260102T030405Z.json", "20260102T030405Z.md", "20260102T030405Z.png", "latest.json", "latest.md", "latest.png"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v (files: %v)", name, err, files)
		}
	}
	var back Report
	b, _ := os.ReadFile(filepath.Join(dir, "latest.json"))
	if err := json.Unmarshal(b, &back); err != nil || back.Schema != SchemaVersion || len(back.Throughput) != 16 {
		t.Errorf("latest.json does not read back: %v, %d rows", err, len(back.Throughput))
	}
	md, _ := os.ReadFile(filepath.Join(dir, "latest.md"))
	for _, want := range []string{"![throughput](latest.png)", "| upload | 1 |", "ours-offload/kernel", "37.5%"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("latest.md lacks %q", want)
		}
	}
	text := textReport(rep)
	if !strings.Contains(text, "ours-water/raw") || !strings.Contains(text, "Targets of issue 6") {
		t.Errorf("text report incomplete:\n%s", text)
	}

	// A quick run is saved under its own name and leaves latest alone.
	q := sampleReport()
	q.Quick = true
	q.StartedAt = q.StartedAt.Add(time.Hour)
	if _, err := writeResults(q, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "20260102T040405Z-quick.json")); err != nil {
		t.Error(err)
	}
	b2, _ := os.ReadFile(filepath.Join(dir, "latest.json"))
	if string(b2) != string(b) {
		t.Error("a quick run replaced latest.json")
	}
}

func TestCompare(t *testing.T) {
	before, now := sampleReport(), sampleReport()
	for i := range now.Throughput {
		if now.Throughput[i].Path == "ours-offload" {
			now.Throughput[i].Gbps = 9 // from 6: +50%
		}
	}
	ds := compare(before, now)
	found := false
	for _, d := range ds {
		if d.Metric == "throughput ours-offload upload x1" {
			found = true
			if d.Before != 6 || d.Now != 9 || d.ChangePct != 50 {
				t.Errorf("delta %+v, want 6 -> 9, +50%%", d)
			}
		}
	}
	if !found {
		t.Fatalf("no throughput delta in %+v", ds)
	}
	now.Baseline, now.Comparison = &Baseline{File: "old.json", StartedAt: before.StartedAt, GitCommit: "0123456789abcdef"}, ds
	if text := textReport(now); !strings.Contains(text, "Compared with") || !strings.Contains(text, "+50.0%") {
		t.Errorf("comparison not printed:\n%s", text)
	}
}
