package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/cmd/internal/metrics"
)

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestServerEndpoints(t *testing.T) {
	reg := metrics.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "test_things_total", Help: "Things."})
	c.Add(7)
	reg.MustRegister(c)

	var notReady atomic.Pointer[string]
	srv, err := metrics.Start(metrics.Config{
		Addr:     "127.0.0.1:0",
		Registry: reg,
		Ready: func(ctx context.Context) error {
			if why := notReady.Load(); why != nil {
				return errors.New(*why)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	base := srv.URL()
	if !strings.HasPrefix(base, "http://127.0.0.1:") || strings.HasSuffix(base, ":0") {
		t.Fatalf("URL = %q", base)
	}
	hc := &http.Client{Timeout: 10 * time.Second}

	code, body := get(t, hc, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	for _, want := range []string{
		"fourover6_test_things_total 7",
		"go_goroutines ",
		"process_open_fds ",
		"# HELP fourover6_test_things_total Things.",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if code, body := get(t, hc, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, hc, base+"/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/readyz while ready: %d %q", code, body)
	}
	why := "controller unreachable"
	notReady.Store(&why)
	if code, body := get(t, hc, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "controller unreachable") {
		t.Errorf("/readyz while not ready: %d %q", code, body)
	}
	notReady.Store(nil)
	if code, _ := get(t, hc, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz ready again: %d", code)
	}
	if code, _ := get(t, hc, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("/nope: %d, want 404", code)
	}

	// Shutdown begins: /readyz says so, /healthz and /metrics still answer.
	srv.NotReady("shutting down")
	if code, body := get(t, hc, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz after NotReady: %d %q", code, body)
	}
	if code, _ := get(t, hc, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after NotReady: %d", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-srv.Done():
	default:
		t.Fatal("Done not closed after Shutdown")
	}
	if err := srv.Err(); err != nil {
		t.Errorf("Err after Shutdown = %v", err)
	}
	if _, err := hc.Get(base + "/healthz"); err == nil {
		t.Error("server still answers after Shutdown")
	}
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestServerReadyNilMeansReady(t *testing.T) {
	srv, err := metrics.Start(metrics.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	hc := &http.Client{Timeout: 10 * time.Second}
	if code, _ := get(t, hc, srv.URL()+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d", code)
	}
	if code, body := get(t, hc, srv.URL()+"/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics with the default registry: %d", code)
	}
}

func TestServerReadyTimeout(t *testing.T) {
	srv, err := metrics.Start(metrics.Config{Addr: "127.0.0.1:0", ReadyTimeout: 50 * time.Millisecond, Ready: func(ctx context.Context) error {
		<-ctx.Done() // a readiness check that hangs is cut off
		return ctx.Err()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	hc := &http.Client{Timeout: 10 * time.Second}
	if code, body := get(t, hc, srv.URL()+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "deadline") {
		t.Errorf("/readyz: %d %q", code, body)
	}
}

func TestServerUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "metrics.sock")
	srv, err := metrics.Start(metrics.Config{Addr: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != "unix://"+sock || srv.URL() != "" {
		t.Errorf("Addr %q URL %q", srv.Addr(), srv.URL())
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	if code, _ := get(t, hc, "http://metrics/healthz"); code != http.StatusOK {
		t.Errorf("/healthz over unix socket: %d", code)
	}
	hc.CloseIdleConnections()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("socket still answers after Shutdown")
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := metrics.Start(metrics.Config{Addr: "nonsense"}); err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Errorf("bad address: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := metrics.Start(metrics.Config{Addr: ln.Addr().String()}); err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Errorf("busy address: %v", err)
	}
}
