package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/cmd/internal/metrics"
)

func TestGRPCInterceptors(t *testing.T) {
	m := metrics.NewGRPC()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(m.ServerOptions()...)
	hs := health.NewServer()
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	m.InitializeMethods(gs)
	go gs.Serve(ln)
	defer gs.Stop()

	// Before any call: the series exist at zero.
	if got := testutil.ToFloat64(m.Requests("grpc.health.v1.Health", "Check", "OK")); got != 0 {
		t.Fatalf("initialized Check{OK} = %v", got)
	}

	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for range 3 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "up"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no-such"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Check(no-such) = %v, want NotFound", err)
		}
	}

	// A stream: counted when it ends, here canceled by the client.
	sctx, scancel := context.WithCancel(ctx)
	ws, err := hc.Watch(sctx, &healthpb.HealthCheckRequest{Service: "up"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(m.InFlight("grpc.health.v1.Health", "Watch")) == 1 })
	scancel()
	waitFor(t, func() bool { return testutil.ToFloat64(m.Requests("grpc.health.v1.Health", "Watch", "Canceled")) == 1 })

	want := `
# HELP fourover6_grpc_requests_total Deprecated, use grpc_server_handled_total: gRPC requests handled, by service, method and status code (a stream counts when it ends).
# TYPE fourover6_grpc_requests_total counter
fourover6_grpc_requests_total{code="Canceled",method="Watch",service="grpc.health.v1.Health"} 1
fourover6_grpc_requests_total{code="NotFound",method="Check",service="grpc.health.v1.Health"} 2
fourover6_grpc_requests_total{code="OK",method="Check",service="grpc.health.v1.Health"} 3
fourover6_grpc_requests_total{code="OK",method="List",service="grpc.health.v1.Health"} 0
fourover6_grpc_requests_total{code="OK",method="Watch",service="grpc.health.v1.Health"} 0
# HELP fourover6_grpc_requests_in_flight gRPC requests and streams being handled now (grpc_server_started_total minus grpc_server_handled_total, as a gauge).
# TYPE fourover6_grpc_requests_in_flight gauge
fourover6_grpc_requests_in_flight{method="Check",service="grpc.health.v1.Health"} 0
fourover6_grpc_requests_in_flight{method="List",service="grpc.health.v1.Health"} 0
fourover6_grpc_requests_in_flight{method="Watch",service="grpc.health.v1.Health"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fourover6_grpc_requests_total", "fourover6_grpc_requests_in_flight"); err != nil {
		t.Error(err)
	}
	// Every call was timed.
	n, err := histogramCount(reg, "fourover6_grpc_request_duration_seconds", "method", "Check")
	if err != nil || n != 5 {
		t.Errorf("duration count for Check = %d, %v; want 5", n, err)
	}

	// The standard series, as stock dashboards query them; every code of
	// every method exists from the start.
	std := map[[3]string]float64{
		{"unary", "Check", "OK"}: 3, {"unary", "Check", "NotFound"}: 2, {"server_stream", "Watch", "Canceled"}: 1,
		{"unary", "Check", "Unavailable"}: 0, {"unary", "List", "OK"}: 0,
	}
	handled := series(t, reg, "grpc_server_handled_total")
	for k, want := range std {
		key := fmt.Sprintf("grpc_code=%s,grpc_method=%s,grpc_service=grpc.health.v1.Health,grpc_type=%s", k[2], k[1], k[0])
		if got, ok := handled[key]; !ok || got != want {
			t.Errorf("grpc_server_handled_total{%s} = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if n, err := histogramCount(reg, "grpc_server_handling_seconds", "grpc_method", "Check"); err != nil || n != 5 {
		t.Errorf("grpc_server_handling_seconds count for Check = %d, %v; want 5", n, err)
	}
	if got := series(t, reg, "grpc_server_started_total")["grpc_method=Check,grpc_service=grpc.health.v1.Health,grpc_type=unary"]; got != 5 {
		t.Errorf("grpc_server_started_total for Check = %v, want 5", got)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

// series maps "label=value,..." (sorted by label) to the value of each
// counter or gauge series of the family name.
func series(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			out[strings.Join(ls, ",")] = v
		}
	}
	return out
}

func histogramCount(reg prometheus.Gatherer, family, label, method string) (uint64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == method {
					return m.GetHistogram().GetSampleCount(), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no histogram for %s", method)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSplitMethodAndCode(t *testing.T) {
	for in, want := range map[string][2]string{
		"/fourover6.controlplane.v1.LeaseService/Allocate": {"fourover6.controlplane.v1.LeaseService", "Allocate"},
		"odd": {"unknown", "odd"},
	} {
		s, m := metrics.SplitMethod(in)
		if s != want[0] || m != want[1] {
			t.Errorf("SplitMethod(%q) = %q %q", in, s, m)
		}
	}
	for err, want := range map[error]codes.Code{
		nil:                                   codes.OK,
		status.Error(codes.NotFound, "x"):     codes.NotFound,
		fmt.Errorf("w: %w", context.Canceled): codes.Canceled,
		context.DeadlineExceeded:              codes.DeadlineExceeded,
		errors.New("plain"):                   codes.Unknown,
	} {
		if got := metrics.Code(err); got != want {
			t.Errorf("Code(%v) = %v, want %v", err, got, want)
		}
	}
}
