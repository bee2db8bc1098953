// Package ctlclient connects to the controller when there may be several
// (active/passive on etcd): Dial takes every controller's address and
// returns a *Conn, a grpc.ClientConnInterface that sends each call to the
// current leader. Generated clients work on it unchanged:
//
//	conn, err := ctlclient.Dial([]string{"10.0.0.1:7000", "10.0.0.2:7000"})
//	...
//	ctl := controlplanev1.NewControllerServiceClient(conn)
//
// How the leader is found: every controller answers GetStatus (leader or
// not). A Conn asks all endpoints at once, keeps the one that says it leads
// and sends calls there until a call fails with UNAVAILABLE (a standby
// answers UNAVAILABLE with the ErrorInfo reason NOT_LEADER; a dead
// controller is UNAVAILABLE too). Then it asks again and, for unary calls,
// retries the call on the new leader within the call's deadline: every
// controller RPC is safe to repeat (allocation is idempotent per session,
// release of a lease not held is a no-op). Streams are not retried: the
// caller reopens them, and the next one goes to the new leader. With one
// endpoint, calls go straight to it.
package ctlclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// ReasonNotLeader is the ErrorInfo reason of a standby's UNAVAILABLE.
const ReasonNotLeader = "NOT_LEADER"

// ParseEndpoints splits a comma-separated list ("unix:///a.sock" or
// "host:port" items, as --controller takes) and checks each.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if _, err := Target(e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("no controller address given")
	}
	return out, nil
}

// Target turns one address as the daemons' flags take it ("unix:///path",
// "unix:/path" or "host:port") into a gRPC dial target.
func Target(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty address: want unix:///path/to.sock or host:port")
	}
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		path := strings.TrimPrefix(rest, "//")
		if path == "" {
			return "", fmt.Errorf("address %q: unix socket path is empty (want unix:///path/to.sock)", s)
		}
		return "unix://" + path, nil
	}
	if strings.Contains(s, "://") {
		return "", fmt.Errorf("address %q: unsupported scheme (want unix:///path/to.sock or host:port)", s)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return "", fmt.Errorf("address %q: want unix:///path/to.sock or host:port, IPv6 hosts in brackets", s)
	}
	return "passthrough:///" + net.JoinHostPort(host, port), nil
}

// Option configures Dial.
type Option func(*options)

type options struct {
	dialOpts     []grpc.DialOption
	probeTimeout time.Duration
	retryWait    time.Duration
}

// WithDialOptions replaces the gRPC dial options (default: insecure
// transport credentials; TLS is for the caller to add, see issue 3).
func WithDialOptions(o ...grpc.DialOption) Option {
	return func(op *options) { op.dialOpts = o }
}

// WithProbeTimeout bounds how long finding the leader may take per
// attempt (default 2s).
func WithProbeTimeout(d time.Duration) Option {
	return func(op *options) { op.probeTimeout = d }
}

// WithRetryWait sets the pause before asking again when no controller
// leads (default 200ms; an election takes about the etcd session TTL).
func WithRetryWait(d time.Duration) Option {
	return func(op *options) { op.retryWait = d }
}

// Conn sends calls to the leading controller. Safe for concurrent use.
type Conn struct {
	endpoints []string
	conns     []*grpc.ClientConn
	opts      options

	mu     sync.Mutex
	leader int // index into conns, -1 when unknown
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// Dial prepares connections to every endpoint (in endpoint syntax:
// unix:///path or host:port). It does not wait for any to answer.
func Dial(endpoints []string, opts ...Option) (*Conn, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("no controller address given")
	}
	o := options{probeTimeout: 2 * time.Second, retryWait: 200 * time.Millisecond}
	for _, f := range opts {
		f(&o)
	}
	if o.dialOpts == nil {
		o.dialOpts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	c := &Conn{endpoints: endpoints, opts: o, leader: -1}
	for _, e := range endpoints {
		target, err := Target(e)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("controller %q: %w", e, err)
		}
		cc, err := grpc.NewClient(target, o.dialOpts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("controller %s: %w", e, err)
		}
		c.conns = append(c.conns, cc)
	}
	if len(c.conns) == 1 {
		c.leader = 0
	}
	return c, nil
}

// Endpoints returns the addresses given to Dial.
func (c *Conn) Endpoints() []string { return c.endpoints }

// Leader returns the endpoint calls go to now ("" when not known yet).
func (c *Conn) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader < 0 {
		return ""
	}
	return c.endpoints[c.leader]
}

// String lists the endpoints, for logs.
func (c *Conn) String() string { return strings.Join(c.endpoints, ",") }

// Close closes every connection.
func (c *Conn) Close() error {
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// IsNotLeader reports whether err is a standby's "not the leader" answer,
// and which controller it says leads ("" if none is known).
func IsNotLeader(err error) (leaderID string, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.Unavailable {
		return "", false
	}
	for _, d := range st.Details() {
		if ei, isInfo := d.(*errdetails.ErrorInfo); isInfo && ei.GetReason() == ReasonNotLeader {
			return ei.GetMetadata()["leader_id"], true
		}
	}
	return "", false
}

// current returns the leader's connection, finding it when unknown.
func (c *Conn) current(ctx context.Context) (int, error) {
	c.mu.Lock()
	i := c.leader
	c.mu.Unlock()
	if i >= 0 {
		return i, nil
	}
	return c.probe(ctx)
}

// forget drops the leader after a failed call on conn i.
func (c *Conn) forget(i int) {
	if len(c.conns) == 1 {
		return
	}
	c.mu.Lock()
	if c.leader == i {
		c.leader = -1
	}
	c.mu.Unlock()
}

// probe asks every endpoint whether it leads.
func (c *Conn) probe(ctx context.Context) (int, error) {
	pctx, cancel := context.WithTimeout(ctx, c.opts.probeTimeout)
	defer cancel()
	type answer struct {
		i      int
		leader bool
		id     string
		err    error
	}
	ch := make(chan answer, len(c.conns))
	for i, cc := range c.conns {
		go func() {
			resp, err := pb.NewControllerServiceClient(cc).GetStatus(pctx, &pb.GetStatusRequest{})
			if status.Code(err) == codes.Unimplemented {
				// A controller without elections: it is the leader.
				ch <- answer{i: i, leader: true}
				return
			}
			ch <- answer{i: i, leader: err == nil && resp.GetStatus().GetLeader(),
				id: resp.GetStatus().GetLeaderId(), err: err}
		}()
	}
	var notes []string
	for range c.conns {
		a := <-ch
		if a.leader {
			c.mu.Lock()
			c.leader = a.i
			c.mu.Unlock()
			cancel() // the others need not answer
			return a.i, nil
		}
		switch {
		case a.err != nil:
			notes = append(notes, fmt.Sprintf("%s: %s", c.endpoints[a.i], status.Convert(a.err).Message()))
		case a.id != "":
			notes = append(notes, fmt.Sprintf("%s: standby (leader is %s)", c.endpoints[a.i], a.id))
		default:
			notes = append(notes, fmt.Sprintf("%s: standby (no leader elected)", c.endpoints[a.i]))
		}
	}
	return -1, status.Errorf(codes.Unavailable, "no controller is the leader: %s", strings.Join(notes, "; "))
}

// retryable: the call may be sent to another controller.
func retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// Invoke sends a unary call to the leader, following a change of leader.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	var last error
	for attempt := 0; ; attempt++ {
		i, err := c.current(ctx)
		if err == nil {
			err = c.conns[i].Invoke(ctx, method, args, reply, opts...)
			if err == nil || !retryable(err) || len(c.conns) == 1 {
				return err
			}
			c.forget(i)
		}
		last = err
		// Try again while the deadline allows: at once after a standby
		// answered, after a pause when no controller leads.
		if attempt >= 2*len(c.conns)+8 || ctx.Err() != nil {
			return last
		}
		if _, nl := IsNotLeader(err); !nl || attempt > 0 {
			select {
			case <-ctx.Done():
				return last
			case <-time.After(c.opts.retryWait):
			}
		}
	}
}

// NewStream opens a stream on the leader. A stream that fails with
// UNAVAILABLE makes the next call look for the leader again.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	i, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	s, err := c.conns[i].NewStream(ctx, desc, method, opts...)
	if err != nil {
		if retryable(err) {
			c.forget(i)
		}
		return nil, err
	}
	return &stream{ClientStream: s, c: c, i: i}, nil
}

type stream struct {
	grpc.ClientStream
	c *Conn
	i int
}

func (s *stream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil && retryable(err) {
		s.c.forget(s.i)
	}
	return err
}
