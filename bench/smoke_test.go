package main

import (
	"context"
	"encoding/json"
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
// every daemon, iperf3, ping, the load generator, the controller benchmark
// and the micro-benchmarks, then checks that every section produced its
// numbers and its files. It asserts that things were measured, never how
// fast they were.
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
	build(src, bin+"/", "./cmd/4over6-controller", "./cmd/4over6-dataplane", "./cmd/4over6-client")
	build(filepath.Join(src, "bench"), filepath.Join(bin, "4over6-loadgen"), "./loadgen")

	out := t.TempDir()
	o, err := parseOptions([]string{"-quick", "-bin", bin, "-out", out, "-src", src, "-timeout", "4m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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

	if want := 4 * len(cells); len(rep.Throughput) != want {
		t.Errorf("%d throughput rows, want %d (raw, kernel, water, offload x %d cells)", len(rep.Throughput), want, len(cells))
	}
	for _, x := range rep.Throughput {
		if x.Gbps <= 0 {
			t.Errorf("throughput %s %s x%d: no rate", x.Path, x.Direction, x.Streams)
		}
		if x.Kind == KindOurs && (x.RatioRaw == nil || x.RatioKernel == nil) {
			t.Errorf("throughput %s %s x%d: ratios missing", x.Path, x.Direction, x.Streams)
		}
	}
	if rep.Config.KernelEncap == "" {
		t.Error("no kernel encapsulation recorded")
	}
	if len(rep.RTT) != 9 {
		t.Errorf("%d RTT rows, want 9 (4 paths, idle and loaded, and the Go echo floor)", len(rep.RTT))
	}
	for _, r := range rep.RTT {
		if r.Received == 0 || r.AvgUs <= 0 {
			t.Errorf("rtt %s %s: no replies", r.Path, r.Load)
		}
		if r.Load == "idle" && r.Kind == KindOurs && r.AddedAvgUs == nil {
			t.Errorf("rtt %s: added RTT over raw missing", r.Path)
		}
	}
	if len(rep.Scale) != 1 {
		t.Fatalf("%d scale rows, want 1", len(rep.Scale))
	}
	if s := rep.Scale[0]; s.Connected != s.N || s.RSSAfterKiB == 0 || s.EchoSent == 0 || s.EchoReceived == 0 {
		t.Errorf("scale: %+v", s)
	}
	if rep.Alloc == nil || rep.Alloc.Allocations == 0 || rep.Alloc.AllocsPerS <= 0 {
		t.Errorf("alloc: %+v", rep.Alloc)
	}
	if len(rep.Micro) == 0 {
		t.Error("no micro-benchmark results")
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

// testWriter sends the harness's progress logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
