package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// lockedBuffer collects output written by the command's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--pool", "13.8.0.0"}, "--pool"},
		{[]string{"--pool", "fd00::/64"}, "--pool"},
		{[]string{"--pool", "13.8.0.0/31"}, "--pool"},
		{[]string{"--pool", "13.8.0.9/24"}, "did you mean 13.8.0.0/24"},
		{[]string{"--pool-range", "13.8.0.1-13.8.0.9"}, "--pool-range"},
		{[]string{"--pool-range", "13.8.0.2"}, "--pool-range"},
		{[]string{"--pool-range", "13.8.1.2-13.8.1.9"}, "--pool-range"},
		{[]string{"--dns", "1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4"}, "--dns"},
		{[]string{"--dns", "2001:db8::53"}, "--dns"},
		{[]string{"--route", "default"}, "--route"},
		{[]string{"--listen", "ftp://x"}, "--listen"},
		{[]string{"--state", dir}, "--state"},
		{[]string{"--state", ""}, "--state"},
		{[]string{"--store", "consul://x:1"}, "--store"},
		{[]string{"--store", "etcd://nohostport"}, "--store"},
		{[]string{"--controller-id", ""}, "--controller-id"},
		{[]string{"--grace-period", "0s"}, "--grace-period"},
		{[]string{"--dataplane-timeout", "-1s"}, "--dataplane-timeout"},
		{[]string{"--heartbeat-interval", "5s", "--dataplane-timeout", "6s"}, "--dataplane-timeout"},
		{[]string{"--reuse-cooldown", "-1s"}, "--reuse-cooldown"},
		{[]string{"--max-leases-per-ip", "-1"}, "--max-leases-per-ip"},
		{[]string{"--max-leases-per-ip", "lots"}, "or auto"},
		{[]string{"--max-leases-per-prefix", "1.5"}, "--max-leases-per-prefix"},
		{[]string{"--lease-prefix-length", "0"}, "--lease-prefix-length"},
		{[]string{"--lease-prefix-length", "129"}, "--lease-prefix-length"},
		{[]string{"--election-ttl", "500ms"}, "--election-ttl"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
		{[]string{"serve"}, `unexpected argument "serve"`},
	}
	for _, c := range cases {
		var out, errb lockedBuffer
		code := run(t.Context(), c.args, &out, &errb)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, code, exitUsage, errb.String())
		}
		if !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: stderr %q does not mention %q", c.args, errb.String(), c.want)
		}
	}
}

// TestLeaseLimitFlags: auto is a share of the pool's client addresses; a
// number is taken as it is (0: no limit).
func TestLeaseLimitFlags(t *testing.T) {
	for _, c := range []struct {
		args                   []string
		perIP, perPrefix, bits int
	}{
		{nil, 15, 63, 64}, // 253 addresses
		{[]string{"--pool", "10.0.0.0/16"}, 4095, 16383, 64},
		{[]string{"--pool", "10.0.0.0/29"}, 1, 1, 64},
		{[]string{"--pool-range", "13.8.0.2-13.8.0.33", "--max-leases-per-prefix", "auto"}, 2, 8, 64},
		{[]string{"--max-leases-per-ip", "0", "--max-leases-per-prefix", "100", "--lease-prefix-length", "56"}, 0, 100, 56},
	} {
		var f flags
		cmd := &cobra.Command{}
		f.register(cmd)
		if err := cmd.Flags().Parse(c.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.config()
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if l := cfg.limits; l.PerIP != c.perIP || l.PerPrefix != c.perPrefix || l.PrefixLen != c.bits {
			t.Errorf("%v: limits %+v, want %d %d /%d", c.args, l, c.perIP, c.perPrefix, c.bits)
		}
	}
}

func TestVersion(t *testing.T) {
	var out, errb lockedBuffer
	if code := run(t.Context(), []string{"--version"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.HasPrefix(out.String(), "4over6-controller ") {
		t.Fatalf("version output %q", out.String())
	}
}

// getPool waits for the controller at sock to answer GetPool.
func getPool(t *testing.T, sock string) *pb.Pool {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// Generous bound: it only limits how long a broken build hangs.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := pb.NewControllerServiceClient(cc).GetPool(ctx, &pb.GetPoolRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetPool: %v", err)
	}
	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: pb.LeaseService_ServiceDesc.ServiceName})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v %v", h, err)
	}
	return resp.Pool
}

func TestServeAndStop(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "c.sock") // the directory is created
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.53\nnameserver 10.9.9.9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state.db")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{
			"--listen", "unix://" + sock, "--resolv-conf", resolv, "--state", state,
			"--pool", "13.9.0.0/24", "--pool-range", "13.9.0.2-13.9.0.128", "--route", "13.9.0.0",
		}, &out, &errb)
	}()

	p := getPool(t, sock)
	if p.Prefix != "13.9.0.0/24" || p.Gateway != "13.9.0.1" || p.RangeFirst != "13.9.0.2" || p.RangeLast != "13.9.0.128" ||
		p.Size != 127 || p.Route != "13.9.0.0" || strings.Join(p.Dns, ",") != "10.9.9.9,8.8.8.8,1.1.1.1" {
		t.Fatalf("pool = %v", p)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v %v", fi, err)
	}

	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("--state file was not created: %v", err)
	}
	logs := errb.String()
	for _, want := range []string{"controller started", "range=13.9.0.2-13.9.0.128", "gateway=13.9.0.1", "dns=10.9.9.9,8.8.8.8,1.1.1.1", "store=bbolt:" + state, "state loaded", "controller stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// TestBinary runs the real binary: exit codes as a shell sees them, and a
// clean stop on SIGTERM.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "4over6-controller")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	var errb bytes.Buffer
	cmd := exec.Command(bin, "--pool", "13.8.0.0/33")
	cmd.Stderr = &errb
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
		t.Fatalf("bad --pool: %v, want exit %d", err, exitUsage)
	}
	if !strings.Contains(errb.String(), "--pool") {
		t.Fatalf("stderr %q does not name --pool", errb.String())
	}

	sock := filepath.Join(dir, "c.sock")
	var logs lockedBuffer
	cmd = exec.Command(bin, "--listen", "unix://"+sock, "--resolv-conf", filepath.Join(dir, "missing"),
		"--state", filepath.Join(dir, "state.db"), "--log-format", "json")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if p := getPool(t, sock); p.Prefix != "13.8.0.0/24" || p.Gateway != "13.8.0.1" || p.Size != 253 {
		t.Fatalf("pool = %v", p)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if !strings.Contains(logs.String(), `"msg":"controller stopped"`) {
		t.Fatalf("logs:\n%s", logs.String())
	}
}
