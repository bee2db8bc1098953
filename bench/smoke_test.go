package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/netnstest"
)

// TestSmoke runs the whole harness in -quick mode, end to end: namespaces,
// every daemon, iperf3, ping, the reference tunnels (where their tools are
// installed), the fairness runs, the capture runs, the reconnect storm, the load generator,
// the controller benchmark and the micro-benchmarks, then checks that every
// section produced its numbers and its files. It asserts that things were
// measured, never how fast they were.
func TestSmoke(t *testing.T) {
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("the bench smoke run takes about a minute; -short skips it")
	}
	for _, tool := range []string{"iperf3", "ping", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run test/deps.sh (make deps)", tool)
		}
	}
	src, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := func(dir, out string, pkgs ...string) {
		cmd := exec.Command("go", append([]string{"build", "-o", out}, pkgs...)...)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", pkgs, err, b)
		}
	}
	build(src, bin+"/", "./cmd/4over6-controller", "./cmd/4over6-dataplane", "./cmd/4over6-client", "./cmd/4over6ctl")
	build(filepath.Join(src, "bench"), filepath.Join(bin, "4over6-loadgen"), "./loadgen")

	out := t.TempDir()
	o, err := parseOptions([]string{"-quick", "-bin", bin, "-out", out, "-src", src, "-timeout", "6m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()
	rep, err := runBench(ctx, o, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(textReport(rep))
	if _, err := writeResults(rep, out); err != nil {
		t.Fatal(err)
	}
	for _, e := range rep.Errors {
		if strings.HasPrefix(e.Step, "go test") {
			// Other packages' benchmarks failing is their tests' business
			// (make test runs those too); the harness recorded it, as it should.
			t.Logf("%s / %s: %s", e.Section, e.Step, e.Error)
			continue
		}
		t.Errorf("%s / %s: %s", e.Section, e.Step, e.Error)
	}

	checkPaths(t, rep)
	checkFairness(t, rep)
	checkCapture(t, rep)
	checkStorm(t, rep)
	if len(rep.Scale) != 1 {
		t.Fatalf("%d scale rows, want 1", len(rep.Scale))
	}
	if s := rep.Scale[0]; s.Connected != s.N || s.RSSAfterKiB == 0 || s.EchoSent == 0 || s.EchoReceived == 0 {
		t.Errorf("scale: %+v", s)
	}
	if rep.Alloc == nil || rep.Alloc.Allocations == 0 || rep.Alloc.AllocsPerS <= 0 {
		t.Errorf("alloc: %+v", rep.Alloc)
	} else {
		var runs []string
		for _, r := range rep.Alloc.Runs {
			runs = append(runs, fmt.Sprintf("%d/%s", r.Callers, r.Releases))
			if r.Allocations == 0 || r.AllocsPerS <= 0 || r.AllocP99Us < r.AllocP50Us {
				t.Errorf("alloc run with %d callers: %+v", r.Callers, r)
			}
		}
		if fmt.Sprint(runs) != "[8/per-call 8/batched 32/per-call 32/batched]" {
			t.Errorf("alloc runs (callers/releases) %v, want [8/per-call 8/batched 32/per-call 32/batched]", runs)
		}
	}
	if len(rep.Micro) == 0 {
		t.Error("no micro-benchmark results")
	}
	m := rep.Machine
	if m.GitDescribe == "" || m.CPU == nil || m.CPU.WallS <= 0 || m.CPU.OursS <= 0 || m.CPU.BusyS <= 0 {
		t.Errorf("machine: describe %q, cpu %+v", m.GitDescribe, m.CPU)
	}
	names := map[string]bool{}
	for _, x := range rep.Targets {
		names[x.Name] = true
	}
	for _, want := range []string{"defaults 1 stream upload vs kernel", "defaults 1 stream download vs raw IPv6",
		"defaults RTT during a 1-stream upload", "defaults RTT during a 1-stream download", "defaults added RTT at idle",
		"8 bulk clients (bulk) Jain's index", "8 bulk clients (bulk+flood) pinging client", "reconnect storm N=200",
		"controller allocations, 8 callers", "controller allocations, 32 callers"} {
		if !names[want] {
			t.Errorf("target %q missing", want)
		}
	}

	// The files: stamped with -quick, latest untouched by a quick run.
	stamp := rep.StartedAt.UTC().Format("20060102T150405Z") + "-quick"
	for _, ext := range []string{".json", ".md", ".png"} {
		if fi, err := os.Stat(filepath.Join(out, stamp+ext)); err != nil || fi.Size() == 0 {
			t.Errorf("%s%s: %v", stamp, ext, err)
		}
	}
	var back Report
	b, _ := os.ReadFile(filepath.Join(out, stamp+".json"))
	if err := json.Unmarshal(b, &back); err != nil || back.Machine.Kernel == "" || back.Machine.Cores == 0 {
		t.Errorf("JSON report: %v, machine %+v", err, back.Machine)
	}
	if _, err := os.Stat(filepath.Join(out, "latest.json")); err == nil {
		t.Error("a quick run wrote latest.json")
	}
	// Nothing is left behind.
	if ents, _ := os.ReadDir("/run/netns"); len(ents) > 0 {
		for _, e := range ents {
			if e.Name() == nsPrefix+"srv-"+strconv.Itoa(os.Getpid()) || e.Name() == nsPrefix+"cli-"+strconv.Itoa(os.Getpid()) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	}
}

// checkPaths: every path has its four throughput cells and its three
// ping series (idle, under an upload, under a download), ours and the
// reference tunnels their ratios. A reference tunnel whose tools this
// machine lacks (make test installs only the test set, not the bench
// set) must instead be listed as skipped, with the reason; where the
// tools are installed, it must have been measured.
func checkPaths(t *testing.T, rep *Report) {
	t.Helper()
	want := []string{"raw", "kernel", "ours-default", "ours-offload"}
	for _, ref := range []struct{ path, tool string }{{"wireguard-go", "wg"}, {"openvpn-tcp", "openvpn"}} {
		var skip *Skip
		for i := range rep.Skipped {
			if rep.Skipped[i].Path == ref.path {
				skip = &rep.Skipped[i]
			}
		}
		if _, err := exec.LookPath(ref.tool); err == nil {
			if skip != nil {
				t.Errorf("%s is installed, yet %s was skipped: %s", ref.tool, ref.path, skip.Reason)
			}
			want = append(want, ref.path)
			continue
		}
		if skip == nil || !strings.Contains(skip.Reason, ref.tool+" not installed") {
			t.Errorf("%s is not installed: %s should be listed as skipped with that reason, got %+v", ref.tool, ref.path, skip)
		} else {
			t.Logf("%s skipped as it should be here: %s", ref.path, skip.Reason)
		}
	}
	if got := throughputPaths(rep); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("throughput paths %v, want %v", got, want)
	}
	if len(rep.Throughput) != len(want)*len(cells) {
		t.Errorf("%d throughput rows, want %d (%d paths x %d cells)", len(rep.Throughput), len(want)*len(cells), len(want), len(cells))
	}
	for _, x := range rep.Throughput {
		if x.Gbps <= 0 {
			t.Errorf("throughput %s %s x%d: no rate", x.Path, x.Direction, x.Streams)
		}
		if (x.Kind == KindOurs || x.Kind == KindRef) && (x.RatioRaw == nil || x.RatioKernel == nil) {
			t.Errorf("throughput %s %s x%d: ratios missing", x.Path, x.Direction, x.Streams)
		}
	}
	if rep.Config.KernelEncap == "" {
		t.Error("no kernel encapsulation recorded")
	}
	if len(rep.RTT) != len(want)*len(rttLoads)+1 {
		t.Errorf("%d RTT rows, want %d (%d paths x idle, upload, download, and the Go echo floor)", len(rep.RTT), len(want)*len(rttLoads)+1, len(want))
	}
	series := map[string]bool{}
	for _, r := range rep.RTT {
		series[r.Path+" "+r.Load+" "+r.LoadDirection] = true
		if r.Received == 0 || r.P50Us <= 0 || r.P90Us < r.P50Us || r.P99Us < r.P90Us || r.MaxUs < r.P99Us || r.LossPct < 0 || r.LossPct > 100 {
			t.Errorf("rtt %s %s %s: %+v", r.Path, r.Load, r.LoadDirection, r)
		}
		if r.Load == "loaded" && (r.LoadedGbps <= 0 || r.LoaderError != "") {
			t.Errorf("rtt %s under %s: the load did not run: %v %s", r.Path, r.LoadDirection, r.LoadedGbps, r.LoaderError)
		}
		if r.Load == "idle" && r.Kind != KindRaw && r.AddedP50Us == nil {
			t.Errorf("rtt %s: added RTT over raw missing", r.Path)
		}
	}
	for _, p := range want {
		for _, ld := range rttLoads {
			if !series[p+" "+ld.load+" "+ld.direction] {
				t.Errorf("rtt %s %s %s missing", p, ld.load, ld.direction)
			}
		}
	}
}

func checkFairness(t *testing.T, rep *Report) {
	t.Helper()
	if len(rep.Fairness) != len(fairScenarios) {
		t.Fatalf("%d fairness rows, want %d", len(rep.Fairness), len(fairScenarios))
	}
	for i, f := range rep.Fairness {
		if f.Scenario != fairScenarios[i] || f.Clients != 8 || len(f.ClientGbps) != 8 || f.Error != "" {
			t.Errorf("fairness %d: %+v", i, f)
		}
		for j, g := range f.ClientGbps {
			if g <= 0 {
				t.Errorf("fairness %s: client %d moved nothing", f.Scenario, j+1)
			}
		}
		if f.Jain <= 0 || f.Jain > 1 || f.AggregateGbps <= 0 || f.MinGbps > f.MaxGbps {
			t.Errorf("fairness %s: aggregate %v, min %v, max %v, Jain %v", f.Scenario, f.AggregateGbps, f.MinGbps, f.MaxGbps, f.Jain)
		}
		if p := f.Ping; p.Received == 0 || p.P50Us <= 0 || p.P99Us < p.P50Us || p.Error != "" {
			t.Errorf("fairness %s: the pinging client: %+v", f.Scenario, p)
		}
		flood := f.Scenario == "bulk+flood"
		if flood != (f.FloodFrames > 0 && f.FloodGbps > 0 && f.JainWithFlood > 0 && f.JainWithFlood <= 1) || f.FloodError != "" {
			t.Errorf("fairness %s: flood %d frames, %v Gbit/s, error %q", f.Scenario, f.FloodFrames, f.FloodGbps, f.FloodError)
		}
	}
}

func checkStorm(t *testing.T, rep *Report) {
	t.Helper()
	s := rep.Storm
	if s == nil {
		t.Fatal("no reconnect storm")
	}
	if s.Connected != s.N || s.Lost != s.N || s.Reconnected != s.N || s.Error != "" {
		t.Errorf("storm: %+v", s)
	}
	if s.FirstS <= 0 || s.P50S < s.FirstS || s.P99S < s.P50S || s.MaxS < s.P99S || s.DataplaneReadyS <= 0 || s.ReconnectAttempts < int64(s.N) {
		t.Errorf("storm times: %+v", s)
	}
}

// testWriter sends the harness's progress logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// checkCapture: both directions measured without and with a capture, and
// the capture's summary read.
func checkCapture(t *testing.T, rep *Report) {
	t.Helper()
	if len(rep.Capture) != 2 {
		t.Fatalf("%d capture runs, want upload and download", len(rep.Capture))
	}
	for _, r := range rep.Capture {
		if r.Error != "" || r.GbpsNoCapture <= 0 || r.GbpsCapture <= 0 || r.Ratio <= 0 || !r.CaptureSummaryOK || r.CapturedPackets == 0 {
			t.Errorf("capture run %+v", r)
		}
	}
}
