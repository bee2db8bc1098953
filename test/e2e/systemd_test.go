package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// fakeSystemd is a notification socket as systemd gives a Type=notify
// service (NOTIFY_SOCKET): it records every message, and at READY=1 runs
// onReady at once, before reading on.
type fakeSystemd struct {
	path string
	mu   sync.Mutex
	msgs []string
	pids []int // msgs[i]'s sender (SO_PASSCRED), 0 when unknown
	// readyErr is onReady's verdict, sent once.
	readyErr chan error
}

func newFakeSystemd(t *testing.T, dir, name string, onReady func() error) *fakeSystemd {
	t.Helper()
	f := &fakeSystemd{path: filepath.Join(dir, name), readyErr: make(chan error, 1)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: f.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// The kernel says who sent each message, as systemd learns it.
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	}
	go func() {
		buf := make([]byte, 4096)
		oob := make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := string(buf[:n])
			pid := 0
			if cms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					if cred, err := syscall.ParseUnixCredentials(&cm); err == nil {
						pid = int(cred.Pid)
					}
				}
			}
			f.mu.Lock()
			f.msgs = append(f.msgs, m)
			f.pids = append(f.pids, pid)
			f.mu.Unlock()
			if strings.Contains(m, "READY=1") {
				select {
				case f.readyErr <- onReady():
				default:
				}
			}
		}
	}()
	return f
}

// env is the environment of a daemon talking to f, with a watchdog.
func (f *fakeSystemd) env() []string {
	return []string{"NOTIFY_SOCKET=" + f.path, "WATCHDOG_USEC=400000"}
}

func (f *fakeSystemd) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range f.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// from returns the messages pid sent, in order.
func (f *fakeSystemd) from(pid int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for i, m := range f.msgs {
		if f.pids[i] == pid {
			out = append(out, m)
		}
	}
	return out
}

func (f *fakeSystemd) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("%q", f.msgs)
}

// healthCheck is one gRPC health check on a unix socket, failing fast:
// no waiting for the socket to appear.
func healthCheck(sock string) error {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestSystemdNotify: both daemons, run as a Type=notify unit runs them,
// say READY=1 only once their API accepts calls, ping the watchdog at
// half of WATCHDOG_USEC, and say STOPPING=1 on SIGTERM. The data plane's
// lines carry their syslog priority when asked to, and a client's
// connection is one "client connected" line.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctl := newFakeSystemd(t, dir, "ctl-notify", func() error { return healthCheck(filepath.Join(dir, "controller.sock")) })
	dp := newFakeSystemd(t, dir, "dp-notify", func() error { return healthCheck(filepath.Join(dir, "dataplane.sock")) })
	e := newEnv(t, envOptions{
		dir:           dir,
		controllerEnv: ctl.env(),
		dataplaneEnv:  dp.env(),
		dataplaneArgs: []string{"--log-level", "debug", "--log-priority-prefix", "on"},
	})
	for name, f := range map[string]*fakeSystemd{"controller": ctl, "data plane": dp} {
		select {
		case err := <-f.readyErr:
			if err != nil {
				t.Errorf("%s: READY=1 came before its API accepted a call: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no READY=1: %s", name, f)
		}
	}
	// Pings every 200ms while healthy.
	e.waitFor("watchdog pings", func() bool { return ctl.count("WATCHDOG=1") >= 4 && dp.count("WATCHDOG=1") >= 4 })
	e.waitFor("the data plane's status", func() bool { return dp.count("STATUS=serving clients on") >= 1 })

	c := e.dialLab()
	c.lease()
	// The 101 goes out just before the session counts as leased: a client
	// gone at once is "closed before lease", with no "client connected".
	e.waitFor("the session leased", func() bool { return e.dpStatus().LeasedSessions == 1 })
	c.conn.Close()
	e.waitFor("the release", func() bool { return e.pool().Leased == 0 })

	for i := len(e.procs) - 1; i >= 0; i-- {
		if err := e.stop(e.procs[i]); err != nil {
			t.Errorf("%s: %v", e.procs[i].name, err)
		}
	}
	for name, f := range map[string]*fakeSystemd{"controller": ctl, "data plane": dp} {
		if f.count("STOPPING=1") != 1 {
			t.Errorf("%s: want one STOPPING=1: %s", name, f)
		}
		if f.count("READY=1") != 1 {
			t.Errorf("%s: want one READY=1: %s", name, f)
		}
	}

	var dpLog string
	for _, p := range e.procs {
		if p.name == "4over6-dataplane" {
			b, _ := os.ReadFile(p.log)
			dpLog = string(b)
		}
	}
	lines := strings.Split(strings.TrimSpace(dpLog), "\n")
	if len(lines) < 5 {
		t.Fatalf("data plane log: %q", dpLog)
	}
	want := map[string]string{"level=debug": "<7>", "level=info": "<6>", "level=warn": "<4>", "level=error": "<3>"}
	for _, l := range lines {
		for level, prefix := range want {
			if strings.Contains(l, " "+level+" ") && !strings.HasPrefix(l, prefix+"time=") {
				t.Errorf("line %q: want the prefix %s", l, prefix)
			}
		}
	}
	if n := strings.Count(dpLog, `msg="client connected"`); n != 1 {
		t.Errorf("%d \"client connected\" lines for one client, want 1:\n%s", n, dpLog)
	}
}
