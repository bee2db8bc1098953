package main

import (
	"fmt"
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
	lines := []string{
		fmt.Sprintf("run %s  took %.0f s  quick=%v%s", rep.StartedAt.Format("2006-01-02 15:04:05 MST"), rep.DurationS, rep.Quick, labelSuffix(rep.Label)),
		fmt.Sprintf("commit %s  binaries %s", commit, m.BinaryVersion),
		fmt.Sprintf("%s x%d, %d MiB, kernel %s, %s, %s", m.CPUModel, m.Cores, m.MemTotalMiB, m.Kernel, m.GoVersion, m.Iperf3Version),
		fmt.Sprintf("TUN backends: %s; kernel encapsulation: %s", strings.Join(rep.Config.TunBackends, ", "), orDash(rep.Config.KernelEncap)),
	}
	if rep.Config.KernelEncapNote != "" {
		lines = append(lines, rep.Config.KernelEncapNote)
	}
	la, le := m.LoadAvgStart, m.LoadAvgEnd
	load := fmt.Sprintf("load average %.2f/%.2f/%.2f at the start, %.2f/%.2f/%.2f at the end", la[0], la[1], la[2], le[0], le[1], le[2])
	if la[0] > float64(m.Cores)/2 {
		load += ": the machine was busy with other work, so these numbers are noisy"
	}
	lines = append(lines, load)
	return lines
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
	if len(rep.Errors) > 0 {
		t := table{title: "Errors (these measurements failed; the rest ran)", header: []string{"section", "step", "error"}}
		for _, e := range rep.Errors {
			t.rows = append(t.rows, []string{e.Section, e.Step, clip(e.Error, 300)})
		}
		ts = append(ts, t)
	}
	return ts
}

// throughputTable: one row per cell, paths side by side, then the ratios
// of each of our backends to raw and to the kernel.
func throughputTable(rep *Report) table {
	var paths []string
	seen := map[string]bool{}
	for _, t := range rep.Throughput {
		if !seen[t.Path] {
			seen[t.Path] = true
			paths = append(paths, t.Path)
		}
	}
	kernel := "kernel"
	if rep.Config.KernelEncap != "" {
		kernel += " (" + rep.Config.KernelEncap + ")"
	}
	t := table{title: fmt.Sprintf("Throughput: iperf3 TCP, Gbit/s (%d s runs, first %d s omitted)", rep.Config.IperfSeconds, rep.Config.IperfOmitSeconds)}
	if rep.Config.IperfRepeat > 1 {
		t.title += fmt.Sprintf(", median of %d", rep.Config.IperfRepeat)
	}
	t.header = []string{"direction", "streams"}
	for _, p := range paths {
		if p == "kernel" {
			p = kernel
		}
		t.header = append(t.header, p)
	}
	var ours []string
	for _, p := range paths {
		if strings.HasPrefix(p, "ours-") {
			ours = append(ours, p)
			t.header = append(t.header, p+"/raw", p+"/kernel")
		}
	}
	for _, c := range cells {
		row := []string{c.direction, fmt.Sprint(c.streams)}
		byPath := map[string]Through{}
		found := false
		for _, x := range rep.Throughput {
			if x.Direction == c.direction && x.Streams == c.streams {
				byPath[x.Path], found = x, true
			}
		}
		if !found {
			continue
		}
		for _, p := range paths {
			x, ok := byPath[p]
			switch {
			case !ok:
				row = append(row, "-")
			case x.Error != "":
				row = append(row, "ERR")
			default:
				row = append(row, f2(x.Gbps))
			}
		}
		for _, p := range ours {
			x := byPath[p]
			row = append(row, ratio(x.RatioRaw), ratio(x.RatioKernel))
		}
		t.rows = append(t.rows, row)
	}
	t.notes = []string{"upload = client -> server (iperf3 default), download = server -> client (-R); rate measured at the receiver"}
	return t
}

func rttTable(rep *Report) table {
	t := table{title: fmt.Sprintf("RTT: ping -c %d -i %g, microseconds", rep.Config.PingCount, rep.Config.PingIntervalS),
		header: []string{"path", "load", "recv/sent", "min", "avg", "p50", "p99", "max", "added avg over raw", "added p50 over raw"}}
	for _, r := range rep.RTT {
		if r.Error != "" {
			t.rows = append(t.rows, []string{r.Path, r.Load, "ERR", "", "", "", "", "", "", ""})
			continue
		}
		added := func(v *float64) string {
			if v == nil {
				return "-"
			}
			return f1(*v)
		}
		t.rows = append(t.rows, []string{r.Path, r.Load, fmt.Sprintf("%d/%d", r.Received, r.Sent),
			f1(r.MinUs), f1(r.AvgUs), f1(r.P50Us), f1(r.P99Us), f1(r.MaxUs), added(r.AddedAvgUs), added(r.AddedP50Us)})
	}
	t.notes = []string{"loaded = while a 1-stream iperf3 upload runs through the same path; added = at idle, minus raw IPv6 over the veth"}
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

func allocTable(a *Alloc) table {
	t := table{title: "Controller allocations",
		header: []string{"method", "callers", "allocs/s", "alloc p50 µs", "alloc p99 µs", "allocations", "failures"}}
	if a.Error != "" && a.Allocations == 0 {
		t.rows = append(t.rows, []string{a.Method, fmt.Sprint(a.Callers), "ERR", "", "", "", ""})
	} else {
		t.rows = append(t.rows, []string{a.Method, fmt.Sprint(a.Callers), f1(a.AllocsPerS), f1(a.AllocP50Us), f1(a.AllocP99Us), fmt.Sprint(a.Allocations), fmt.Sprint(a.Failures)})
	}
	for _, m := range a.GoBenchmarks {
		ops := "-"
		if m.NsPerOp > 0 {
			ops = f1(1e9 / m.NsPerOp)
		}
		t.rows = append(t.rows, []string{"go test " + m.Name, "-", ops, "", "", fmt.Sprint(m.Iterations), "-"})
	}
	t.notes = []string{"grpc-unix: AllocateAddress + ReleaseAddress of a fresh session per iteration, against the controller binary on its unix socket"}
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
	t := table{title: "Targets of issue 6", header: []string{"target", "goal", "this run", "met"}}
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
		fmt.Fprintf(&b, "\n![throughput](%s)\n", chart)
	}
	for _, t := range tables(rep) {
		b.WriteString(t.markdown())
	}
	return b.String()
}
