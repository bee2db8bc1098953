package sdnotify_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/sdnotify"
)

// fakeSystemd listens where NOTIFY_SOCKET points, as systemd does.
func fakeSystemd(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
		return ""
	}
}

func TestNotifications(t *testing.T) {
	ch := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "100000") // pings every 50ms
	n := sdnotify.New(slog.New(slog.DiscardHandler))
	if !n.Enabled() || n.WatchdogInterval() != 100*time.Millisecond {
		t.Fatalf("enabled %v watchdog %v", n.Enabled(), n.WatchdogInterval())
	}
	n.Ready("serving")
	if m := next(t, ch); m != "READY=1\nSTATUS=serving" {
		t.Fatalf("ready: %q", m)
	}
	n.Status("serving") // unchanged: not sent
	n.Status("standby")
	if m := next(t, ch); m != "STATUS=standby" {
		t.Fatalf("status: %q", m)
	}

	var logs bytes.Buffer
	n = sdnotify.New(slog.New(slog.NewTextHandler(&logs, nil)))
	var sick atomic.Bool
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		n.Watchdog(ctx, func() error {
			if sick.Load() {
				return errors.New("the reconcile loop has not run for 1m0s")
			}
			return nil
		})
		close(done)
	}()
	for range 3 {
		if m := next(t, ch); m != "WATCHDOG=1" {
			t.Fatalf("ping: %q", m)
		}
	}
	// Unhealthy: the pings stop (one may have been on its way).
	sick.Store(true)
	time.Sleep(120 * time.Millisecond)
	for len(ch) > 0 {
		<-ch
	}
	select {
	case m := <-ch:
		t.Fatalf("pinged while unhealthy: %q", m)
	case <-time.After(300 * time.Millisecond):
	}
	if !strings.Contains(logs.String(), "not pinging the systemd watchdog") || strings.Count(logs.String(), "unhealthy") != 1 {
		t.Errorf("logs: %q", logs.String())
	}
	sick.Store(false)
	if m := next(t, ch); m != "WATCHDOG=1" {
		t.Fatalf("healthy again: %q", m)
	}
	n.Stopping("shutting down")
	for {
		m := next(t, ch)
		if m == "STOPPING=1\nSTATUS=shutting down" {
			break
		}
		if m != "WATCHDOG=1" {
			t.Fatalf("stopping: %q", m)
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog loop went on after STOPPING=1")
	}
}

func TestWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n := sdnotify.New(slog.New(slog.DiscardHandler))
	if n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatal("enabled without systemd")
	}
	n.Ready("x")
	n.Stopping("y")
	done := make(chan struct{})
	go func() { n.Watchdog(t.Context(), func() error { return nil }); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog without a watchdog does not return")
	}

	// The watchdog is another process's (WATCHDOG_PID): not ours to ping.
	fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "1")
	if n := sdnotify.New(slog.New(slog.DiscardHandler)); n.WatchdogInterval() != 0 {
		t.Error("watchdog of another pid taken")
	}
}

// After a hand-off the old process names its successor the main process
// and then says nothing: no STOPPING=1 (systemd would stop the service), no
// pings. The successor's environment lets it ping the watchdog.
func TestHandedOver(t *testing.T) {
	ch := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	n := sdnotify.New(slog.New(slog.DiscardHandler))
	n.ReadyAfterHandoff("serving")
	if m, want := next(t, ch), "READY=1\nSTATUS=serving\nMAINPID="+strconv.Itoa(os.Getpid()); m != want {
		t.Fatalf("ready after a hand-off: %q, want %q", m, want)
	}
	n.HandedOver(4242)
	if m := next(t, ch); m != "MAINPID=4242" {
		t.Fatalf("hand-over: %q", m)
	}
	n.Stopping("shutting down")
	n.Status("x")
	done := make(chan struct{})
	go func() { n.Watchdog(t.Context(), func() error { return nil }); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog pings on after the hand-over")
	}
	select {
	case m := <-ch:
		t.Fatalf("sent %q after the hand-over", m)
	case <-time.After(200 * time.Millisecond):
	}

	env := sdnotify.ChildEnv([]string{"A=1", "WATCHDOG_PID=1", "WATCHDOG_USEC=100000"})
	if strings.Join(env, " ") != "A=1 WATCHDOG_USEC=100000" {
		t.Fatalf("child env %q", env)
	}
}
