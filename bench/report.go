package main

import "time"

// SchemaVersion is bumped when a field of Report changes meaning or goes
// away; adding fields does not bump it. Scripts comparing runs check it.
const SchemaVersion = 1

// Report is one benchmark run: the JSON file is this struct. Field names
// are stable (see bench/results/README.md).
type Report struct {
	Schema      int        `json:"schema"`
	Label       string     `json:"label,omitempty"`
	StartedAt   time.Time  `json:"started_at"`
	DurationS   float64    `json:"duration_s"`
	Quick       bool       `json:"quick"`
	Machine     Machine    `json:"machine"`
	Config      RunConfig  `json:"config"`
	Throughput  []Through  `json:"throughput"`
	RTT         []RTT      `json:"rtt"`
	Scale       []Scale    `json:"scale"`
	Alloc       *Alloc     `json:"alloc,omitempty"`
	Micro       []Micro    `json:"micro"`
	Targets     []Target   `json:"targets"`
	Errors      []RunError `json:"errors"`
	Interrupted bool       `json:"interrupted,omitempty"`
	Baseline    *Baseline  `json:"baseline,omitempty"`   // the run compared with
	Comparison  []Delta    `json:"comparison,omitempty"` // headline numbers, baseline vs now
}

// Machine describes where and what was measured.
type Machine struct {
	Hostname      string `json:"hostname"`
	Kernel        string `json:"kernel"`
	CPUModel      string `json:"cpu_model"`
	Cores         int    `json:"cores"`
	MemTotalMiB   int    `json:"mem_total_mib"`
	GoVersion     string `json:"go_version"`
	GitCommit     string `json:"git_commit"`
	GitDirty      bool   `json:"git_dirty"`
	BinaryVersion string `json:"binary_version"` // 4over6-dataplane --version
	Iperf3Version string `json:"iperf3_version"`
	FDHardLimit   uint64 `json:"fd_hard_limit"`
	// Load averages (1, 5, 15 min) when the run started and ended: this
	// machine may be shared, and others' work makes the numbers noisy.
	LoadAvgStart [3]float64 `json:"load_avg_start"`
	LoadAvgEnd   [3]float64 `json:"load_avg_end"`
}

// RunConfig is what the run was asked to do.
type RunConfig struct {
	TunBackends       []string `json:"tun_backends"`
	KernelEncap       string   `json:"kernel_encap"` // "ip6tnl-ipip6", "vxlan" or "" when it could not be set up
	KernelEncapNote   string   `json:"kernel_encap_note,omitempty"`
	IperfSeconds      int      `json:"iperf_seconds"`
	IperfOmitSeconds  int      `json:"iperf_omit_seconds"`
	IperfRepeat       int      `json:"iperf_repeat"`
	PingCount         int      `json:"ping_count"`
	PingIntervalS     float64  `json:"ping_interval_s"`
	ScaleN            []int    `json:"scale_n"`
	ScaleBackend      string   `json:"scale_backend"`
	ScaleIdleS        float64  `json:"scale_idle_s"`
	ScaleEchoPhaseS   float64  `json:"scale_echo_phase_s"`
	ScaleEchoInterval float64  `json:"scale_echo_interval_s"`
	KeepaliveInterval string   `json:"keepalive_interval"`
	KeepaliveTimeout  string   `json:"keepalive_timeout"`
	ControllerStore   string   `json:"controller_store"`
	AllocCallers      int      `json:"alloc_callers"`
	AllocSeconds      float64  `json:"alloc_seconds"`
	MicroBenchtime    string   `json:"micro_benchtime"`
	Sections          []string `json:"sections"`
}

// Path kinds.
const (
	KindOurs   = "ours"
	KindRaw    = "raw"
	KindKernel = "kernel"
	// KindFloor: a Go TCP echo over the same veth, no tunnel. The least
	// any user-space relay can add on this machine: each hop wakes a
	// thread, which is expensive on a virtual CPU that halts when idle.
	KindFloor = "floor"
)

// Through is one iperf3 TCP run. Direction "upload" is client -> server
// (iperf3 default), "download" is server -> client (-R).
type Through struct {
	Path        string    `json:"path"` // "raw", "kernel", "ours-water", "ours-offload"
	Kind        string    `json:"kind"` // ours, raw, kernel
	Backend     string    `json:"backend,omitempty"`
	Direction   string    `json:"direction"`
	Streams     int       `json:"streams"`
	Gbps        float64   `json:"gbps"` // median of samples_gbps
	SamplesGbps []float64 `json:"samples_gbps,omitempty"`
	Retransmits int       `json:"retransmits"`            // of the median run
	RatioRaw    *float64  `json:"ratio_raw,omitempty"`    // ours / raw, same cell
	RatioKernel *float64  `json:"ratio_kernel,omitempty"` // ours / kernel, same cell
	Error       string    `json:"error,omitempty"`
}

// RTT is one ping series. Load is "idle" or "loaded" (a 1-stream iperf3
// upload through the same path runs meanwhile).
type RTT struct {
	Path        string   `json:"path"`
	Kind        string   `json:"kind"`
	Backend     string   `json:"backend,omitempty"`
	Load        string   `json:"load"`
	Sent        int      `json:"sent"`
	Received    int      `json:"received"`
	MinUs       float64  `json:"min_us"`
	AvgUs       float64  `json:"avg_us"`
	P50Us       float64  `json:"p50_us"`
	P99Us       float64  `json:"p99_us"`
	MaxUs       float64  `json:"max_us"`
	AddedAvgUs  *float64 `json:"added_avg_us,omitempty"` // avg minus raw's avg, idle only
	AddedP50Us  *float64 `json:"added_p50_us,omitempty"`
	LoadedGbps  float64  `json:"loaded_gbps,omitempty"` // the concurrent iperf3's rate
	Error       string   `json:"error,omitempty"`
	LoaderError string   `json:"loader_error,omitempty"`
}

// Scale is one load-generator run with N clients on a fresh data plane.
type Scale struct {
	N                int     `json:"n"`
	Backend          string  `json:"backend"`
	Connected        int     `json:"connected"`
	Failed           int     `json:"failed"`
	FirstError       string  `json:"first_error,omitempty"`
	ConnectS         float64 `json:"connect_s"` // until the last 101 arrived
	RSSBeforeKiB     int64   `json:"rss_before_kib"`
	RSSAfterKiB      int64   `json:"rss_after_kib"` // at the start of the idle window
	RSSPeakKiB       int64   `json:"rss_peak_kib"`  // VmHWM
	RSSPerClientKiB  float64 `json:"rss_per_client_kib"`
	IdleWindowS      float64 `json:"idle_window_s"`
	IdleCPUPct       float64 `json:"idle_cpu_pct"` // of one core
	IdleKeepalives   uint64  `json:"idle_keepalives_received"`
	EchoSent         uint64  `json:"echo_sent"`
	EchoReceived     uint64  `json:"echo_received"`
	EchoSuccessPct   float64 `json:"echo_success_pct"`
	Dropped          int64   `json:"dropped"`
	LoadgenFDLimit   uint64  `json:"loadgen_fd_limit"`
	DataplaneThreads int     `json:"dataplane_threads"`
	Error            string  `json:"error,omitempty"`
}

// Alloc is the controller's allocation rate through its gRPC API, plus any
// Go benchmark of the controller with "Alloc" in its name.
type Alloc struct {
	Method       string  `json:"method"` // "grpc-unix"
	Callers      int     `json:"callers"`
	DurationS    float64 `json:"duration_s"`
	Allocations  int64   `json:"allocations"`
	AllocsPerS   float64 `json:"allocs_per_s"`
	AllocP50Us   float64 `json:"alloc_p50_us"`
	AllocP99Us   float64 `json:"alloc_p99_us"`
	Failures     int64   `json:"failures"`
	FirstFailure string  `json:"first_failure,omitempty"`
	GoBenchmarks []Micro `json:"go_benchmarks"`
	GoBenchNote  string  `json:"go_bench_note,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// Micro is one `go test -bench` result line.
type Micro struct {
	Package     string             `json:"package"`
	Name        string             `json:"name"`
	Iterations  int64              `json:"iterations"`
	NsPerOp     float64            `json:"ns_per_op"`
	BytesPerOp  *float64           `json:"bytes_per_op,omitempty"`
	AllocsPerOp *float64           `json:"allocs_per_op,omitempty"`
	Extra       map[string]float64 `json:"extra,omitempty"` // other metrics by unit, e.g. "MB/s"
}

// Target is one goal of issue 6 checked against this run's numbers.
type Target struct {
	Name  string `json:"name"`
	Goal  string `json:"goal"`
	Value string `json:"value"`
	Met   *bool  `json:"met"` // nil: not measured in this run
}

// RunError is a measurement that failed; the rest of the run went on.
type RunError struct {
	Section string `json:"section"`
	Step    string `json:"step"`
	Error   string `json:"error"`
}
