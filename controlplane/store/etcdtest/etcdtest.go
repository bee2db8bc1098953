// Package etcdtest starts a real etcd server (Debian's etcd-server package)
// on loopback for tests: random ports, a temporary data directory, stopped
// at the end of the test.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Server is a running etcd.
type Server struct {
	// Endpoint is the client URL, e.g. "http://127.0.0.1:40123".
	Endpoint string
	cmd      *exec.Cmd
	done     chan struct{}
	log      *os.File
}

// Binary finds the etcd binary. When it is missing the test fails if
// FOUROVER6_REQUIRE_ROOT is set (CI: nothing is silently left out) and is
// skipped otherwise.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("FOUROVER6_ETCD"), "etcd", "/usr/bin/etcd", "/usr/local/bin/etcd"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("FOUROVER6_REQUIRE_ROOT") != "" {
		t.Fatal("etcd is not installed and FOUROVER6_REQUIRE_ROOT is set: install the etcd-server package (test/deps.sh does)")
	}
	t.Skip("etcd is not installed (apt-get install etcd-server)")
	return ""
}

// Start runs an etcd for t and waits until it answers. It is stopped (and
// its data removed) when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	var s *Server
	var err error
	// Ports are picked free, then bound by etcd: another process may take
	// one in between, so try a few times.
	for attempt := 0; attempt < 5; attempt++ {
		s, err = start(bin, dir, attempt)
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start(bin, dir string, attempt int) (*Server, error) {
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", cport)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
	data := filepath.Join(dir, fmt.Sprintf("data%d", attempt))
	logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("etcd%d.log", attempt)))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--name", "test",
		"--data-dir", data,
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer,
		"--initial-cluster-state", "new",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-outputs", "stderr",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	s := &Server{Endpoint: client, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { cmd.Wait(); close(s.done) }()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.Stop()
		b, _ := os.ReadFile(logf.Name())
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		return nil, fmt.Errorf("%v\n%s", err, strings.Join(lines, "\n"))
	}
	return s, nil
}

func (s *Server) waitReady(d time.Duration) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(d)
	for {
		select {
		case <-s.done:
			return fmt.Errorf("etcd exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(ctx, "/etcdtest/ready", "1")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd at %s not ready: %v", s.Endpoint, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
	s.log.Close()
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedDir string
	prefixSeq int
)

// Shared returns one etcd per test binary, started on first use, and a key
// prefix unique to the caller. Call StopShared from TestMain.
func Shared(t testing.TB) (endpoint, prefix string) {
	t.Helper()
	bin := Binary(t)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil {
		dir, err := os.MkdirTemp("", "fourover6-etcd")
		if err != nil {
			t.Fatal(err)
		}
		var s *Server
		for attempt := 0; attempt < 5; attempt++ {
			if s, err = start(bin, dir, attempt); err == nil {
				break
			}
		}
		if err != nil {
			os.RemoveAll(dir)
			t.Fatalf("start etcd: %v", err)
		}
		shared, sharedDir = s, dir
	}
	prefixSeq++
	return shared.Endpoint, fmt.Sprintf("/test%d-%d/", os.Getpid(), prefixSeq)
}

// StopShared stops the etcd started by Shared, if any.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
		os.RemoveAll(sharedDir)
		shared = nil
	}
}
