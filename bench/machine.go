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
	m.GitDirty = cmdOutput(ctx, o.src, "git", "status", "--porcelain", "--untracked-files=no") != ""
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
