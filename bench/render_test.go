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
		Config: RunConfig{TunBackends: []string{"default", "offload", "water"}, KernelEncap: "vxlan", IperfSeconds: 5, IperfOmitSeconds: 1,
			PingCount: 300, PingIntervalS: 0.01, FairnessSeconds: 5, FloodPacketBytes: 1500},
		Machine: Machine{GitCommit: "0123456789abcdef0123", GitDescribe: "v0.1-3-g0123456-dirty", GitDirty: true, Cores: 2,
			LoadAvgStart: [3]float64{1.5, 1, 1}, LoadAvgEnd: [3]float64{2.5, 1, 1},
			CPU: &CPUUsage{WallS: 400, Cores: 2, BusyS: 600, OursS: 450, OthersS: 120, OthersPct: 15, BusyPct: 75, InterruptsS: 30}}}
	rates := map[string]float64{"raw": 20, "kernel": 16, "ours-default": 9, "ours-water": 1.5, "ours-offload": 6, "wireguard-go": 3.3, "openvpn-tcp": 1.7}
	p50 := map[string]float64{"raw": 40, "kernel": 50, "ours-default": 300, "ours-water": 400, "ours-offload": 350, "wireguard-go": 500, "openvpn-tcp": 380}
	for _, p := range []struct{ path, kind, backend string }{{"raw", KindRaw, ""}, {"kernel", KindKernel, ""},
		{"ours-default", KindOurs, "default"}, {"ours-offload", KindOurs, "offload"}, {"ours-water", KindOurs, "water"},
		{"wireguard-go", KindRef, ""}, {"openvpn-tcp", KindRef, ""}} {
		for _, c := range cells {
			rep.Throughput = append(rep.Throughput, Through{Path: p.path, Kind: p.kind, Backend: p.backend, Direction: c.direction, Streams: c.streams, Gbps: rates[p.path]})
		}
		rep.RTT = append(rep.RTT, RTT{Path: p.path, Kind: p.kind, Backend: p.backend, Load: "idle", Sent: 300, Received: 300, AvgUs: 30 + rates[p.path], P50Us: p50[p.path]})
		for i, dir := range directions {
			rep.RTT = append(rep.RTT, RTT{Path: p.path, Kind: p.kind, Backend: p.backend, Load: "loaded", LoadDirection: dir, Sent: 300, Received: 299,
				LossPct: 0.333, P50Us: 1.5 * p50[p.path] * float64(i+1), P90Us: 2 * p50[p.path], P99Us: 4 * p50[p.path] * float64(i+1), MaxUs: 9000})
		}
	}
	rep.RTT = append(rep.RTT, RTT{Path: "go-tcp-echo", Kind: KindFloor, Load: "idle", Sent: 300, Received: 300, AvgUs: 150, P50Us: 160})
	rep.Fairness = []Fairness{
		{Scenario: "bulk", Backend: "default", Clients: 8, Seconds: 5, ClientGbps: []float64{1.2, 1.1, 1.25, 1.15, 1.2, 1.2, 1.1, 1.3}, Ping: PingDist{Sent: 450, Received: 450, P50Us: 400, P99Us: 1500}},
		{Scenario: "bulk+flood", Backend: "default", Clients: 8, Seconds: 5, ClientGbps: []float64{0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 3}, FloodGbps: 4.5, FloodFrames: 100000,
			Ping: PingDist{Sent: 450, Received: 440, LossPct: 2.222, P50Us: 900, P99Us: 9000}},
	}
	for i := range rep.Fairness {
		f := &rep.Fairness[i]
		f.AggregateGbps, f.MinGbps, f.MaxGbps, f.Jain = fairStats(f.ClientGbps)
	}
	rep.Storm = &Storm{N: 10000, Backend: "offload", Connected: 10000, Lost: 10000, Reconnected: 10000, Within5s: 9000, FirstS: 0.4, P50S: 2.1, P99S: 5.6, MaxS: 6.2, DataplaneReadyS: 0.3}
	rep.Scale = []Scale{{N: 10000, Backend: "offload", Connected: 10000, ConnectS: 2.5, RSSPerClientKiB: 12.5, IdleCPUPct: 1.2, EchoSuccessPct: 100}}
	rep.Alloc = &Alloc{Method: "grpc-unix", Callers: 8, Allocations: 30000, AllocsPerS: 10000,
		Runs: []AllocRun{{Callers: 8, Allocations: 30000, AllocsPerS: 10000}, {Callers: 32, Allocations: 12000, AllocsPerS: 4000}}}
	rep.Micro = []Micro{{Package: module + "dataplane", Name: "BenchmarkForwardTUNToClient", Iterations: 1000, NsPerOp: 200, AllocsPerOp: ptr(0.0), BytesPerOp: ptr(0.0)}}
	computeRatios(rep)
	rep.Targets = evaluateTargets(rep)
	return rep
}

func TestRatiosAndTargets(t *testing.T) {
	rep := sampleReport()
	for _, x := range rep.Throughput {
		if x.Kind != KindOurs && x.Kind != KindRef {
			if x.RatioRaw != nil || x.RatioKernel != nil {
				t.Errorf("%s has ratios; only ours and the references should", x.Path)
			}
			continue
		}
		want := map[string]float64{"ours-default": 9.0 / 16, "ours-water": 1.5 / 16, "ours-offload": 6.0 / 16, "wireguard-go": 3.3 / 16, "openvpn-tcp": 1.7 / 16}[x.Path]
		if x.RatioKernel == nil || *x.RatioKernel != round3(want) {
			t.Errorf("%s %s x%d ratio to kernel = %v, want %v", x.Path, x.Direction, x.Streams, x.RatioKernel, round3(want))
		}
	}
	met := map[string]*bool{}
	for _, x := range rep.Targets {
		met[x.Name] = x.Met
	}
	want := map[string]bool{
		"defaults 1 stream upload vs kernel":         true,  // 9/16 = 56% >= 50%
		"defaults 1 stream download vs raw IPv6":     true,  // 9/20 = 0.45 >= 0.28
		"defaults RTT during a 1-stream upload":      true,  // p50 450 µs, p99 1.2 ms
		"defaults RTT during a 1-stream download":    false, // p50 900 µs
		"defaults added RTT at idle":                 false, // 300-40 = 260 µs, the echo's 160-40 = 120 µs: 2.2x
		"8 bulk clients (bulk) aggregate":            true,  // 9.5 >= 9
		"8 bulk clients (bulk) Jain's index":         true,
		"8 bulk clients (bulk+flood) Jain's index":   false,
		"8 bulk clients (bulk) pinging client":       true,
		"8 bulk clients (bulk+flood) pinging client": false,
		"reconnect storm N=10000":                    false, // 9000 of 10000 within 5 s
		"controller allocations, 8 callers":          true,
		"controller allocations, 32 callers":         false,
		"allocations per forwarded packet":           true,
		"ours-offload 4 streams upload":              true,
	}
	for name, w := range want {
		m, ok := met[name]
		if !ok || m == nil {
			t.Errorf("target %q missing or unmeasured; targets: %+v", name, rep.Targets)
			continue
		}
		if *m != w {
			t.Errorf("target %q met = %v, want %v", name, *m, w)
		}
	}
	// Only the defaults row is held to the ratio goals.
	if _, ok := met["ours-water 1-stream upload vs kernel"]; ok {
		t.Error("the explicit backends are not targets")
	}
}

func TestFairStats(t *testing.T) {
	sum, lo, hi, jain := fairStats([]float64{1, 1, 1, 1})
	if sum != 4 || lo != 1 || hi != 1 || jain != 1 {
		t.Errorf("equal shares: %v %v %v %v, want 4 1 1 1", sum, lo, hi, jain)
	}
	// One client with everything: 1/n.
	if _, _, _, j := fairStats([]float64{4, 0, 0, 0}); j != 0.25 {
		t.Errorf("one client with everything: Jain %v, want 0.25", j)
	}
	if _, _, _, j := fairStats(nil); j != 0 {
		t.Errorf("no clients: Jain %v", j)
	}
}

func TestStormFill(t *testing.T) {
	restart := time.Unix(1000, 0)
	var ns []int64
	for i := range 100 {
		ns = append(ns, restart.Add(time.Duration(i+1)*100*time.Millisecond).UnixNano()) // 0.1 .. 10 s
	}
	s := &Storm{N: 100}
	s.fill(ns, restart)
	if s.FirstS != 0.1 || s.MaxS != 10 || s.P50S != 5 || s.P99S != 9.9 || s.Within5s != 50 {
		t.Errorf("storm fill: %+v", s)
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
	if err := json.Unmarshal(b, &back); err != nil || back.Schema != SchemaVersion || len(back.Throughput) != 28 || len(back.Fairness) != 2 || back.Storm == nil {
		t.Errorf("latest.json does not read back: %v, %d rows", err, len(back.Throughput))
	}
	md, _ := os.ReadFile(filepath.Join(dir, "latest.md"))
	for _, want := range []string{"![throughput and RTT under load](latest.png)", "| ours-offload | 6.00 |", "| up x1 /kernel |", "37.5%",
		"| wireguard-go |", "1-stream download", "## Fairness", "| bulk+flood | 8 |", "## Reconnect storm", "| 32 |", "v0.1-3-g0123456-dirty",
		"other processes 120 s (15% of the machine)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("latest.md lacks %q", want)
		}
	}
	text := textReport(rep)
	if !strings.Contains(text, "up x1 /raw") || !strings.Contains(text, "Targets (printed, never asserted)") {
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
