package metrics_test

import (
	"context"
	"testing"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"

	"github.com/fourover6/fourover6/cmd/internal/metrics"
)

// BenchmarkUnaryInterceptors is the cost per call of the metrics
// interceptors: the standard ones alone, the deprecated ones alone, and
// both as the daemons install them (what keeping the old names costs).
func BenchmarkUnaryInterceptors(b *testing.B) {
	info := &grpc.UnaryServerInfo{FullMethod: "/fourover6.controlplane.v1.LeaseService/Allocate"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	m := metrics.NewGRPC()
	std := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(metrics.DurationBuckets)))
	both := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return std.UnaryServerInterceptor()(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return m.UnaryServerInterceptor()(ctx, req, info, h)
		})
	}
	for name, ic := range map[string]grpc.UnaryServerInterceptor{
		"standard":   std.UnaryServerInterceptor(),
		"deprecated": m.UnaryServerInterceptor(),
		"both":       both,
	} {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				ic(ctx, nil, info, handler)
			}
		})
	}
}
