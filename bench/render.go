package main

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

const module = "github.com/fourover6/fourover6/"

// summary is the few lines that say what was measured where.
func summary(rep *Report) []string {
	m := rep.Machine
	commit := m.GitCommit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if m.GitDirty {
		commit += " (uncommitted changes)"
	}
	if m.GitDescribe != "" {
		commit += " (" + m.GitDescribe + ")"
	}
	lines := []string{
		fmt.Sprintf("run %s  took %.0f s  quick=%v%s", rep.StartedAt.Format("2006-01-02 15:04:05 MST"), rep.DurationS, rep.Quick, labelSuffix(rep.Label)),
		fmt.Sprintf("commit %s  binaries %s", commit, m.BinaryVersion),
		fmt.Sprintf("%s x%d, %d MiB, kernel %s, %s, %s", m.CPUModel, m.Cores, m.MemTotalMiB, m.Kernel, m.GoVersion, m.Iperf3Version),
		fmt.Sprintf("TUN backends: %s; kernel encapsulation: %s", strings.Join(rep.Config.TunBackends, ", "), orDash(rep.Config.KernelEncap)),
	}
	if rep.Config.KernelEncapNote != "" {
		lines = append(lines, rep.Config.KernelEncapNote)
	}
	if refs := refVersions(m); refs != "" {
		lines = append(lines, "reference tunnels: "+refs)
	}
	la, le := m.LoadAvgStart, m.LoadAvgEnd
	load := fmt.Sprintf("load average %.2f/%.2f/%.2f at the start, %.2f/%.2f/%.2f at the end", la[0], la[1], la[2], le[0], le[1], le[2])
	if la[0] > float64(m.Cores)/2 {
		load += ": the machine was busy with other work, so these numbers are noisy"
	}
	lines = append(lines, load)
	if c := m.CPU; c != nil {
		lines = append(lines, cpuLine(c))
	}
	return lines
}

// cpuLine says how busy the machine was, and how much of it was not us.
func cpuLine(c *CPUUsage) string {
	l := fmt.Sprintf("CPU over the run: %.0f%% of %d cores busy; this run's processes %.0f s, other processes %.0f s (%.0f%% of the machine), interrupts %.0f s",
		c.BusyPct, c.Cores, c.OursS, c.OthersS, c.OthersPct, c.InterruptsS)
	if c.StealS > 0 {
		l += fmt.Sprintf(", stolen by the hypervisor %.0f s", c.StealS)
	}
	return l
}

func refVersions(m Machine) string {
	var vs []string
	if m.WireguardGoVersion != "" {
		vs = append(vs, "wireguard-go "+m.WireguardGoVersion+" (wg "+orDash(m.WgToolsVersion)+")")
	}
	if m.OpenVPNVersion != "" {
		vs = append(vs, m.OpenVPNVersion)
	}
	return strings.Join(vs, "; ")
}

func labelSuffix(l string) string {
	if l == "" {
		return ""
	}
	return "  label: " + l
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// tables turns a report into its printed sections.
func tables(rep *Report) []table {
	var ts []table
	if len(rep.Throughput) > 0 {
		ts = append(ts, throughputTable(rep))
	}
	if len(rep.RTT) > 0 {
		ts = append(ts, rttTable(rep))
	}
	if len(rep.Fairness) > 0 {
		ts = append(ts, fairnessTable(rep))
	}
	if len(rep.Capture) > 0 {
		ts = append(ts, captureTable(rep))
	}
	if rep.Storm != nil {
		ts = append(ts, stormTable(rep.Storm))
	}
	if len(rep.Scale) > 0 {
		ts = append(ts, scaleTable(rep))
	}
	if rep.Alloc != nil {
		ts = append(ts, allocTable(rep.Alloc))
	}
	if len(rep.Micro) > 0 {
		ts = append(ts, microTable("Micro-benchmarks (go test -bench . -benchmem "+strings.Join(microPackages, " ")+")", rep.Micro))
	}
	if len(rep.Targets) > 0 {
		ts = append(ts, targetTable(rep.Targets))
	}
	if rep.Baseline != nil && len(rep.Comparison) > 0 {
		ts = append(ts, compareTable(rep))
	}
	if len(rep.Skipped) > 0 {
		t := table{title: "Skipped (left out on purpose, with the reason)", header: []string{"section", "path", "reason"}}
		for _, x := range rep.Skipped {
			t.rows = append(t.rows, []string{x.Section, x.Path, clip(x.Reason, 400)})
		}
		ts = append(ts, t)
	}
	if len(rep.Errors) > 0 {
		t := table{title: "Errors (these measurements failed; the rest ran)", header: []string{"section", "step", "error"}}
		for _, e := range rep.Errors {
			t.rows = append(t.rows, []string{e.Section, e.Step, clip(e.Error, 300)})
		}
		ts = append(ts, t)
	}
	return ts
}

// throughputTable: one row per path (baselines, ours, references), the
// four cells side by side, then the 1-stream ratios to raw and kernel.
func throughputTable(rep *Report) table {
	t := table{title: fmt.Sprintf("Throughput: iperf3 TCP, Gbit/s (%d s runs, first %d s omitted)", rep.Config.IperfSeconds, rep.Config.IperfOmitSeconds)}
	if rep.Config.IperfRepeat > 1 {
		t.title += fmt.Sprintf(", median of %d", rep.Config.IperfRepeat)
	}
	t.header = []string{"path"}
	for _, c := range cells {
		t.header = append(t.header, cellName(c.direction, c.streams))
	}
	t.header = append(t.header, "up x1 /raw", "down x1 /raw", "up x1 /kernel", "down x1 /kernel")
	for _, p := range throughputPaths(rep) {
		row := []string{pathLabel(rep, p)}
		byCell := map[string]Through{}
		for _, x := range rep.Throughput {
			if x.Path == p {
				byCell[cellName(x.Direction, x.Streams)] = x
			}
		}
		for _, c := range cells {
			x, ok := byCell[cellName(c.direction, c.streams)]
			switch {
			case !ok:
				row = append(row, "-")
			case x.Error != "":
				row = append(row, "ERR")
			default:
				row = append(row, f2(x.Gbps))
			}
		}
		up, down := byCell[cellName("upload", 1)], byCell[cellName("download", 1)]
		row = append(row, ratio(up.RatioRaw), ratio(down.RatioRaw), ratio(up.RatioKernel), ratio(down.RatioKernel))
		t.rows = append(t.rows, row)
	}
	t.notes = []string{"upload = client -> server (iperf3 default), download = server -> client (-R); rate measured at the receiver",
		"ours-default: no --tun-backend flag on either end (the binaries' default); wireguard-go encrypts, the others do not"}
	return t
}

// cellName is a cell's short column name, e.g. "up x1".
func cellName(direction string, streams int) string {
	d := "up"
	if direction == "download" {
		d = "down"
	}
	return fmt.Sprintf("%s x%d", d, streams)
}

// throughputPaths are the paths with throughput rows, in measured order.
func throughputPaths(rep *Report) []string {
	var ps []string
	for _, t := range rep.Throughput {
		if !slices.Contains(ps, t.Path) {
			ps = append(ps, t.Path)
		}
	}
	return ps
}

func pathLabel(rep *Report, p string) string {
	if p == "kernel" && rep.Config.KernelEncap != "" {
		return "kernel (" + rep.Config.KernelEncap + ")"
	}
	return p
}

func rttTable(rep *Report) table {
	t := table{title: fmt.Sprintf("RTT: ping -i %g (%d pings a series), microseconds", rep.Config.PingIntervalS, rep.Config.PingCount),
		header: []string{"path", "load", "recv/sent", "loss %", "min", "p50", "p90", "p99", "max", "added p50 over raw", "load Gbit/s"}}
	for _, r := range rep.RTT {
		load := r.Load
		if r.Load == "loaded" {
			load = "1-stream " + r.direction()
		}
		if r.Error != "" {
			t.rows = append(t.rows, []string{pathLabel(rep, r.Path), load, "ERR", "", "", "", "", "", "", "", ""})
			continue
		}
		added := "-"
		if r.AddedP50Us != nil {
			added = f1(*r.AddedP50Us)
		}
		gbps := "-"
		if r.LoadedGbps > 0 {
			gbps = f2(r.LoadedGbps)
		}
		t.rows = append(t.rows, []string{pathLabel(rep, r.Path), load, fmt.Sprintf("%d/%d", r.Received, r.Sent), f2(r.LossPct),
			f1(r.MinUs), f1(r.P50Us), f1(r.P90Us), f1(r.P99Us), f1(r.MaxUs), added, gbps})
	}
	t.notes = []string{"1-stream upload/download = while a 1-stream iperf3 runs through the same path that way (it starts 1 s before the pings, 0.2 s in a quick run);",
		"added = at idle, minus raw IPv6 over the veth; go-tcp-echo: a TCP round trip between two Go processes over the veth, the floor under any user-space relay"}
	return t
}

func fairnessTable(rep *Report) table {
	t := table{title: "Fairness: bulk clients through one data plane at once (iperf3 -P1 upload each), a further client pinging",
		header: []string{"scenario", "clients", "aggregate Gbit/s", "min", "max", "Jain", "ping p50 µs", "p90", "p99", "max", "loss %", "flood Gbit/s", "Jain with flooder"}}
	for _, f := range rep.Fairness {
		if f.Error != "" && len(f.ClientGbps) == 0 {
			t.rows = append(t.rows, []string{f.Scenario, fmt.Sprint(f.Clients), "ERR", "", "", "", "", "", "", "", "", "", ""})
			continue
		}
		flood, jainAll := "-", "-"
		if f.Scenario != "bulk" {
			flood, jainAll = f2(f.FloodGbps), f3(f.JainWithFlood)
		}
		t.rows = append(t.rows, []string{f.Scenario, fmt.Sprint(f.Clients), f2(f.AggregateGbps), f2(f.MinGbps), f2(f.MaxGbps), f3(f.Jain),
			f1(f.Ping.P50Us), f1(f.Ping.P90Us), f1(f.Ping.P99Us), f1(f.Ping.MaxUs), f2(f.Ping.LossPct), flood, jainAll})
	}
	backend := backendDefault
	if len(rep.Fairness) > 0 {
		backend = rep.Fairness[0].Backend
	}
	t.notes = []string{
		fmt.Sprintf("each client a 4over6-client with its own TUN, namespace and veth; data plane and clients on %s flags; %d s runs; ping -i %g from the extra client to %s",
			backend, rep.Config.FairnessSeconds, rep.Config.PingIntervalS, gateway),
		fmt.Sprintf("bulk+flood: one more lab connection (4over6-loadgen -flood) sends %d-byte 102s to a black hole behind the data plane as fast as its TCP takes them (flood Gbit/s: what its TCP took); Jain = (sum x)^2 / (n sum x^2) over the bulk clients, and with the flooder as one more", rep.Config.FloodPacketBytes),
	}
	for _, f := range rep.Fairness {
		if len(f.ClientGbps) > 0 {
			var xs []string
			for _, g := range f.ClientGbps {
				xs = append(xs, f2(g))
			}
			t.notes = append(t.notes, fmt.Sprintf("%s per client, Gbit/s: %s", f.Scenario, strings.Join(xs, " ")))
		}
	}
	return t
}

func stormTable(s *Storm) table {
	t := table{title: "Reconnect storm: the data plane killed (SIGKILL) and restarted under N connected clients",
		header: []string{"N", "backend", "lost", "reconnected", "within 5 s", "first s", "p50 s", "p99 s", "max s", "data plane ready s", "attempts"}}
	if s.Connected == 0 && s.Error != "" {
		t.rows = append(t.rows, []string{fmt.Sprint(s.N), s.Backend, "ERR", "", "", "", "", "", "", "", ""})
	} else {
		t.rows = append(t.rows, []string{fmt.Sprint(s.N), s.Backend, fmt.Sprint(s.Lost), fmt.Sprintf("%d/%d", s.Reconnected, s.N), fmt.Sprint(s.Within5s),
			f3(s.FirstS), f3(s.P50S), f3(s.P99S), f3(s.MaxS), f3(s.DataplaneReadyS), fmt.Sprint(s.ReconnectAttempts)})
	}
	t.notes = []string{"times from the restart (the new data plane's exec) to each client's 101; clients (4over6-loadgen -storm) retry at once, then after 250 ms doubling with jitter up to 2 s",
		"data plane limits off as in the scale runs (every client comes from one IPv6 address); ready = its TUN has the gateway address and its API socket exists"}
	return t
}

func scaleTable(rep *Report) table {
	t := table{title: "Scale: concurrent lab-protocol clients on one data plane (4over6-loadgen)",
		header: []string{"N", "backend", "connected", "connect s", "RSS before MiB", "RSS after MiB", "RSS/client KiB", "idle CPU %", "echo ok %", "dropped"}}
	for _, s := range rep.Scale {
		if s.Connected == 0 && s.Error != "" {
			t.rows = append(t.rows, []string{fmt.Sprint(s.N), s.Backend, "ERR", "", "", "", "", "", "", ""})
			continue
		}
		t.rows = append(t.rows, []string{fmt.Sprint(s.N), s.Backend, fmt.Sprintf("%d/%d", s.Connected, s.N), f2(s.ConnectS),
			f1(float64(s.RSSBeforeKiB) / 1024), f1(float64(s.RSSAfterKiB) / 1024), f2(s.RSSPerClientKiB),
			f2(s.IdleCPUPct), f2(s.EchoSuccessPct), fmt.Sprint(s.Dropped)})
	}
	t.notes = []string{
		fmt.Sprintf("idle CPU: data plane utime+stime over a %g s window with only keepalives flowing (default keepalive %s/%s), %% of one core",
			rep.Config.ScaleIdleS, rep.Config.KeepaliveInterval, rep.Config.KeepaliveTimeout),
		fmt.Sprintf("RSS/client: (VmRSS at the idle window - VmRSS before any client) / connected; echo: one ICMP echo to %s per client every %g s for %g s", gateway, rep.Config.ScaleEchoInterval, rep.Config.ScaleEchoPhaseS),
	}
	return t
}

// releasesOf names a run's releases; reports from before the batched runs
// made per-call ones only.
func releasesOf(r AllocRun) string {
	if r.Releases == "" {
		return releasesPerCall
	}
	return r.Releases
}

func allocTable(a *Alloc) table {
	t := table{title: "Controller allocations",
		header: []string{"method", "callers", "releases", "allocs/s", "alloc p50 µs", "alloc p99 µs", "controller CPU µs/alloc", "allocations", "failures"}}
	runs := a.Runs
	if len(runs) == 0 { // a report from before runs existed
		runs = []AllocRun{{Callers: a.Callers, Allocations: a.Allocations, AllocsPerS: a.AllocsPerS, AllocP50Us: a.AllocP50Us,
			AllocP99Us: a.AllocP99Us, Failures: a.Failures, Error: a.Error}}
	}
	for _, r := range runs {
		if r.Error != "" && r.Allocations == 0 {
			t.rows = append(t.rows, []string{a.Method, fmt.Sprint(r.Callers), releasesOf(r), "ERR", "", "", "", "", ""})
			continue
		}
		cpu := "-"
		if r.ControllerCPUUsPerAlloc > 0 {
			cpu = f1(r.ControllerCPUUsPerAlloc)
		}
		t.rows = append(t.rows, []string{a.Method, fmt.Sprint(r.Callers), releasesOf(r), f1(r.AllocsPerS), f1(r.AllocP50Us), f1(r.AllocP99Us), cpu, fmt.Sprint(r.Allocations), fmt.Sprint(r.Failures)})
	}
	for _, m := range a.GoBenchmarks {
		ops := "-"
		if m.NsPerOp > 0 {
			ops = f1(1e9 / m.NsPerOp)
		}
		t.rows = append(t.rows, []string{"go test " + m.Name, "-", "-", ops, "", "", "", fmt.Sprint(m.Iterations), "-"})
	}
	t.notes = []string{"grpc-unix: AllocateAddress of a fresh session per iteration, against a fresh controller binary (durable bbolt store) on its unix socket; releases per-call: the caller's ReleaseAddress after each; batched: everyone's in ReleaseAddresses calls, one at a time, as a data plane's release queue sends them",
		"controller CPU: its user+system time over the loop per allocation (and its release), from /proc: less disturbed by a busy machine than the rate"}
	if len(a.GoBenchmarks) > 0 {
		t.notes = append(t.notes, "go test rows: the controller's own benchmarks, allocs/s = 1e9 / ns/op")
	}
	if a.GoBenchNote != "" {
		t.notes = append(t.notes, a.GoBenchNote)
	}
	return t
}

func microTable(title string, ms []Micro) table {
	t := table{title: title, header: []string{"package", "benchmark", "ns/op", "B/op", "allocs/op", "other"}}
	opt := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return strconv.FormatFloat(*v, 'f', -1, 64)
	}
	for _, m := range ms {
		var extra []string
		for k, v := range m.Extra {
			extra = append(extra, fmt.Sprintf("%g %s", v, k))
		}
		sort.Strings(extra)
		t.rows = append(t.rows, []string{strings.TrimPrefix(m.Package, module), m.Name, fmt.Sprintf("%.1f", m.NsPerOp),
			opt(m.BytesPerOp), opt(m.AllocsPerOp), strings.Join(extra, ", ")})
	}
	return t
}

func targetTable(ts []Target) table {
	t := table{title: "Targets (printed, never asserted)", header: []string{"target", "goal", "this run", "met"}}
	for _, x := range ts {
		met := "-"
		if x.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*x.Met]
		}
		t.rows = append(t.rows, []string{x.Name, x.Goal, x.Value, met})
	}
	return t
}

// textReport is what the run prints at the end.
func textReport(rep *Report) string {
	var b strings.Builder
	b.WriteString("\nfourover6 benchmark\n")
	for _, l := range summary(rep) {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	for _, t := range tables(rep) {
		b.WriteString(t.text())
	}
	return b.String()
}

// markdownReport is the .md file.
func markdownReport(rep *Report, chart string) string {
	var b strings.Builder
	b.WriteString("# fourover6 benchmark\n\n")
	for _, l := range summary(rep) {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![throughput and RTT under load](%s)\n", chart)
	}
	for _, t := range tables(rep) {
		b.WriteString(t.markdown())
	}
	return b.String()
}
