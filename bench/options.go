package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sections of a run, in the order they run.
const (
	secThroughput = "throughput"
	secRTT        = "rtt"
	secFairness   = "fairness"
	secCapture    = "capture"
	secStorm      = "storm"
	secScale      = "scale"
	secAlloc      = "alloc"
	secMicro      = "micro"
)

var allSections = []string{secThroughput, secRTT, secFairness, secCapture, secStorm, secScale, secAlloc, secMicro}

// backendDefault stands for "no --tun-backend flag at all": whatever the
// binaries default to, so the row follows a change of the product's default.
const backendDefault = "default"

// baselinePath is the row of -baseline-bin.
const baselinePath = "baseline-default"

// Reference tunnels measured beside ours (-refs).
const (
	refWireguardGo = "wireguard-go"
	refOpenVPN     = "openvpn"
)

var allRefs = []string{refWireguardGo, refOpenVPN}

// options is the validated command line.
type options struct {
	bin            string
	out            string
	src            string
	backends       []string
	quick          bool
	label          string
	sections       []string
	iperfSeconds   int
	iperfOmit      int
	repeat         int
	pingCount      int
	scaleN         []int
	scaleBackend   string
	refs           []string
	baselineBin    string
	cacheDir       string
	fairClients    int
	floodSize      int
	stormN         int
	idle           time.Duration
	echoPhase      time.Duration
	echoInterval   time.Duration
	allocCallers   []int
	allocDuration  time.Duration
	microBenchtime string
	timeout        time.Duration
	keepLogs       bool
	compare        string
	verbose        bool
}

func (o *options) has(section string) bool { return slices.Contains(o.sections, section) }

// parseOptions reads flags. -quick changes the defaults of the sizes (an
// explicit flag still wins): 1 s iperf3 runs, N=200, a 3 s idle window.
func parseOptions(args []string, out io.Writer) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	o := &options{}
	var backends, only, skip, ns, refs, callers string
	fs.StringVar(&o.bin, "bin", "bin", "directory holding 4over6-controller, 4over6-dataplane and 4over6-client (and 4over6-loadgen; built from -src when missing)")
	fs.StringVar(&o.out, "out", "bench/results", "directory for <timestamp>.{json,md,png} and latest.*")
	fs.StringVar(&o.src, "src", ".", "module root: micro-benchmarks run there (go test), and the load generator is built from it when -bin lacks it")
	fs.StringVar(&backends, "tun-backend", "", "TUN backends of our data plane and client, one row each, comma-separated: default (no --tun-backend flag: the binaries' own default), offload, water; all = default,offload,water (the default; quick: default,offload); both = water,offload")
	fs.StringVar(&o.baselineBin, "baseline-bin", "", "binaries of another build (say, the main branch's) measured on default flags as one more row, "+baselinePath+", in the same run: before/after without run-to-run noise")
	fs.StringVar(&refs, "refs", "", "reference tunnels measured beside ours, comma-separated: wireguard-go, openvpn (the default: both), or none")
	fs.StringVar(&o.cacheDir, "cache", "", "where wireguard-go is built and kept between runs (default: the user cache directory's fourover6-bench)")
	fs.IntVar(&o.fairClients, "fairness-clients", 8, "bulk clients of the fairness runs (each its own 4over6-client, TUN and namespace), plus one that pings")
	fs.IntVar(&o.floodSize, "flood-size", 1500, "IPv4 packet size of the 102 flood in the fairness run, bytes")
	fs.IntVar(&o.stormN, "storm-n", 0, "clients of the reconnect storm (default 10000, quick 200)")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 1 s iperf3 runs, N=200, short idle window, micro-benchmarks run once")
	fs.StringVar(&o.label, "label", "", "free text stored in the report, e.g. \"before batching\"")
	fs.StringVar(&only, "only", "", "comma-separated sections to run: "+strings.Join(allSections, ","))
	fs.StringVar(&skip, "skip", "", "comma-separated sections to leave out")
	fs.IntVar(&o.iperfSeconds, "duration", 0, "seconds per iperf3 run, after the omitted warm-up (default 5, quick 1)")
	fs.IntVar(&o.repeat, "repeat", 1, "iperf3 runs per cell; the median is reported (all in samples_gbps): more runs, less noise on a shared machine")
	fs.StringVar(&ns, "n", "", "comma-separated client counts of the scale runs (default 1000,10000; quick 200)")
	fs.StringVar(&o.scaleBackend, "scale-backend", "", "TUN backend of the scale runs (default: offload if measured, else the first of -tun-backend)")
	fs.DurationVar(&o.idle, "idle", 0, "idle window of the scale runs: data-plane CPU with only keepalives flowing (default 20s, quick 3s)")
	fs.DurationVar(&o.allocDuration, "alloc-duration", 0, "how long the controller's allocate/release loop runs (default 3s, quick 1s)")
	fs.StringVar(&callers, "alloc-callers", "8,32", "concurrent gRPC callers of the allocation benchmark, comma-separated: one run each")
	fs.StringVar(&o.microBenchtime, "benchtime", "", "go test -benchtime of the micro-benchmarks (default 1s, quick 1x)")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "the whole run is abandoned (and cleaned up) after this long")
	fs.BoolVar(&o.keepLogs, "keep-logs", false, "keep the daemons' logs (their directory is printed) instead of deleting them")
	fs.StringVar(&o.compare, "compare", "auto", "earlier report (JSON) to compare with; auto: -out/latest.json if present; none: no comparison")
	fs.BoolVar(&o.verbose, "v", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: all settings are flags", fs.Arg(0))
	}

	var err error
	if o.backends, err = pickBackends(backends, o.quick); err != nil {
		return nil, err
	}
	if o.refs, err = pickRefs(refs); err != nil {
		return nil, err
	}
	if o.cacheDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("-cache not given and no user cache directory (%v): pass -cache DIR", err)
		}
		o.cacheDir = filepath.Join(dir, "fourover6-bench")
	}
	if o.scaleBackend == "" {
		o.scaleBackend = o.backends[0]
		if slices.Contains(o.backends, "offload") {
			o.scaleBackend = "offload"
		}
	}
	if !slices.Contains(knownBackends, o.scaleBackend) {
		return nil, fmt.Errorf("-scale-backend %q: want %s", o.scaleBackend, strings.Join(knownBackends, ", "))
	}

	if o.sections, err = pickSections(only, skip); err != nil {
		return nil, err
	}

	def := func(quick, full int) int {
		if o.quick {
			return quick
		}
		return full
	}
	defDur := func(quick, full time.Duration) time.Duration {
		if o.quick {
			return quick
		}
		return full
	}
	if o.iperfSeconds == 0 {
		o.iperfSeconds = def(1, 5)
	}
	o.iperfOmit = def(0, 1)    // a 1 s run has no room for a warm-up to leave out
	o.pingCount = def(30, 300) // at pingInterval: 0.3 s, 3 s
	if o.idle == 0 {
		o.idle = defDur(3*time.Second, 20*time.Second)
	}
	o.echoPhase = defDur(2*time.Second, 10*time.Second)
	o.echoInterval = defDur(time.Second, 2*time.Second)
	if o.allocDuration == 0 {
		o.allocDuration = defDur(time.Second, 3*time.Second)
	}
	if o.microBenchtime == "" {
		o.microBenchtime = "1s"
		if o.quick {
			o.microBenchtime = "1x"
		}
	}
	if ns == "" {
		ns = "1000,10000"
		if o.quick {
			ns = "200"
		}
	}
	if o.scaleN, err = positiveInts(ns); err != nil {
		return nil, fmt.Errorf("-n %q: %w", ns, err)
	}
	if o.allocCallers, err = positiveInts(callers); err != nil {
		return nil, fmt.Errorf("-alloc-callers %q: %w", callers, err)
	}
	if o.stormN == 0 {
		o.stormN = def(200, 10000)
	}
	if o.iperfSeconds < 1 || o.repeat < 1 || o.idle <= 0 || o.allocDuration <= 0 || o.stormN < 1 || o.fairClients < 1 {
		return nil, errors.New("-duration, -repeat, -idle, -alloc-duration, -storm-n and -fairness-clients must be positive")
	}
	if o.floodSize < 28 || o.floodSize > 1500 {
		return nil, fmt.Errorf("-flood-size %d: want 28 (IPv4 + UDP headers) to 1500 (the TUN MTU)", o.floodSize)
	}
	return o, nil
}

// knownBackends are the TUN backends a row can be measured with.
var knownBackends = []string{backendDefault, "offload", "water"}

// pickBackends reads -tun-backend: a list, or all/both.
func pickBackends(s string, quick bool) ([]string, error) {
	switch s {
	case "":
		if quick {
			// The smoke run keeps to the default and one explicit
			// backend: water differs from offload only in the flag passed.
			return []string{backendDefault, "offload"}, nil
		}
		return slices.Clone(knownBackends), nil
	case "all":
		return slices.Clone(knownBackends), nil
	case "both":
		return []string{"water", "offload"}, nil
	}
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(knownBackends, f) {
			return nil, fmt.Errorf("-tun-backend %q: want a comma-separated list of %s, or all, or both", s, strings.Join(knownBackends, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// pickRefs reads -refs.
func pickRefs(s string) ([]string, error) {
	switch s {
	case "":
		return slices.Clone(allRefs), nil
	case "none":
		return nil, nil
	}
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allRefs, f) {
			return nil, fmt.Errorf("-refs %q: want a comma-separated list of %s, or none", s, strings.Join(allRefs, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

func positiveInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, errors.New("want positive numbers separated by commas")
		}
		out = append(out, n)
	}
	return out, nil
}

func pickSections(only, skip string) ([]string, error) {
	split := func(s string) ([]string, error) {
		var out []string
		for f := range strings.SplitSeq(s, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			if !slices.Contains(allSections, f) {
				return nil, fmt.Errorf("unknown section %q: want %s", f, strings.Join(allSections, ","))
			}
			out = append(out, f)
		}
		return out, nil
	}
	on, err := split(only)
	if err != nil {
		return nil, fmt.Errorf("-only: %w", err)
	}
	off, err := split(skip)
	if err != nil {
		return nil, fmt.Errorf("-skip: %w", err)
	}
	var out []string
	for _, s := range allSections {
		if (len(on) == 0 || slices.Contains(on, s)) && !slices.Contains(off, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-only/-skip leave no section to run")
	}
	return out, nil
}
