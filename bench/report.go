package main

import "time"

// SchemaVersion is bumped when a field of Report changes meaning or goes
// away; adding fields does not bump it. Scripts comparing runs check it.
const SchemaVersion = 1

// Report is one benchmark run: the JSON file is this struct. Field names
// are stable (see bench/results/README.md).
type Report struct {
	Schema      int          `json:"schema"`
	Label       string       `json:"label,omitempty"`
	StartedAt   time.Time    `json:"started_at"`
	DurationS   float64      `json:"duration_s"`
	Quick       bool         `json:"quick"`
	Machine     Machine      `json:"machine"`
	Config      RunConfig    `json:"config"`
	Throughput  []Through    `json:"throughput"`
	RTT         []RTT        `json:"rtt"`
	Fairness    []Fairness   `json:"fairness"`
	Capture     []CaptureRun `json:"capture"`
	Storm       *Storm       `json:"storm,omitempty"`
	Scale       []Scale      `json:"scale"`
	Alloc       *Alloc       `json:"alloc,omitempty"`
	Micro       []Micro      `json:"micro"`
	Targets     []Target     `json:"targets"`
	Errors      []RunError   `json:"errors"`
	Skipped     []Skip       `json:"skipped"`
	Interrupted bool         `json:"interrupted,omitempty"`
	Baseline    *Baseline    `json:"baseline,omitempty"`   // the run compared with
	Comparison  []Delta      `json:"comparison,omitempty"` // headline numbers, baseline vs now
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
	GitDescribe   string `json:"git_describe"` // git describe --tags --always --dirty
	GitDirty      bool   `json:"git_dirty"`
	BinaryVersion string `json:"binary_version"` // 4over6-dataplane --version
	Iperf3Version string `json:"iperf3_version"`
	// Versions of the reference tunnels, when measured.
	WireguardGoVersion string `json:"wireguard_go_version,omitempty"` // the Go module version built
	WgToolsVersion     string `json:"wg_tools_version,omitempty"`
	OpenVPNVersion     string `json:"openvpn_version,omitempty"`
	FDHardLimit        uint64 `json:"fd_hard_limit"`
	// Load averages (1, 5, 15 min) when the run started and ended: this
	// machine may be shared, and others' work makes the numbers noisy.
	LoadAvgStart [3]float64 `json:"load_avg_start"`
	LoadAvgEnd   [3]float64 `json:"load_avg_end"`
	// CPU is how busy the machine was during the run, and how much of
	// that was not this run's own processes.
	CPU *CPUUsage `json:"cpu,omitempty"`
}

// CPUUsage is the machine's CPU time over the run (from /proc/stat), and
// this run's own share of it (getrusage of the harness and every process
// it started and waited for). Others is the rest: other work on a shared
// machine, which makes the numbers noisy.
type CPUUsage struct {
	WallS        float64 `json:"wall_s"`
	Cores        int     `json:"cores"`
	BusyS        float64 `json:"busy_s"`  // user+nice+system+irq+softirq, all CPUs
	StealS       float64 `json:"steal_s"` // taken by the hypervisor for other guests
	OursS        float64 `json:"ours_s"`
	OthersS      float64 `json:"others_s"`      // busy - ours, at least 0
	OthersPct    float64 `json:"others_pct"`    // others / (wall x cores)
	BusyPct      float64 `json:"busy_pct"`      // busy / (wall x cores)
	InterruptsS  float64 `json:"interrupts_s"`  // irq+softirq part of busy: packets of every namespace, ours included
	OursIncludes string  `json:"ours_includes"` // what "ours" counts
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
	References        []string `json:"references"`
	FairnessClients   int      `json:"fairness_clients"`
	FairnessSeconds   int      `json:"fairness_seconds"`
	FloodPacketBytes  int      `json:"flood_packet_bytes"`
	StormN            int      `json:"storm_n"`
	StormBackend      string   `json:"storm_backend"`
	StormReconnectMin string   `json:"storm_reconnect_min"`
	StormReconnectMax string   `json:"storm_reconnect_max"`
	AllocCallersList  []int    `json:"alloc_callers_list"`
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
	// KindRef: another tunnel over the same veth, built and configured by
	// the harness (wireguard-go, OpenVPN): what a user-space tunnel
	// achieves here.
	KindRef = "reference"
)

// Through is one iperf3 TCP run. Direction "upload" is client -> server
// (iperf3 default), "download" is server -> client (-R).
type Through struct {
	Path        string    `json:"path"` // raw, kernel, ours-default, ours-offload, ours-water, wireguard-go, openvpn-tcp
	Kind        string    `json:"kind"` // ours, raw, kernel, reference
	Backend     string    `json:"backend,omitempty"`
	Direction   string    `json:"direction"`
	Streams     int       `json:"streams"`
	Gbps        float64   `json:"gbps"` // median of samples_gbps
	SamplesGbps []float64 `json:"samples_gbps,omitempty"`
	Retransmits int       `json:"retransmits"`            // of the median run
	RatioRaw    *float64  `json:"ratio_raw,omitempty"`    // ours or reference / raw, same cell
	RatioKernel *float64  `json:"ratio_kernel,omitempty"` // ours or reference / kernel, same cell
	Error       string    `json:"error,omitempty"`
}

// RTT is one ping series. Load is "idle" or "loaded": a 1-stream iperf3
// through the same path runs meanwhile, in LoadDirection (upload or
// download; reports before it existed measured upload only).
type RTT struct {
	Path          string   `json:"path"`
	Kind          string   `json:"kind"`
	Backend       string   `json:"backend,omitempty"`
	Load          string   `json:"load"`
	LoadDirection string   `json:"load_direction,omitempty"`
	Sent          int      `json:"sent"`
	Received      int      `json:"received"`
	LossPct       float64  `json:"loss_pct"`
	MinUs         float64  `json:"min_us"`
	AvgUs         float64  `json:"avg_us"`
	P50Us         float64  `json:"p50_us"`
	P90Us         float64  `json:"p90_us"`
	P99Us         float64  `json:"p99_us"`
	MaxUs         float64  `json:"max_us"`
	AddedAvgUs    *float64 `json:"added_avg_us,omitempty"` // avg minus raw's avg, idle only
	AddedP50Us    *float64 `json:"added_p50_us,omitempty"`
	LoadedGbps    float64  `json:"loaded_gbps,omitempty"` // the concurrent iperf3's rate
	Error         string   `json:"error,omitempty"`
	LoaderError   string   `json:"loader_error,omitempty"`
}

// direction is the load's direction of a loaded row; rows of reports
// before load_direction existed were all upload.
func (r RTT) direction() string {
	if r.Load == "loaded" && r.LoadDirection == "" {
		return "upload"
	}
	return r.LoadDirection
}

// Fairness is one run of several bulk clients through one data plane at
// once (each its own 4over6-client, TUN and namespace, one iperf3 upload
// each), with one more client pinging through the same data plane.
type Fairness struct {
	Scenario      string    `json:"scenario"` // "bulk", or "bulk+flood": one more client floods 102s meanwhile
	Backend       string    `json:"backend"`  // TUN backend of the data plane and the clients
	Clients       int       `json:"clients"`
	Seconds       int       `json:"seconds"`
	ClientGbps    []float64 `json:"client_gbps"` // each bulk client's rate at the receiver
	AggregateGbps float64   `json:"aggregate_gbps"`
	MinGbps       float64   `json:"min_gbps"`
	MaxGbps       float64   `json:"max_gbps"`
	Jain          float64   `json:"jain"`                      // (sum x)^2 / (n sum x^2) over the bulk clients: 1 is perfectly fair
	JainWithFlood float64   `json:"jain_with_flood,omitempty"` // the same with the flooder as one more client
	Ping          PingDist  `json:"ping"`                      // the pinging client, meanwhile
	FloodGbps     float64   `json:"flood_gbps,omitempty"`      // what the flooder's TCP connection took
	FloodFrames   int64     `json:"flood_frames,omitempty"`    // 102s it sent
	FloodError    string    `json:"flood_error,omitempty"`
	Error         string    `json:"error,omitempty"`
}

// PingDist is a ping series' distribution, in microseconds.
type PingDist struct {
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	LossPct  float64 `json:"loss_pct"`
	P50Us    float64 `json:"p50_us"`
	P90Us    float64 `json:"p90_us"`
	P99Us    float64 `json:"p99_us"`
	MaxUs    float64 `json:"max_us"`
	Error    string  `json:"error,omitempty"`
}

// Storm is the reconnect storm: N load-generator clients connected, the
// data plane killed with SIGKILL and started again, every client back at
// once. Times are from the restart (the new data plane's exec).
type Storm struct {
	N                 int     `json:"n"`
	Backend           string  `json:"backend"`
	Connected         int     `json:"connected"`   // before the kill
	Lost              int     `json:"lost"`        // connections the kill ended
	Reconnected       int     `json:"reconnected"` // clients with a 101 again
	Within5s          int     `json:"within_5s"`
	P50S              float64 `json:"p50_s"`
	P99S              float64 `json:"p99_s"`
	MaxS              float64 `json:"max_s"`
	FirstS            float64 `json:"first_s"`            // the first client back
	DataplaneReadyS   float64 `json:"dataplane_ready_s"`  // until its TUN had the gateway address and its API answered
	KillS             float64 `json:"kill_s"`             // SIGKILL until the old process was reaped
	ReconnectAttempts int64   `json:"reconnect_attempts"` // dials + 100s, all clients
	FirstError        string  `json:"first_error,omitempty"`
	Error             string  `json:"error,omitempty"`
}

// Skip is a measurement left out on purpose, with the reason: a reference
// tunnel whose tools are missing or would not start.
type Skip struct {
	Section string `json:"section"`
	Path    string `json:"path"`
	Reason  string `json:"reason"`
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
// Go benchmark of the controller with "Alloc" in its name. Its top-level
// numbers are the first caller count's run; Runs holds every caller count.
type Alloc struct {
	Method       string     `json:"method"` // "grpc-unix"
	Callers      int        `json:"callers"`
	DurationS    float64    `json:"duration_s"`
	Allocations  int64      `json:"allocations"`
	AllocsPerS   float64    `json:"allocs_per_s"`
	AllocP50Us   float64    `json:"alloc_p50_us"`
	AllocP99Us   float64    `json:"alloc_p99_us"`
	Failures     int64      `json:"failures"`
	FirstFailure string     `json:"first_failure,omitempty"`
	GoBenchmarks []Micro    `json:"go_benchmarks"`
	GoBenchNote  string     `json:"go_bench_note,omitempty"`
	Error        string     `json:"error,omitempty"`
	Runs         []AllocRun `json:"runs"`
}

// AllocRun is the allocation loop with one number of concurrent callers,
// each against a fresh controller (durable store: bbolt, its default).
type AllocRun struct {
	Callers int `json:"callers"`
	// Releases: "per-call" (ReleaseAddress after each allocation; also
	// when empty, in reports from before) or "batched" (ReleaseAddresses
	// of everyone's, as a data plane's release queue sends them).
	Releases     string  `json:"releases,omitempty"`
	DurationS    float64 `json:"duration_s"`
	Allocations  int64   `json:"allocations"`
	AllocsPerS   float64 `json:"allocs_per_s"`
	AllocP50Us   float64 `json:"alloc_p50_us"`
	AllocP99Us   float64 `json:"alloc_p99_us"`
	Failures     int64   `json:"failures"`
	FirstFailure string  `json:"first_failure,omitempty"`
	Error        string  `json:"error,omitempty"`
	// ControllerCPUUsPerAlloc is the controller's CPU time (user+system)
	// over the loop per allocation (with its release): what an allocation
	// costs, which a machine busy with other work disturbs less than the
	// rate. 0 when not measured.
	ControllerCPUUsPerAlloc float64 `json:"controller_cpu_us_per_alloc,omitempty"`
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

// Target is one goal checked against this run's numbers.
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
