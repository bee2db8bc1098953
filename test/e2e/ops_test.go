package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// metricsPage fetches a daemon's /metrics over its unix socket.
func metricsPage(t *testing.T, sock string) []byte {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://metrics/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", sock, err)
	}
	return b
}

// scrape fetches a Prometheus text page over a unix socket and returns the
// value of every series, keyed by "name{labels}".
func scrape(t *testing.T, sock string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for line := range strings.Lines(string(metricsPage(t, sock))) {
		line = strings.TrimSuffix(line, "\n")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsCountAKnownTransfer sends a known number of echo packets of a
// known size through the tunnel and checks that the byte and packet
// counters on /metrics moved by exactly that much.
func TestMetricsCountAKnownTransfer(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	ctlSock := filepath.Join(t.TempDir(), "ctl-metrics.sock")
	e := newEnv(t, envOptions{
		dataplaneArgs:  []string{"--metrics", "unix://" + sock, "--report-interval", "200ms"},
		controllerArgs: []string{"--metrics", "unix://" + ctlSock},
	})
	e.waitFor("metrics endpoints", func() bool { return len(scrape(t, sock)) > 0 && len(scrape(t, ctlSock)) > 0 })
	c := e.dialLab()
	me := c.lease().Addr
	// Wait for the lease's first report, so the controller's counters
	// start from this session's zero.
	time.Sleep(500 * time.Millisecond)
	before := scrape(t, sock)
	ctlBefore := scrape(t, ctlSock)

	const n, payload = 50, 1000
	size := float64(packet.MinHeaderLen + 8 + payload)
	for i := 0; i < n; i++ {
		c.write(wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(me, gw, 7, uint16(i), make([]byte, payload), false)))
		if r := c.nextOf(wire.TypeNetResponse); len(r.Data) != int(size) {
			t.Fatalf("reply of %d bytes", len(r.Data))
		}
	}
	after := scrape(t, sock)
	for _, k := range []struct {
		series string
		want   float64
	}{
		{`fourover6_dataplane_bytes_total{direction="from_client"}`, n * size},
		{`fourover6_dataplane_bytes_total{direction="to_client"}`, n * size},
		{`fourover6_dataplane_packets_total{direction="from_client"}`, n},
		{`fourover6_dataplane_packets_total{direction="to_client"}`, n},
	} {
		if got := after[k.series] - before[k.series]; got != k.want {
			t.Errorf("%s moved by %v, want %v", k.series, got, k.want)
		}
	}
	// The controller learns the same numbers from the session reports.
	e.waitFor("controller counters", func() bool {
		ctlAfter := scrape(t, ctlSock)
		return ctlAfter[`fourover6_controller_bytes_total{direction="from_client"}`]-ctlBefore[`fourover6_controller_bytes_total{direction="from_client"}`] == n*size &&
			ctlAfter[`fourover6_controller_bytes_total{direction="to_client"}`]-ctlBefore[`fourover6_controller_bytes_total{direction="to_client"}`] == n*size &&
			ctlAfter[`fourover6_controller_packets_total{direction="to_client"}`]-ctlBefore[`fourover6_controller_packets_total{direction="to_client"}`] == n
	})
	if ctlAfter := scrape(t, ctlSock); ctlAfter["fourover6_controller_allocations_total"] != 1 || ctlAfter[`fourover6_controller_pool_addresses{state="leased"}`] != 1 {
		t.Errorf("controller allocations %v, leased %v", ctlAfter["fourover6_controller_allocations_total"], ctlAfter[`fourover6_controller_pool_addresses{state="leased"}`])
	}
	if after["fourover6_dataplane_sessions_leased"] != 1 {
		t.Errorf("sessions_leased = %v", after["fourover6_dataplane_sessions_leased"])
	}
	for _, series := range []string{`fourover6_dataplane_drops_total{reason="spoofed_source"}`, `fourover6_dataplane_controller_reachable`} {
		if _, ok := after[series]; !ok {
			t.Errorf("no %s series", series)
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := hc.Get("http://metrics" + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, err, resp)
		} else {
			resp.Body.Close()
		}
	}
}

// TestNAT: with --nat the client reaches an IPv4 host that has no route to
// the pool, and that host sees the data plane's address.
func TestNAT(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noReturnRoute: true, dataplaneArgs: []string{"--nat"}})
	ln, err := e.inet.Listen("tcp4", net.JoinHostPort(internetV4, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case seen <- host:
		default:
		}
		io.WriteString(w, "hello from the IPv4 internet")
	})}
	go srv.Serve(ln)
	defer srv.Close()

	e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	hc := &http.Client{Transport: &http.Transport{DialContext: e.cli.Dial}, Timeout: 5 * time.Second}
	var body []byte
	e.waitFor("HTTP through the tunnel and NAT", func() bool {
		resp, err := hc.Get("http://" + net.JoinHostPort(internetV4, "8080") + "/")
		if err != nil {
			return false
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return true
	})
	if string(body) != "hello from the IPv4 internet" {
		t.Fatalf("body %q", body)
	}
	if src := <-seen; src != serverV4 {
		t.Fatalf("the IPv4 host saw %s, want the data plane's %s (masqueraded)", src, serverV4)
	}
}
