package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// proc is a process the harness started inside one of its namespaces.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // file holding its stdout and stderr
	done chan struct{}
	err  error // valid after done is closed
}

// procAttr keeps children out of the terminal's process group (a Ctrl-C
// reaches only the harness, which then stops them in order) and kills them
// if the harness itself dies without cleaning up.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// start runs bin in ns with its output in a log file. `ip netns exec`
// execs the binary in place, so cmd.Process.Pid is the binary's own pid
// (the scale section reads its /proc entry).
func (l *lab) start(ns *topo.NS, name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(l.dir, fmt.Sprintf("%02d-%s.log", len(l.procs), name))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	l.log.Debug("started", "proc", name, "pid", cmd.Process.Pid, "args", strings.Join(args, " "))
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then kills. It is safe to call
// more than once.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n lines of the process's log, for error reports.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// failure wraps err with the process's recent log lines.
func (p *proc) failure(err error) error {
	state := "running"
	if p.exited() {
		state = fmt.Sprintf("exited: %v", p.err)
	}
	return fmt.Errorf("%w (%s %s; log tail: %s)", err, p.name, state, oneLine(p.tail(5)))
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
	if len(s) > 600 {
		s = s[len(s)-600:]
	}
	return s
}

// output runs a short command in ns with a timeout and returns its stdout.
func output(ctx context.Context, ns *topo.NS, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := ns.Command(ctx, name, args...)
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s", timeout)
		}
		return stdout.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, oneLine(stderr.String()))
	}
	return stdout.String(), nil
}

// waitFor polls f every 50 ms until it returns true, ctx ends or timeout
// passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, f func() bool) error {
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
