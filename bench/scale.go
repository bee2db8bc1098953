package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// loadgenEvent mirrors the JSON lines of bench/loadgen.
type loadgenEvent struct {
	Event          string  `json:"event"`
	Connected      int     `json:"connected"`
	Failed         int     `json:"failed"`
	ConnectSeconds float64 `json:"connect_seconds"`
	FirstError     string  `json:"first_error"`
	EchoSent       uint64  `json:"echo_sent"`
	EchoReceived   uint64  `json:"echo_received"`
	KeepaliveRecvd uint64  `json:"keepalive_received"`
	Dropped        int64   `json:"dropped"`
	FDLimit        uint64  `json:"fd_limit"`
	Error          string  `json:"error"`

	Lost              int     `json:"lost"`
	Reconnected       int     `json:"reconnected"`
	ReconnectAttempts int64   `json:"reconnect_attempts"`
	ReconnectUnixNano []int64 `json:"reconnect_unix_nano"`
	FloodBytes        int64   `json:"flood_bytes"`
	FloodFrames       int64   `json:"flood_frames"`
	FloodSeconds      float64 `json:"flood_seconds"`
}

// runScale runs the load generator once per N, each time against a fresh
// controller and data plane so RSS and CPU belong to that N alone.
func (l *lab) runScale(ctx context.Context, rep *Report) {
	for _, n := range l.o.scaleN {
		if ctx.Err() != nil {
			return
		}
		s := l.scaleOnce(ctx, n)
		if s.Error != "" {
			rep.addError(secScale, fmt.Sprintf("N=%d", n), fmt.Errorf("%s", s.Error))
		}
		rep.Scale = append(rep.Scale, s)
	}
}

// ensureFDs makes sure the data plane and the load generator (which
// inherit the harness's limit) can each hold n sockets. The hard limit
// here is 20000 (enough for N=10,000); root may raise it further.
func (l *lab) ensureFDs(n int) error {
	need := uint64(n) + 1024
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Max >= need {
		if rl.Cur < need { // the runtime already raised it; be sure
			rl.Cur = rl.Max
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		}
		return nil
	}
	old := rl.Max
	rl.Cur, rl.Max = need, need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("hard file descriptor limit %d is too low for N=%d (need %d) and raising it failed: %v", old, n, need, err)
	}
	l.log.Warn("raised the file descriptor limit for the scale run", "from", old, "to", need)
	return nil
}

func (l *lab) scaleOnce(ctx context.Context, n int) (s Scale) {
	s = Scale{N: n, Backend: l.o.scaleBackend, IdleWindowS: l.o.idle.Seconds()}
	fail := func(err error) Scale { s.Error = err.Error(); return s }
	l.log.Info("scale run", "n", n, "backend", s.Backend)
	if err := l.ensureFDs(n); err != nil {
		return fail(err)
	}
	if err := l.startController(ctx); err != nil {
		return fail(err)
	}
	defer l.stopController()
	dp, err := l.startDataplane(ctx, fmt.Sprintf("bench-scale-%d", n), s.Backend,
		"--max-clients", "0", "--max-conns-per-ip", "0", "--max-conns-per-prefix", "0", "--accept-rate", "0", "--accept-rate-per-prefix", "0")
	if err != nil {
		return fail(err)
	}
	defer dp.stop(20 * time.Second)
	pid := dp.cmd.Process.Pid
	time.Sleep(500 * time.Millisecond) // let start-up allocations settle before the baseline
	if s.RSSBeforeKiB, err = procStatus(pid, "VmRSS"); err != nil {
		return fail(err)
	}

	connectTimeout := 30*time.Second + time.Duration(n)*5*time.Millisecond
	args := []string{"netns", "exec", l.cli.Name, l.loadgen,
		"-server", "[" + serverV6 + "]:" + clientPort, "-gateway", gateway, "-n", strconv.Itoa(n),
		"-connect-timeout", connectTimeout.String(), "-keepalive", "20s",
		"-echo-phase", l.o.echoPhase.String(), "-echo-interval", l.o.echoInterval.String(),
		"-idle", l.o.idle.String()}
	total := connectTimeout + l.o.echoPhase + l.o.idle + time.Minute
	ectx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	events, lg, err := l.startEvents(ectx, fmt.Sprintf("loadgen-%d", n), args)
	if err != nil {
		return fail(err)
	}
	defer lg.stop(10 * time.Second)

	var idleStart time.Time
	var cpu0 int64
	var kaAtIdle uint64
	for e := range events {
		switch e.Event {
		case "connected":
			s.Connected, s.Failed, s.ConnectS, s.FirstError = e.Connected, e.Failed, round3(e.ConnectSeconds), e.FirstError
			l.log.Info("scale connected", "n", n, "connected", e.Connected, "failed", e.Failed, "seconds", round3(e.ConnectSeconds))
		case "echo_done":
			s.EchoSent, s.EchoReceived = e.EchoSent, e.EchoReceived
			if e.EchoSent > 0 {
				s.EchoSuccessPct = round2(100 * float64(e.EchoReceived) / float64(e.EchoSent))
			}
		case "idle_start":
			s.RSSAfterKiB, _ = procStatus(pid, "VmRSS")
			cpu0, _ = cpuTicks(pid)
			idleStart, kaAtIdle = time.Now(), e.KeepaliveRecvd
			l.log.Info("scale idle window", "n", n, "seconds", l.o.idle.Seconds(), "rss_kib", s.RSSAfterKiB)
		case "idle_end":
			if !idleStart.IsZero() {
				cpu1, _ := cpuTicks(pid)
				window := time.Since(idleStart).Seconds()
				s.IdleCPUPct = round3(100 * float64(cpu1-cpu0) / clockTicks / window)
				s.IdleKeepalives = e.KeepaliveRecvd - kaAtIdle
			}
			s.RSSPeakKiB, _ = procStatus(pid, "VmHWM")
			threads, _ := procStatus(pid, "Threads")
			s.DataplaneThreads = int(threads)
		case "done":
			s.Dropped, s.LoadgenFDLimit = e.Dropped, e.FDLimit
		case "error":
			s.Error = "loadgen: " + e.Error
		}
	}
	if s.Connected > 0 && s.RSSAfterKiB > 0 {
		s.RSSPerClientKiB = round2(float64(s.RSSAfterKiB-s.RSSBeforeKiB) / float64(s.Connected))
	}
	<-lg.done
	switch {
	case s.Error != "":
	case ectx.Err() != nil:
		s.Error = fmt.Sprintf("load generator did not finish within %s", total)
	case lg.err != nil:
		s.Error = lg.failure(fmt.Errorf("load generator: %v", lg.err)).Error()
	case s.Connected < n:
		s.Error = fmt.Sprintf("only %d of %d clients connected: %s", s.Connected, n, s.FirstError)
	}
	if dp.exited() {
		s.Error = dp.failure(fmt.Errorf("data plane died during the scale run")).Error()
	}
	return s
}

// startEvents runs the load generator with its stdout (JSON lines) on a
// pipe decoded into events, and its stderr in a log file.
func (l *lab) startEvents(ctx context.Context, name string, args []string) (<-chan loadgenEvent, *proc, error) {
	logPath := filepath.Join(l.dir, fmt.Sprintf("%02d-%s.log", len(l.procs), name))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = w, f
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, nil, err
	}
	w.Close()
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	events := make(chan loadgenEvent)
	go func() {
		defer close(events)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 16<<20) // storm_done carries a time per client
		for sc.Scan() {
			var e loadgenEvent
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				events <- e
			}
		}
	}()
	return events, p, nil
}
