// Command bench is the benchmark suite (`make bench`). In one
// run it builds a two-namespace lab (server side: controller and data
// plane; IPv6-only client side: 4over6-client), measures
//
//   - TCP throughput with iperf3 through our tunnel (per TUN backend), over
//     raw IPv6 on the same veth, and through the kernel's own IPv4-in-IPv6
//     encapsulation, 1 and 4 streams, both directions, with ratios;
//   - the same for reference tunnels over the same veth, built and set up
//     by the harness: wireguard-go and OpenVPN over TCP without crypto;
//   - RTT with ping at idle and under load each way on the same paths, as
//     distributions;
//   - fairness: 8 real clients' bulk uploads at once through one data
//     plane, while a ninth pings, without and with a tenth flooding 102s;
//   - a reconnect storm: 10,000 clients back after the data plane is
//     killed and restarted;
//   - scale: N concurrent lab clients (bench/loadgen) holding leases on one
//     data plane: connect time, RSS per client, idle CPU, echo success;
//   - controller allocations per second over gRPC;
//   - the data plane's micro-benchmarks (-benchmem);
//
// prints a table, and saves JSON, Markdown and a PNG chart under -out. Every
// step has a timeout; a failed measurement is recorded and the rest go on;
// namespaces and processes are removed on every exit path, Ctrl-C included.
//
// Usage (as root, from the module root, after `make build`):
//
//	go run ./bench -bin ./bin -out bench/results [-quick] [-tun-backend both|offload|water]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Exit codes: 0 all measured, 1 some measurement failed (the report says
// which), 2 the run could not start, 130 interrupted.
func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep, err := runBench(ctx, o, log)
	if err != nil {
		log.Error("bench could not run", "err", err)
		os.Exit(2)
	}
	fmt.Print(textReport(rep))
	files, err := writeResults(rep, o.out)
	for _, f := range files {
		log.Info("wrote", "file", f)
	}
	switch {
	case err != nil:
		log.Error("writing results", "err", err)
		os.Exit(1)
	case rep.Interrupted:
		os.Exit(130)
	case len(rep.Errors) > 0:
		log.Warn("some measurements failed; see the Errors table", "count", len(rep.Errors))
		os.Exit(1)
	}
}

// runBench runs every selected section and returns the report. An error
// means nothing could be measured at all (not root, no binaries, no lab).
func runBench(parent context.Context, o *options, log *slog.Logger) (*Report, error) {
	if err := preflight(o); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.timeout)
	defer cancel()
	start := time.Now()
	rep := &Report{Schema: SchemaVersion, Label: o.label, StartedAt: start.Truncate(time.Second), Quick: o.quick,
		Throughput: []Through{}, RTT: []RTT{}, Fairness: []Fairness{}, Capture: []CaptureRun{}, Scale: []Scale{}, Micro: []Micro{}, Errors: []RunError{}, Skipped: []Skip{}}
	rep.Config = RunConfig{
		TunBackends: o.backends, IperfSeconds: o.iperfSeconds, IperfOmitSeconds: o.iperfOmit, IperfRepeat: o.repeat,
		PingCount: o.pingCount, PingIntervalS: pingInterval, References: o.refs,
		FairnessClients: o.fairClients, FairnessSeconds: o.iperfSeconds, FloodPacketBytes: o.floodSize,
		StormN: o.stormN, StormBackend: o.scaleBackend, StormReconnectMin: stormReconnectMin.String(), StormReconnectMax: stormReconnectMax.String(),
		ScaleN: o.scaleN, ScaleBackend: o.scaleBackend,
		ScaleIdleS: o.idle.Seconds(), ScaleEchoPhaseS: o.echoPhase.Seconds(), ScaleEchoInterval: o.echoInterval.Seconds(),
		KeepaliveInterval: "20s", KeepaliveTimeout: "60s", ControllerStore: controllerStore,
		AllocCallers: o.allocCallers[0], AllocCallersList: o.allocCallers, AllocSeconds: o.allocDuration.Seconds(),
		MicroBenchtime: o.microBenchtime, Sections: o.sections,
	}
	if rep.Config.References == nil {
		rep.Config.References = []string{}
	}
	cpu0 := readCPU()
	rep.Machine = machineInfo(ctx, o)
	if l := rep.Machine.LoadAvgStart[0]; l > float64(rep.Machine.Cores)/2 {
		log.Warn("the machine is busy before the run: numbers will be noisy", "load_avg_1m", l, "cores", rep.Machine.Cores)
	}
	baseline, basePath, err := loadBaseline(o)
	if err != nil {
		log.Warn("no comparison: cannot read the baseline", "err", err)
	}
	log.Info("bench starting", "sections", o.sections, "backends", o.backends, "quick", o.quick, "commit", rep.Machine.GitCommit)

	if o.has(secThroughput) || o.has(secRTT) || o.has(secFairness) || o.has(secCapture) || o.has(secStorm) || o.has(secScale) || o.has(secAlloc) {
		if err := runLab(ctx, o, log, rep); err != nil {
			return nil, err
		}
	}
	// Go benchmarks need no namespaces: they run after the lab is gone.
	if o.has(secAlloc) && rep.Alloc != nil && ctx.Err() == nil {
		goBenchLab(log, o).runControllerGoBench(ctx, rep.Alloc, rep)
	}
	if o.has(secMicro) && ctx.Err() == nil {
		goBenchLab(log, o).runMicro(ctx, rep)
	}
	if parent.Err() != nil {
		rep.Interrupted = true
		rep.addError("run", "interrupted", parent.Err())
	} else if ctx.Err() != nil {
		rep.addError("run", "timeout", fmt.Errorf("the run hit -timeout %s; later measurements are missing", o.timeout))
	}
	rep.Targets = evaluateTargets(rep)
	rep.Machine.LoadAvgEnd = loadAvg()
	// Every process the run started has been waited for by now (the lab
	// is closed), so their CPU time is in our children's rusage.
	rep.Machine.CPU = cpuUsage(cpu0, readCPU(), time.Since(start), rep.Machine.Cores)
	if baseline != nil {
		rep.Baseline = &Baseline{File: basePath, StartedAt: baseline.StartedAt, GitCommit: baseline.Machine.GitCommit, Label: baseline.Label}
		rep.Comparison = compare(baseline, rep)
	}
	rep.DurationS = round1(time.Since(start).Seconds())
	return rep, nil
}

// runLab runs the sections that need namespaces, and removes them after.
func runLab(ctx context.Context, o *options, log *slog.Logger, rep *Report) error {
	l, err := newLab(log, o)
	if err != nil {
		return fmt.Errorf("setting up namespaces: %w", err)
	}
	defer l.close()
	if o.has(secThroughput) || o.has(secRTT) {
		l.runPaths(ctx, rep)
	}
	if o.has(secFairness) && ctx.Err() == nil {
		l.runFairness(ctx, rep)
	}
	if o.has(secCapture) && ctx.Err() == nil {
		l.runCapture(ctx, rep)
	}
	needLoadgen := func(section string) bool {
		if l.loadgen != "" {
			return true
		}
		if l.loadgen, err = loadgenBinary(ctx, o, l.dir); err != nil {
			rep.addError(section, "build 4over6-loadgen", err)
			return false
		}
		return true
	}
	if o.has(secStorm) && ctx.Err() == nil && needLoadgen(secStorm) {
		l.runStorm(ctx, rep)
	}
	if o.has(secScale) && ctx.Err() == nil && needLoadgen(secScale) {
		l.runScale(ctx, rep)
	}
	if o.has(secAlloc) && ctx.Err() == nil {
		l.runAlloc(ctx, rep)
	}
	return nil
}

// goBenchLab is a lab without namespaces, for the go test sections.
func goBenchLab(log *slog.Logger, o *options) *lab { return &lab{log: log, o: o} }

// preflight checks what no measurement can do without.
func preflight(o *options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the bench creates network namespaces and TUN devices")
	}
	abs, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = abs
	for _, b := range []string{"4over6-controller", "4over6-dataplane", "4over6-client"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			return fmt.Errorf("%s missing in -bin %s: run make build first", b, o.bin)
		}
	}
	if o.baselineBin != "" {
		if o.baselineBin, err = filepath.Abs(o.baselineBin); err != nil {
			return err
		}
		for _, b := range []string{"4over6-dataplane", "4over6-client"} {
			if _, err := os.Stat(filepath.Join(o.baselineBin, b)); err != nil {
				return fmt.Errorf("%s missing in -baseline-bin %s", b, o.baselineBin)
			}
		}
	}
	tools := []string{"ip", "ping"}
	if o.has(secThroughput) || o.has(secRTT) || o.has(secFairness) || o.has(secCapture) {
		tools = append(tools, "iperf3")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: run test/deps.sh bench (make deps-bench) as root to install it", tool)
		}
	}
	return nil
}

// loadgenBinary returns -bin/4over6-loadgen, or builds it from -src.
func loadgenBinary(ctx context.Context, o *options, dir string) (string, error) {
	if p := filepath.Join(o.bin, "4over6-loadgen"); fileExists(p) {
		return p, nil
	}
	out := filepath.Join(dir, "4over6-loadgen")
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	// The bench is a module of its own (its chart library stays out of the
	// product's module), in the bench folder of -src.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./loadgen")
	cmd.Dir = filepath.Join(o.src, "bench")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./loadgen in bench: %v: %s", err, oneLine(string(b)))
	}
	return out, nil
}
