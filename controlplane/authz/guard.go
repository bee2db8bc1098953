package authz

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Guard enforces the method table on one gRPC server and audits its calls
// of class Change. Install it with ServerOptions. It is safe for
// concurrent use.
//
// Invariants: every method of the services it was made for has a class
// (New panics otherwise: a method without a rule is a programming error the
// tests catch); a method outside them is refused; a call is audited if and
// only if its class is Change, whether it was allowed or not.
type Guard struct {
	log     *slog.Logger
	methods map[string]Class        // full method name -> class, of the services guarded
	counts  map[string]*auditCounts // bare method name -> results, Change methods only
}

// auditCounts counts one method's audited calls by result (gRPC code).
type auditCounts [codes.Unauthenticated + 1]atomic.Uint64

// New returns the guard of a server that serves these services. log
// receives the audit lines (INFO, written whatever the logger's level) and
// the refused calls outside Change (WARN).
func New(log *slog.Logger, services ...*grpc.ServiceDesc) *Guard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{log: log, methods: map[string]Class{}, counts: map[string]*auditCounts{}}
	for _, sd := range services {
		names := make([]string, 0, len(sd.Methods)+len(sd.Streams))
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range sd.Streams {
			names = append(names, s.StreamName)
		}
		for _, name := range names {
			full := "/" + sd.ServiceName + "/" + name
			c := ClassOf(full)
			if c == classUnset {
				panic(fmt.Sprintf("authz: %s has no access rule: add it to the table in controlplane/authz/rules.go", full))
			}
			g.methods[full] = c
			if c == Change {
				if _, dup := g.counts[name]; dup {
					panic(fmt.Sprintf("authz: two audited methods named %s on one server: their counters would mix", name))
				}
				g.counts[name] = new(auditCounts)
			}
		}
	}
	return g
}

// ServerOptions installs the guard. Pass them after the metrics
// interceptors (so refused calls are counted and timed too) and before the
// handlers' own (panic recovery), so an audited call's result is what its
// caller got.
func (g *Guard) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream)}
}

func (g *Guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	class, p, err := g.check(ctx, info.FullMethod)
	if class != Change {
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	start := time.Now()
	var resp any
	if err == nil {
		resp, err = h(ctx, req)
	}
	g.audit(ctx, p, info.FullMethod, req, err, time.Since(start))
	return resp, err
}

func (g *Guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	class, p, err := g.check(ss.Context(), info.FullMethod)
	if class != Change {
		if err != nil {
			return err
		}
		return h(srv, ss)
	}
	start := time.Now()
	rs := &firstRequest{ServerStream: ss}
	if err == nil {
		err = h(srv, rs)
	}
	g.audit(ss.Context(), p, info.FullMethod, rs.first, err, time.Since(start))
	return err
}

// firstRequest keeps the first message a stream received: the request of
// a server-streaming call, for the audit line.
type firstRequest struct {
	grpc.ServerStream
	first any
}

func (s *firstRequest) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.first == nil {
		s.first = m
	}
	return err
}

// check decides one call: its class, its caller, and nil or the
// PERMISSION_DENIED to answer. A refused call outside Change is logged
// here (Change calls get their audit line).
func (g *Guard) check(ctx context.Context, fullMethod string) (Class, Peer, error) {
	p := PeerFrom(ctx)
	class, ok := g.methods[fullMethod]
	if ok && class.Allows(p.Role) {
		return class, p, nil
	}
	var msg string
	if !ok {
		msg = fmt.Sprintf("%s has no access rule on this daemon: refused to everyone", shortMethod(fullMethod))
	} else {
		msg = fmt.Sprintf("%s needs %s; the caller (%s) has %s", shortMethod(fullMethod), class.needs(), p.describe(), roleText(p.Role))
		if p.Why != "" {
			msg += ": " + p.Why
		}
	}
	if class != Change {
		svc, name := splitMethod(fullMethod)
		g.log.LogAttrs(ctx, slog.LevelWarn, "call refused", slog.String("service", svc), slog.String("method", name),
			slog.Any("who", p), slog.String("error", msg))
	}
	return class, p, status.Error(codes.PermissionDenied, msg)
}

func roleText(r Role) string {
	if r == RoleNone {
		return "no role"
	}
	return "the " + r.String() + " role"
}

// shortMethod is "ControllerService/SetDNS" for a full method name.
func shortMethod(full string) string {
	svc, name := splitMethod(full)
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc + "/" + name
}

// splitMethod splits "/pkg.Service/Method".
func splitMethod(full string) (service, method string) {
	s := strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return "", s
}

// audit writes the audit line of one Change call and counts it.
func (g *Guard) audit(ctx context.Context, p Peer, fullMethod string, req any, err error, took time.Duration) {
	svc, name := splitMethod(fullMethod)
	code := status.Code(err)
	attrs := []slog.Attr{
		slog.String("service", svc), slog.String("method", name),
		slog.Any("who", p),
		{Key: "request", Value: requestValue(req)},
		slog.String("result", Result(code)),
		slog.Duration("duration", took),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	// Straight to the handler: an audit line is written whatever the log
	// level, as --log-level warn must not hide who changed what.
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "audit", 0)
	r.AddAttrs(attrs...)
	_ = g.log.Handler().Handle(ctx, r)
	if c := g.counts[name]; c != nil && int(code) < len(c) {
		c[code].Add(1)
	}
}

// Result is the audit result of a gRPC code: "ok", or the code's name in
// snake case ("permission_denied", "not_found").
func Result(c codes.Code) string {
	if c == codes.OK {
		return "ok"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// AuditCount is how many audited calls of one method ended with one
// result.
type AuditCount struct {
	Method string // bare method name, "SetDNS"
	Result string // as Result
	N      uint64
}

// AuditCounts is a snapshot of the audit counters, sorted by method and
// result: every audited method with its "ok" count (0 included), and the
// other results that happened.
func (g *Guard) AuditCounts() []AuditCount {
	var out []AuditCount
	for name, c := range g.counts {
		for code := range c {
			n := c[code].Load()
			if n > 0 || codes.Code(code) == codes.OK {
				out = append(out, AuditCount{Method: name, Result: Result(codes.Code(code)), N: n})
			}
		}
	}
	slices.SortFunc(out, func(a, b AuditCount) int {
		if c := strings.Compare(a.Method, b.Method); c != 0 {
			return c
		}
		return strings.Compare(a.Result, b.Result)
	})
	return out
}

// requestValue is the audit line's "request": the fields a request sets.
func requestValue(req any) slog.Value {
	m, ok := req.(proto.Message)
	if !ok || m == nil {
		return slog.GroupValue()
	}
	return slog.GroupValue(fieldAttrs(m.ProtoReflect(), 0)...)
}
