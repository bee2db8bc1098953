package metrics

import (
	"context"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPC counts and times the requests a gRPC server handles. It is a
// prometheus.Collector: register it, and install its interceptors with
// ServerOptions (or UnaryServerInterceptor / StreamServerInterceptor).
//
// Its series are the standard ones of go-grpc-middleware's Prometheus
// provider, which stock gRPC dashboards and alerts expect:
//
//	grpc_server_started_total{grpc_type,grpc_service,grpc_method}              counter
//	grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}    counter
//	grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}           histogram
//	grpc_server_msg_received_total, grpc_server_msg_sent_total{...}            counter
//
// and, for one more release, the older names (deprecated):
//
//	fourover6_grpc_requests_total{service,method,code}           counter
//	fourover6_grpc_request_duration_seconds{service,method}      histogram
//	fourover6_grpc_requests_in_flight{service,method}            gauge
//
// service is the full service name (fourover6.controlplane.v1.LeaseService),
// method the bare method name (Allocate), code the gRPC status code name
// (OK, NotFound, Unavailable...). A stream counts once, when it ends, and its
// duration is its whole life: long-lived watch streams land in the top
// buckets.
type GRPC struct {
	std      *grpcprom.ServerMetrics
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

// DurationBuckets are the histogram's upper bounds, in seconds: from half a
// millisecond (an allocation on a healthy controller) to a minute.
var DurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// NewGRPC returns the gRPC server metrics.
func NewGRPC() *GRPC {
	return &GRPC{
		std: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(DurationBuckets))),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "grpc", Name: "requests_total",
			Help: "Deprecated, use grpc_server_handled_total: gRPC requests handled, by service, method and status code (a stream counts when it ends).",
		}, []string{"service", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "grpc", Name: "request_duration_seconds",
			Help:    "Deprecated, use grpc_server_handling_seconds: time to handle a gRPC request, or the whole life of a stream, in seconds.",
			Buckets: DurationBuckets,
		}, []string{"service", "method"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "grpc", Name: "requests_in_flight",
			Help: "gRPC requests and streams being handled now (grpc_server_started_total minus grpc_server_handled_total, as a gauge).",
		}, []string{"service", "method"}),
	}
}

// Describe implements prometheus.Collector.
func (m *GRPC) Describe(ch chan<- *prometheus.Desc) {
	m.std.Describe(ch)
	m.requests.Describe(ch)
	m.duration.Describe(ch)
	m.inFlight.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *GRPC) Collect(ch chan<- prometheus.Metric) {
	m.std.Collect(ch)
	m.requests.Collect(ch)
	m.duration.Collect(ch)
	m.inFlight.Collect(ch)
}

// ServerOptions returns the interceptors as server options. They chain with
// other interceptors (grpc.ChainUnaryInterceptor): pass them first so the
// time spent in the others is measured too.
func (m *GRPC) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.std.UnaryServerInterceptor(), m.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.std.StreamServerInterceptor(), m.StreamServerInterceptor()),
	}
}

// UnaryServerInterceptor counts and times unary calls in the deprecated
// series (ServerOptions installs the standard ones too).
func (m *GRPC) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		done := m.begin(info.FullMethod)
		resp, err := h(ctx, req)
		done(err)
		return resp, err
	}
}

// StreamServerInterceptor counts and times streams in the deprecated
// series.
func (m *GRPC) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		done := m.begin(info.FullMethod)
		err := h(srv, ss)
		done(err)
		return err
	}
}

func (m *GRPC) begin(fullMethod string) func(error) {
	service, method := SplitMethod(fullMethod)
	start := time.Now()
	g := m.inFlight.WithLabelValues(service, method)
	g.Inc()
	return func(err error) {
		g.Dec()
		m.duration.WithLabelValues(service, method).Observe(time.Since(start).Seconds())
		m.requests.WithLabelValues(service, method, Code(err).String()).Inc()
	}
}

// InitializeMethods creates the series of every method registered on gs,
// with code OK at zero, so rates and "absent" alerts work before the first
// call. Call it after registering the services.
func (m *GRPC) InitializeMethods(gs *grpc.Server) {
	m.std.InitializeMetrics(gs)
	for service, info := range gs.GetServiceInfo() {
		for _, mi := range info.Methods {
			m.requests.WithLabelValues(service, mi.Name, codes.OK.String())
			m.duration.WithLabelValues(service, mi.Name)
			m.inFlight.WithLabelValues(service, mi.Name)
		}
	}
}

// Requests is the request counter of one service, method and code.
func (m *GRPC) Requests(service, method, code string) prometheus.Counter {
	return m.requests.WithLabelValues(service, method, code)
}

// InFlight is the in-flight gauge of one service and method.
func (m *GRPC) InFlight(service, method string) prometheus.Gauge {
	return m.inFlight.WithLabelValues(service, method)
}

// SplitMethod splits "/pkg.Service/Method" into "pkg.Service" and "Method".
func SplitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

// Code is the status code a handler's error turns into: a status error's
// code, Canceled or DeadlineExceeded for context errors, Unknown otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return status.FromContextError(err).Code()
}
