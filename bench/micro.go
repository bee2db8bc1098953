package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// goBench runs `go test -run '^$' -bench pattern -benchmem` in the module
// root and parses every result line. Packages that fail to build (someone
// may be mid-edit) are reported in err; results of the others are kept.
func goBench(ctx context.Context, src, pattern, benchtime string, timeout time.Duration, pkgs ...string) ([]Micro, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"test", "-run", "^$", "-bench", pattern, "-benchmem", "-count", "1", "-benchtime", benchtime}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	res := parseBench(out.String())
	if runErr != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return res, fmt.Errorf("go test -bench timed out after %s", timeout)
		}
		return res, fmt.Errorf("go test -bench %s: %v: %s", strings.Join(pkgs, " "), runErr, oneLine(failLines(out.String())))
	}
	return res, nil
}

// failLines keeps the lines that explain a failure.
func failLines(out string) string {
	var keep []string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "FAIL") || strings.Contains(line, ".go:") || strings.HasPrefix(line, "#") || strings.Contains(line, "panic") {
			keep = append(keep, line)
		}
	}
	if len(keep) > 12 {
		keep = keep[:12]
	}
	return strings.Join(keep, "\n")
}

// parseBench reads the standard benchmark format:
//
//	pkg: github.com/fourover6/fourover6/dataplane/wire
//	BenchmarkDecode-2  1000000  1043 ns/op  123.45 MB/s  0 B/op  0 allocs/op
func parseBench(out string) []Micro {
	var res []Micro
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		m := Micro{Package: pkg, Name: trimProcs(f[0]), Iterations: iters}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			switch unit := f[i+1]; unit {
			case "ns/op":
				m.NsPerOp = v
			case "B/op":
				m.BytesPerOp = ptr(v)
			case "allocs/op":
				m.AllocsPerOp = ptr(v)
			default:
				if m.Extra == nil {
					m.Extra = map[string]float64{}
				}
				m.Extra[unit] = v
			}
		}
		res = append(res, m)
	}
	return res
}

// trimProcs drops the -GOMAXPROCS suffix so names compare across machines.
func trimProcs(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i]
		}
	}
	return name
}

// microPackages hold the hot path: the data plane and the client, which is
// half of every throughput measurement.
var microPackages = []string{"./dataplane/...", "./cmd/4over6-client"}

// runMicro runs the hot path's micro-benchmarks.
func (l *lab) runMicro(ctx context.Context, rep *Report) {
	l.log.Info("micro-benchmarks", "packages", microPackages, "benchtime", l.o.microBenchtime)
	res, err := goBench(ctx, l.o.src, ".", l.o.microBenchtime, 10*time.Minute, microPackages...)
	rep.Micro = append(rep.Micro, res...)
	if err != nil {
		rep.addError(secMicro, "go test -bench "+strings.Join(microPackages, " "), err)
	}
	l.log.Info("micro-benchmarks done", "results", len(res))
}

// runControllerGoBench runs the controller's own allocation benchmarks
// (any Benchmark with "Alloc" in its name under ./controlplane/...).
func (l *lab) runControllerGoBench(ctx context.Context, a *Alloc, rep *Report) {
	l.log.Info("controller Go benchmarks", "pattern", "Alloc")
	res, err := goBench(ctx, l.o.src, "Alloc", l.o.microBenchtime, 5*time.Minute, "./controlplane/...")
	a.GoBenchmarks = res
	if err != nil {
		rep.addError(secAlloc, "go test -bench Alloc ./controlplane/...", err)
	}
	if len(res) == 0 && err == nil {
		a.GoBenchNote = "no Benchmark with \"Alloc\" in its name under ./controlplane/... yet"
	}
}
