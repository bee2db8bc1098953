package main

// Connections to the daemons, and the choice among several controller
// addresses.
//
// A daemon implements grpc.ClientConnInterface, so the generated clients run
// on it directly (cpv1.NewControllerServiceClient(a.controller)). With one
// address it is a plain *grpc.ClientConn: no extra request, errors as they
// come. With several (--controller a,b,c or FOUROVER6_CONTROLLER=a,b,c) the
// first request picks one: the addresses are asked in order with GetStatus
// and the first that says leader=true is used, else the first that answered
// at all. When the chosen one turns out unreachable, or answers
// FAILED_PRECONDITION/UNAVAILABLE "not the leader", the request moves on to
// the next address not yet given up on.
//
// This is the single place that knows about several addresses: a reusable
// leader-following dialer (controlplane/ctlclient) can replace it by
// providing Invoke and NewStream; the commands use nothing else.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/controlplane/endpoint"
)

// maxProbeTimeout bounds the GetStatus asked of each of several controller
// addresses while looking for the leader (--timeout, when shorter, wins).
const maxProbeTimeout = 2 * time.Second

// daemon is one gRPC server the CLI may talk to, possibly at one of several
// addresses.
type daemon struct {
	name   string // "controller" or "dataplane"; also the flag name
	envVar string
	def    string
	multi  bool // several comma-separated addresses allowed

	flagValue string // bound to --<name>
	tls       *tlsconf.Files

	// Set by connect.
	addr   string // as resolved, before parsing
	source string // where addr came from: "--controller", "$FOUROVER6_CONTROLLER", "default"
	eps    []endpoint.Endpoint
	conns  []*grpc.ClientConn // per address, dialled lazily
	bad    []string           // per address: why it was given up on ("" = still usable)
	spoke  []bool             // per address: it answered something

	// The address in use (eps[cur]); ep is eps[0] until one is chosen.
	cur    int
	chosen bool
	ep     endpoint.Endpoint
	conn   *grpc.ClientConn

	// leader asks one address whether it is the leader (nil: never ask).
	leader       func(ctx context.Context, cc grpc.ClientConnInterface) (bool, error)
	probeTimeout time.Duration
	timeout      time.Duration // --timeout, for messages
}

var _ grpc.ClientConnInterface = (*daemon)(nil)

// parseAddrs splits a comma-separated address list and parses each.
func parseAddrs(s string) ([]endpoint.Endpoint, error) {
	var eps []endpoint.Endpoint
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		ep, err := endpoint.Parse(part)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		_, err := endpoint.Parse("")
		return nil, err
	}
	return eps, nil
}

// setAddrs installs the parsed addresses; nothing is dialled yet.
func (d *daemon) setAddrs(eps []endpoint.Endpoint) {
	d.eps = eps
	d.conns = make([]*grpc.ClientConn, len(eps))
	d.bad = make([]string, len(eps))
	d.spoke = make([]bool, len(eps))
	d.cur, d.ep = 0, eps[0]
}

// addressText is the address for messages: the one in use, or the whole
// list while none is chosen.
func (d *daemon) addressText() string {
	if d.chosen || len(d.eps) == 1 {
		return d.ep.String()
	}
	parts := make([]string, len(d.eps))
	for i, ep := range d.eps {
		parts[i] = ep.String()
	}
	return strings.Join(parts, ",")
}

func (d *daemon) dial(i int) (*grpc.ClientConn, error) {
	if d.conns[i] != nil {
		return d.conns[i], nil
	}
	opts, err := dialOptions(d.eps[i], d.tls)
	if err == nil {
		d.conns[i], err = grpc.NewClient(d.eps[i].Target(), opts...)
	}
	if err != nil {
		return nil, &cliError{code: exitError, msg: fmt.Sprintf("%s at %s: %v", d.name, d.eps[i], err)}
	}
	return d.conns[i], nil
}

func (d *daemon) use(i int) {
	d.cur, d.ep, d.conn, d.chosen = i, d.eps[i], d.conns[i], true
}

func (d *daemon) close() {
	for i, c := range d.conns {
		if c != nil {
			_ = c.Close()
			d.conns[i] = nil
		}
	}
	d.conn, d.chosen = nil, false
}

// choose picks the address to use, asking each in turn for the leader when
// there are several. It returns a *cliError when none is usable.
func (d *daemon) choose(ctx context.Context) error {
	if d.chosen {
		return nil
	}
	if len(d.eps) == 1 || d.leader == nil {
		for i := range d.eps {
			if d.bad[i] != "" {
				continue
			}
			if _, err := d.dial(i); err != nil {
				return err
			}
			d.use(i)
			return nil
		}
		return d.noneLeft()
	}
	answered := -1
	for i := range d.eps {
		if d.bad[i] != "" {
			continue
		}
		conn, err := d.dial(i)
		if err != nil {
			d.bad[i] = err.Error()
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, d.probeTimeout)
		leader, err := d.leader(pctx, conn)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && leader {
			d.spoke[i] = true
			d.use(i)
			return nil
		}
		if reason, unusable := d.probeFailure(conn, err); unusable {
			d.bad[i] = reason
			continue
		}
		// A follower, or a controller that cannot tell (e.g. too old for
		// GetStatus): usable when no leader answers.
		d.spoke[i] = true
		if answered < 0 {
			answered = i
		}
	}
	if answered >= 0 {
		d.use(answered)
		return nil
	}
	return d.noneLeft()
}

// probeFailure tells whether the answer to the leadership question makes
// the address unusable, and why.
func (d *daemon) probeFailure(conn *grpc.ClientConn, err error) (string, bool) {
	if err == nil {
		return "", false
	}
	st := status.Convert(err)
	ready := conn.GetState() == connectivity.Ready
	switch {
	case st.Code() == codes.Unavailable && !ready:
		return connectReason(st.Message()), true
	case st.Code() == codes.DeadlineExceeded && !ready:
		return fmt.Sprintf("no connection within %v", d.probeTimeout), true
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Sprintf("did not answer within %v", d.probeTimeout), true
	}
	return "", false
}

// noneLeft is the error once every address was given up on: unreachable
// (exit 3) when none of them answered, else an error (exit 1).
func (d *daemon) noneLeft() error {
	var parts []string
	anySpoke := false
	for i, ep := range d.eps {
		parts = append(parts, fmt.Sprintf("%s: %s", ep, d.bad[i]))
		anySpoke = anySpoke || d.spoke[i]
	}
	if len(d.eps) == 1 {
		if anySpoke {
			return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s: %s", d.name, d.eps[0], d.bad[0])}
		}
		return &cliError{code: exitUnreachable, msg: fmt.Sprintf("cannot reach %s at %s", d.name, parts[0])}
	}
	if !anySpoke {
		return &cliError{code: exitUnreachable, msg: fmt.Sprintf("cannot reach %s at any of %d addresses: %s",
			d.name, len(d.eps), strings.Join(parts, "; "))}
	}
	return &cliError{code: exitError, msg: fmt.Sprintf("no usable %s (none is the leader): %s", d.name, strings.Join(parts, "; "))}
}

// failover gives up on the address in use when err shows it unusable (not
// the leader, or unreachable) and another address may still do. It reports
// whether the request should be tried again.
func (d *daemon) failover(err error) bool {
	if len(d.eps) < 2 || err == nil {
		return false
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch {
	case isNotLeader(st):
		d.spoke[d.cur] = true
		d.bad[d.cur] = "not the leader"
	case st.Code() == codes.Unavailable && d.conn.GetState() != connectivity.Ready:
		d.bad[d.cur] = connectReason(st.Message())
	default:
		return false
	}
	d.chosen = false
	return true
}

// isNotLeader recognises a follower's refusal.
func isNotLeader(st *status.Status) bool {
	if st.Code() != codes.FailedPrecondition && st.Code() != codes.Unavailable {
		return false
	}
	msg := strings.ToLower(st.Message())
	return strings.Contains(msg, "not the leader") || strings.Contains(msg, "not leader")
}

// Invoke implements grpc.ClientConnInterface.
func (d *daemon) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	for {
		if err := d.choose(ctx); err != nil {
			return err
		}
		err := d.conn.Invoke(ctx, method, args, reply, opts...)
		if !d.failover(err) {
			return err
		}
	}
}

// NewStream implements grpc.ClientConnInterface. A server-streaming call
// moves to the next address when its first receive fails the way Invoke
// would move on; once a message has arrived it stays.
func (d *daemon) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	for {
		if err := d.choose(ctx); err != nil {
			return nil, err
		}
		s, err := d.conn.NewStream(ctx, desc, method, opts...)
		if d.failover(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(d.eps) < 2 || desc.ClientStreams {
			return s, nil
		}
		return &failoverStream{ClientStream: s, d: d, ctx: ctx, desc: desc, method: method, opts: opts}, nil
	}
}

// failoverStream replays a server-streaming request on the next address.
type failoverStream struct {
	grpc.ClientStream
	d      *daemon
	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption

	req      any
	closed   bool
	received bool
}

func (s *failoverStream) SendMsg(m any) error {
	s.req = m
	return s.ClientStream.SendMsg(m)
}

func (s *failoverStream) CloseSend() error {
	s.closed = true
	return s.ClientStream.CloseSend()
}

func (s *failoverStream) RecvMsg(m any) error {
	for {
		err := s.ClientStream.RecvMsg(m)
		if err == nil {
			s.received = true
			return nil
		}
		if s.received || errors.Is(err, io.EOF) || !s.d.failover(err) {
			return err
		}
		if err := s.d.choose(s.ctx); err != nil {
			return err
		}
		ns, err := s.d.conn.NewStream(s.ctx, s.desc, s.method, s.opts...)
		if err != nil {
			return err
		}
		if s.req != nil {
			if err := ns.SendMsg(s.req); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		if s.closed {
			if err := ns.CloseSend(); err != nil {
				return err
			}
		}
		s.ClientStream = ns
	}
}
