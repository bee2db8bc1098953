package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machineInfo describes the machine and the code measured, so a result
// file stands on its own when compared with another one later.
func machineInfo(ctx context.Context, o *options) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if v := procField("/proc/meminfo", "MemTotal"); v != "" {
		kb, _ := strconv.Atoi(strings.Fields(v)[0])
		m.MemTotalMiB = kb / 1024
	}
	if v := cmdOutput(ctx, o.src, "go", "env", "GOVERSION"); v != "" {
		m.GoVersion = v // the toolchain that built the binaries, if it differs
	}
	m.GitCommit = cmdOutput(ctx, o.src, "git", "rev-parse", "HEAD")
	// Results are not code: a run saved but not yet committed does not make
	// the next one "dirty".
	m.GitDirty = cmdOutput(ctx, o.src, "git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results") != ""
	m.GitDescribe = cmdOutput(ctx, o.src, "git", "describe", "--tags", "--always")
	if m.GitDirty && m.GitDescribe != "" {
		m.GitDescribe += "-dirty"
	}
	m.BinaryVersion = cmdOutput(ctx, "", filepath.Join(o.bin, "4over6-dataplane"), "--version")
	if v := cmdOutput(ctx, "", "iperf3", "--version"); v != "" {
		m.Iperf3Version = strings.SplitN(v, "\n", 2)[0]
	}
	m.LoadAvgStart = loadAvg()
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.FDHardLimit = rl.Max
	}
	return m
}

// procField returns the value of the first "name : value" line of a /proc
// file.
func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// cmdOutput returns a short command's trimmed output, or "" if it fails.
func cmdOutput(ctx context.Context, dir, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// loadAvg reads /proc/loadavg.
func loadAvg() [3]float64 {
	var l [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 3 && i < len(f); i++ {
			l[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	return l
}

// cpuTimes is the first line of /proc/stat, in clock ticks, all CPUs.
type cpuTimes struct {
	user, nice, system, idle, iowait, irq, softirq, steal int64
	ok                                                    bool
}

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	return parseProcStat(string(b))
}

// parseProcStat reads the "cpu" line: user nice system idle iowait irq
// softirq steal (guest time is already inside user and nice).
func parseProcStat(stat string) cpuTimes {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTimes{}
	}
	var v [8]int64
	for i := range v {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return cpuTimes{}
		}
		v[i] = n
	}
	return cpuTimes{user: v[0], nice: v[1], system: v[2], idle: v[3], iowait: v[4], irq: v[5], softirq: v[6], steal: v[7], ok: true}
}

// cpuUsage compares two /proc/stat readings with this process's rusage
// (its own and its reaped children's, which include every daemon, iperf3,
// ping and go test it started). Interrupt time (irq, softirq) is left out
// of both sides: the packets of our namespaces are most of it and no
// process is charged for them.
func cpuUsage(a, b cpuTimes, wall time.Duration, cores int) *CPUUsage {
	if !a.ok || !b.ok || wall <= 0 || cores <= 0 {
		return nil
	}
	sec := func(ticks int64) float64 { return float64(ticks) / clockTicks }
	u := &CPUUsage{WallS: round1(wall.Seconds()), Cores: cores,
		OursIncludes: "the harness and every process it started (getrusage self + children); interrupt time excluded"}
	task := sec((b.user + b.nice + b.system) - (a.user + a.nice + a.system))
	intr := sec((b.irq + b.softirq) - (a.irq + a.softirq))
	u.BusyS, u.InterruptsS, u.StealS = round1(task+intr), round1(intr), round1(sec(b.steal-a.steal))
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	ours := tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
	u.OursS = round1(ours)
	u.OthersS = round1(max(0, task-ours))
	capacity := wall.Seconds() * float64(cores)
	u.OthersPct = round1(100 * u.OthersS / capacity)
	u.BusyPct = round1(100 * u.BusyS / capacity)
	return u
}
