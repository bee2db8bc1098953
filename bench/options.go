package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sections of a run, in the order they run.
const (
	secThroughput = "throughput"
	secRTT        = "rtt"
	secScale      = "scale"
	secAlloc      = "alloc"
	secMicro      = "micro"
)

var allSections = []string{secThroughput, secRTT, secScale, secAlloc, secMicro}

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
	idle           time.Duration
	echoPhase      time.Duration
	echoInterval   time.Duration
	allocCallers   int
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
	var backends, only, skip, ns string
	fs.StringVar(&o.bin, "bin", "bin", "directory holding 4over6-controller, 4over6-dataplane and 4over6-client (and 4over6-loadgen; built from -src when missing)")
	fs.StringVar(&o.out, "out", "bench/results", "directory for <timestamp>.{json,md,png} and latest.*")
	fs.StringVar(&o.src, "src", ".", "module root: micro-benchmarks run there (go test), and the load generator is built from it when -bin lacks it")
	fs.StringVar(&backends, "tun-backend", "both", "TUN backend of our data plane and client: offload, water, or both (one row each)")
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
	fs.IntVar(&o.allocCallers, "alloc-callers", 8, "concurrent gRPC callers of the allocation benchmark")
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

	switch backends {
	case "both", "":
		o.backends = []string{"water", "offload"}
	case "water", "offload":
		o.backends = []string{backends}
	default:
		return nil, fmt.Errorf("-tun-backend %q: want offload, water or both", backends)
	}
	if o.scaleBackend == "" {
		o.scaleBackend = o.backends[0]
		if slices.Contains(o.backends, "offload") {
			o.scaleBackend = "offload"
		}
	}
	if o.scaleBackend != "water" && o.scaleBackend != "offload" {
		return nil, fmt.Errorf("-scale-backend %q: want offload or water", o.scaleBackend)
	}

	var err error
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
	o.iperfOmit = def(0, 1) // a 1 s run has no room for a warm-up to leave out
	o.pingCount = def(20, 50)
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
	for f := range strings.SplitSeq(ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-n %q: want positive client counts separated by commas", ns)
		}
		o.scaleN = append(o.scaleN, n)
	}
	if o.iperfSeconds < 1 || o.repeat < 1 || o.allocCallers < 1 || o.idle <= 0 || o.allocDuration <= 0 {
		return nil, errors.New("-duration, -repeat, -alloc-callers, -idle and -alloc-duration must be positive")
	}
	return o, nil
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
