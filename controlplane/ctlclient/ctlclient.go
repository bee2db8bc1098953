// Package ctlclient is the client of the fourover6 daemons' gRPC APIs that
// 4over6ctl and the data plane share. Dial takes one or more endpoints and
// returns a *Conn, a grpc.ClientConnInterface; generated clients work on it
// unchanged:
//
//	eps, err := endpoint.ParseList("unix:///run/a.sock,10.0.0.2:7000")
//	...
//	conn, err := ctlclient.Dial(eps)
//	...
//	ctl := controlplanev1.NewControllerServiceClient(conn)
//
// Several endpoints are controllers sharing one store (active/passive on
// etcd): a Conn follows their leader. One endpoint is any one daemon (a
// controller, or a data plane's API): calls go straight to it. Either way,
// when nothing answers a Conn says why in errors a program can read
// (*Error, *EndpointError, the errno of a dial), never only in text.
package ctlclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/endpoint"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

const (
	// DefaultProbeTimeout bounds the leadership question asked of each
	// endpoint (WithProbeTimeout changes it).
	DefaultProbeTimeout = 2 * time.Second
	// retryWait is the pause before asking again when no controller
	// leads: an election takes about the etcd session TTL, seconds.
	retryWait = 200 * time.Millisecond
	// maxFollow bounds how long a call without a deadline follows the
	// leader before it gives up.
	maxFollow = 10 * time.Second
	// checkTimeout bounds the client's own dial that explains a failed
	// connection; a local socket answers at once.
	checkTimeout = time.Second
)

// Option configures Dial.
type Option func(*options)

type options struct {
	dialOpts     []grpc.DialOption
	probeTimeout time.Duration
}

// WithDialOptions replaces the gRPC dial options (default: insecure
// transport credentials; the daemons add TLS from their --tls-* flags).
func WithDialOptions(o ...grpc.DialOption) Option {
	return func(op *options) { op.dialOpts = o }
}

// WithProbeTimeout bounds the leadership question asked of each of
// several endpoints (default DefaultProbeTimeout). 4over6ctl lowers it to
// a shorter --timeout.
func WithProbeTimeout(d time.Duration) Option {
	return func(op *options) {
		if d > 0 {
			op.probeTimeout = d
		}
	}
}

// Conn sends calls to a daemon at one endpoint, or to the leading
// controller among several. It is safe for concurrent use.
//
// Probe. With several endpoints, a call while no leader is known asks
// every endpoint at once with ControllerService.GetStatus, each within the
// probe timeout; concurrent calls share one probe. The first endpoint that
// says it leads is used and remembered (one that does not implement
// GetStatus has no elections, so it leads). When none leads, the call goes
// to the first endpoint, in the order given, that answered at all: a
// standby serves GetStatus, GetVersion and SetLogLevel itself and answers
// anything else with NOT_LEADER. With one endpoint nothing is probed.
//
// Follow. A call on one of several endpoints that fails with UNAVAILABLE
// (a standby's NOT_LEADER, google.rpc.ErrorInfo reason
// pb.ErrorReason_NOT_LEADER; a controller that went away; a leader whose
// store is unreachable), or that never got a connection, drops that
// endpoint as leader; the next call probes again. Any other answer is the
// daemon's and is returned as it came.
//
// Retry. A unary call that failed that way is tried again on the endpoint
// the next probe picks: at once after the first NOT_LEADER, then every
// retryWait, until the call's deadline (without one, for maxFollow after
// the first failure). A call is repeated only after UNAVAILABLE or no
// connection, when no controller acted on it, except for a connection lost
// mid-call; the controller's RPCs are safe to repeat even then (allocation
// is idempotent per session, releasing a lease not held is a no-op, the
// admin calls set state). It gives up at once when every endpoint is
// known to be unreachable, as a call on one endpoint fails fast; while one
// of them answers, a leader may be elected.
//
// Replay. A server-streaming call (a watch) whose first receive fails that
// way is opened again, with the same request, where the next probe points.
// Once a message has arrived a failure is the caller's to handle (a
// watch starts over from a new snapshot, and the caller must know);
// client- and bidi-streaming calls are never replayed.
//
// Explain. When nothing answers at an endpoint the Conn dials it itself
// (gRPC tells why only in text) and returns an *Error: for each endpoint
// tried, an *EndpointError holding the dial error (errors.Is(err,
// syscall.ECONNREFUSED)), context.DeadlineExceeded when no connection came
// up in time, a *NotLeaderError, or the daemon's own answer. An *Error has
// the gRPC code UNAVAILABLE (status.Code works on it). A standby's
// NOT_LEADER to a call on the only endpoint is returned as it came (see
// IsNotLeader).
type Conn struct {
	endpoints    []endpoint.Endpoint
	conns        []*grpc.ClientConn
	probeTimeout time.Duration
	probes       singleflight.Group

	mu     sync.Mutex
	leader int // index into conns, -1 when unknown
	last   int // where the last call went, -1 before the first
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// Dial prepares a connection to every endpoint. It does not wait for any
// to answer: the first call connects.
func Dial(endpoints []endpoint.Endpoint, opts ...Option) (*Conn, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("no address given")
	}
	o := options{probeTimeout: DefaultProbeTimeout}
	for _, f := range opts {
		f(&o)
	}
	if o.dialOpts == nil {
		o.dialOpts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	c := &Conn{endpoints: endpoints, probeTimeout: o.probeTimeout, leader: -1, last: -1}
	for _, ep := range endpoints {
		cc, err := grpc.NewClient(ep.Target(), o.dialOpts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", ep, err)
		}
		c.conns = append(c.conns, cc)
	}
	if len(c.conns) == 1 {
		c.leader = 0
	}
	return c, nil
}

// Endpoints returns the endpoints given to Dial.
func (c *Conn) Endpoints() []endpoint.Endpoint { return c.endpoints }

// Leader returns the endpoint calls go to now ("" while none is known).
func (c *Conn) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader < 0 {
		return ""
	}
	return c.endpoints[c.leader].String()
}

// Current returns the endpoint the last call was sent to: the leader, or
// a standby while none leads. ok is false before the first call.
func (c *Conn) Current() (ep endpoint.Endpoint, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last < 0 {
		return endpoint.Endpoint{}, false
	}
	return c.endpoints[c.last], true
}

// Connected reports whether the connection to Current is up.
func (c *Conn) Connected() bool {
	c.mu.Lock()
	i := c.last
	c.mu.Unlock()
	return i >= 0 && c.conns[i].GetState() == connectivity.Ready
}

// String lists the endpoints, for logs.
func (c *Conn) String() string {
	parts := make([]string, len(c.endpoints))
	for i, ep := range c.endpoints {
		parts[i] = ep.String()
	}
	return strings.Join(parts, ",")
}

// Close closes every connection.
func (c *Conn) Close() error {
	var errs []error
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// IsNotLeader reports whether err is a standby's NOT_LEADER answer, and
// which controller it says leads ("" if none is known).
func IsNotLeader(err error) (leaderID string, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.Unavailable {
		return "", false
	}
	for _, d := range st.Details() {
		if ei, isInfo := d.(*errdetails.ErrorInfo); isInfo && ei.GetReason() == pb.ErrorReason_NOT_LEADER.String() {
			return ei.GetMetadata()["leader_id"], true
		}
	}
	return "", false
}

// NotLeaderError says an endpoint is a standby: it answered NOT_LEADER, or
// said so when asked. LeaderID names the leader when it knows one.
type NotLeaderError struct {
	LeaderID string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "not the leader (no leader elected)"
	}
	return "not the leader (leader is " + e.LeaderID + ")"
}

// EndpointError is why a call could not go to one endpoint.
type EndpointError struct {
	Endpoint endpoint.Endpoint
	// Answered: a daemon answered there (a standby, or an error of its
	// own); false: nothing did.
	Answered bool
	// Err is the client's own dial error (errors.Is(Err,
	// syscall.ECONNREFUSED)), context.DeadlineExceeded (no connection, or
	// with Connected no answer, in time), a *NotLeaderError, or the gRPC
	// status the daemon answered with (or gRPC's, when a connection was
	// refused above TCP, e.g. by TLS).
	Err error
	// Connected, with DeadlineExceeded: a connection was up, no answer came.
	Connected bool
	// Within is the time limit that ran out, when the Conn set it (the
	// probe timeout); zero for the call's own deadline, which the caller
	// knows.
	Within time.Duration
}

func (e *EndpointError) Error() string { return e.Endpoint.String() + ": " + e.Reason() }

// Unwrap returns Err.
func (e *EndpointError) Unwrap() error { return e.Err }

// Reason says why, without the endpoint: "connection refused", "not the
// leader (leader is c1)", "no connection within 2s".
func (e *EndpointError) Reason() string {
	var nl *NotLeaderError
	switch {
	case errors.Is(e.Err, context.DeadlineExceeded):
		what := "no connection"
		if e.Connected {
			what = "did not answer"
		}
		if e.Within > 0 {
			return fmt.Sprintf("%s within %v", what, e.Within)
		}
		return what + " before the deadline"
	case errors.As(e.Err, &nl):
		return nl.Error()
	}
	if st, ok := status.FromError(e.Err); ok {
		return st.Message()
	}
	return endpoint.Cause(e.Err)
}

// Error is the error of a call that no endpoint could take: why each
// endpoint tried was given up on, in the order given to Dial.
type Error struct {
	Endpoints []*EndpointError
}

func (e *Error) Error() string {
	if len(e.Endpoints) == 1 {
		return e.Endpoints[0].Error()
	}
	parts := make([]string, len(e.Endpoints))
	for i, ee := range e.Endpoints {
		parts[i] = ee.Error()
	}
	return "no controller could take the call: " + strings.Join(parts, "; ")
}

// Answered reports whether a daemon answered at any endpoint (standbys,
// none leading); false means nothing could be reached.
func (e *Error) Answered() bool {
	for _, ee := range e.Endpoints {
		if ee.Answered {
			return true
		}
	}
	return false
}

// GRPCStatus makes status.Code(err) UNAVAILABLE.
func (e *Error) GRPCStatus() *status.Status { return status.New(codes.Unavailable, e.Error()) }

// Unwrap returns the EndpointErrors.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Endpoints))
	for i, ee := range e.Endpoints {
		errs[i] = ee
	}
	return errs
}

// judge reads the failure of a call on endpoint i: whether the call may
// go to another endpoint and, if so, why i was given up on.
func (c *Conn) judge(i int, err error) (*EndpointError, bool) {
	ep := c.endpoints[i]
	ready := c.conns[i].GetState() == connectivity.Ready
	switch status.Code(err) {
	case codes.Unavailable:
		if id, ok := IsNotLeader(err); ok {
			return &EndpointError{Endpoint: ep, Answered: true, Err: &NotLeaderError{LeaderID: id}}, true
		}
		if ready {
			return &EndpointError{Endpoint: ep, Answered: true, Err: err}, true
		}
		return c.unreachable(i, err), true
	case codes.DeadlineExceeded:
		if !ready {
			return &EndpointError{Endpoint: ep, Err: context.DeadlineExceeded}, true
		}
	}
	return nil, false
}

// unreachable explains a call on endpoint i that found no connection: the
// client dials the address itself for the errno.
func (c *Conn) unreachable(i int, callErr error) *EndpointError {
	ep := c.endpoints[i]
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if err := ep.Check(ctx); err != nil {
		return &EndpointError{Endpoint: ep, Err: err}
	}
	// Something accepts connections there, but gRPC could not talk to it
	// (TLS refused, not a gRPC server): only gRPC's words say more.
	return &EndpointError{Endpoint: ep, Err: callErr}
}

// single turns the failure of a call on the only endpoint into an *Error
// when nothing answered there; a daemon's answer is returned as it came.
func (c *Conn) single(err error) error {
	if err == nil {
		return nil
	}
	if ee, moved := c.judge(0, err); moved && !ee.Answered {
		return &Error{Endpoints: []*EndpointError{ee}}
	}
	return err
}

func (c *Conn) sent(i int) {
	c.mu.Lock()
	c.last = i
	c.mu.Unlock()
}

// forget drops endpoint i as the leader.
func (c *Conn) forget(i int) {
	c.mu.Lock()
	if c.leader == i && len(c.conns) > 1 {
		c.leader = -1
	}
	c.mu.Unlock()
}

type probeResult struct {
	pick  int              // the endpoint to use, -1 for none
	notes []*EndpointError // per endpoint: why it is not the leader; nil if not heard from
}

// pick returns the endpoint to send to: the known leader, else the one a
// probe chooses (-1: none usable now), with what the probe learnt of the
// others.
func (c *Conn) pick(ctx context.Context) (probeResult, error) {
	c.mu.Lock()
	i := c.leader
	c.mu.Unlock()
	if i >= 0 {
		return probeResult{pick: i}, nil
	}
	ch := c.probes.DoChan("", func() (any, error) { return c.probe(), nil })
	select {
	case <-ctx.Done():
		return probeResult{}, ctx.Err()
	case r := <-ch:
		return r.Val.(probeResult), nil
	}
}

// probe asks every endpoint whether it leads. It runs on its own time
// (the probe timeout), as calls with different deadlines share it.
func (c *Conn) probe() probeResult {
	ctx, cancel := context.WithTimeout(context.Background(), c.probeTimeout)
	defer cancel() // once a leader answered, the others need not
	type answer struct {
		i      int
		leader bool
		note   *EndpointError
	}
	ch := make(chan answer, len(c.conns))
	for i, cc := range c.conns {
		go func() {
			resp, err := pb.NewControllerServiceClient(cc).GetStatus(ctx, &pb.GetStatusRequest{})
			switch {
			case err == nil && resp.GetStatus().GetLeader(), status.Code(err) == codes.Unimplemented:
				ch <- answer{i: i, leader: true}
			case err == nil:
				ch <- answer{i: i, note: &EndpointError{Endpoint: c.endpoints[i], Answered: true,
					Err: &NotLeaderError{LeaderID: resp.GetStatus().GetLeaderId()}}}
			default:
				ch <- answer{i: i, note: c.probeFailure(i, err)}
			}
		}()
	}
	res := probeResult{pick: -1, notes: make([]*EndpointError, len(c.conns))}
	for range c.conns {
		a := <-ch
		if a.leader {
			c.mu.Lock()
			c.leader = a.i
			c.mu.Unlock()
			res.pick = a.i
			return res
		}
		res.notes[a.i] = a.note
	}
	for i, n := range res.notes {
		if n.Answered {
			res.pick = i
			break
		}
	}
	return res
}

// probeFailure explains a failed leadership question.
func (c *Conn) probeFailure(i int, err error) *EndpointError {
	if ee, moved := c.judge(i, err); moved {
		if errors.Is(ee.Err, context.DeadlineExceeded) {
			ee.Within = c.probeTimeout
		}
		return ee
	}
	if status.Code(err) == codes.DeadlineExceeded {
		return &EndpointError{Endpoint: c.endpoints[i], Err: context.DeadlineExceeded, Connected: true, Within: c.probeTimeout}
	}
	// Any other answer (e.g. PERMISSION_DENIED): a daemon is there; it is
	// used when none leads, and the call gets its own answer.
	return &EndpointError{Endpoint: c.endpoints[i], Answered: true, Err: err}
}

// follow is one call's way through several endpoints: where to try next,
// and why each endpoint tried so far was given up on.
type follow struct {
	c            *Conn
	ctx          context.Context
	start        time.Time // of the first failure: a stream may fail hours after it opened
	notes        []*EndpointError
	tries        int
	quick        bool // the next try follows at once
	sawNotLeader bool
}

func (c *Conn) follow(ctx context.Context) *follow {
	return &follow{c: c, ctx: ctx, notes: make([]*EndpointError, len(c.conns))}
}

// next returns the endpoint to try, or the error to give up with.
func (f *follow) next() (int, error) {
	for {
		if f.tries > 0 {
			if err := f.wait(); err != nil {
				return -1, err
			}
		}
		f.tries++
		res, err := f.c.pick(f.ctx)
		if err != nil {
			return -1, f.giveUp()
		}
		for i, n := range res.notes {
			if n != nil {
				f.notes[i] = n
			}
		}
		if res.pick >= 0 {
			f.c.sent(res.pick)
			return res.pick, nil
		}
	}
}

// wait pauses before the next try, or returns the error to give up with.
func (f *follow) wait() error {
	if f.ctx.Err() != nil || f.unreachable() {
		return f.giveUp()
	}
	if _, ok := f.ctx.Deadline(); !ok && !f.start.IsZero() && time.Since(f.start) > maxFollow {
		return f.giveUp()
	}
	if f.quick {
		f.quick = false
		return nil
	}
	t := time.NewTimer(retryWait)
	defer t.Stop()
	select {
	case <-f.ctx.Done():
		return f.giveUp()
	case <-t.C:
		return nil
	}
}

// unreachable: every endpoint was tried and nothing answered at any.
func (f *follow) unreachable() bool {
	for _, n := range f.notes {
		if n == nil || n.Answered {
			return false
		}
	}
	return true
}

// failed records the failure of a try on endpoint i and reports whether
// the call may be tried again elsewhere.
func (f *follow) failed(i int, err error) bool {
	ee, moved := f.c.judge(i, err)
	if !moved {
		return false
	}
	f.notes[i] = ee
	f.c.forget(i)
	if f.start.IsZero() {
		f.start = time.Now()
	}
	var nl *NotLeaderError
	if errors.As(ee.Err, &nl) && !f.sawNotLeader {
		// A standby's answer: the leader is elsewhere, ask again now.
		f.sawNotLeader, f.quick = true, true
	}
	return true
}

// answer is what a call returns when a try was not moved elsewhere: the
// daemon's answer, unless the call's time ran out while it was following
// the leader; then why each endpoint was given up on says more.
func (f *follow) answer(err error) error {
	if !f.start.IsZero() && status.Code(err) == codes.DeadlineExceeded && f.ctx.Err() != nil {
		return f.giveUp()
	}
	return err
}

// giveUp is the error of a call that found no endpoint to take it.
func (f *follow) giveUp() error {
	if errors.Is(f.ctx.Err(), context.Canceled) {
		return status.FromContextError(f.ctx.Err()).Err()
	}
	e := &Error{Endpoints: make([]*EndpointError, len(f.notes))}
	for i, n := range f.notes {
		if n == nil { // not heard from before the call's time ran out
			n = &EndpointError{Endpoint: f.c.endpoints[i], Err: context.DeadlineExceeded}
		}
		e.Endpoints[i] = n
	}
	return e
}

// Invoke implements grpc.ClientConnInterface.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if len(c.conns) == 1 {
		c.sent(0)
		return c.single(c.conns[0].Invoke(ctx, method, args, reply, opts...))
	}
	f := c.follow(ctx)
	for {
		i, err := f.next()
		if err != nil {
			return err
		}
		err = c.conns[i].Invoke(ctx, method, args, reply, opts...)
		if err == nil {
			return nil
		}
		if !f.failed(i, err) {
			return f.answer(err)
		}
	}
}

// NewStream implements grpc.ClientConnInterface.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s := &stream{c: c, ctx: ctx, desc: desc, method: method, opts: opts}
	if len(c.conns) > 1 {
		s.f = c.follow(ctx)
		s.replay = desc.ServerStreams && !desc.ClientStreams
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// stream is a call's stream on the endpoint in use; a server-streaming
// call remembers its request to replay it.
type stream struct {
	grpc.ClientStream
	c      *Conn
	f      *follow // nil with one endpoint
	i      int     // the endpoint ClientStream is on
	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption
	replay bool

	req      any
	closed   bool
	received bool
}

// open opens the stream on the only endpoint, or where follow points.
func (s *stream) open() error {
	if s.f == nil {
		s.c.sent(0)
		cs, err := s.c.conns[0].NewStream(s.ctx, s.desc, s.method, s.opts...)
		if err != nil {
			return s.c.single(err)
		}
		s.ClientStream = cs
		return nil
	}
	for {
		i, err := s.f.next()
		if err != nil {
			return err
		}
		cs, err := s.c.conns[i].NewStream(s.ctx, s.desc, s.method, s.opts...)
		if err == nil {
			s.ClientStream, s.i = cs, i
			return nil
		}
		if !s.f.failed(i, err) {
			return s.f.answer(err)
		}
	}
}

func (s *stream) SendMsg(m any) error {
	if s.replay {
		s.req = m
	}
	return s.ClientStream.SendMsg(m)
}

func (s *stream) CloseSend() error {
	s.closed = true
	return s.ClientStream.CloseSend()
}

func (s *stream) RecvMsg(m any) error {
	for {
		err := s.ClientStream.RecvMsg(m)
		if err == nil {
			s.received = true
			return nil
		}
		if errors.Is(err, io.EOF) {
			return err
		}
		if s.f == nil {
			if s.received {
				// Messages came: the daemon itself ended the stream.
				return err
			}
			return s.c.single(err)
		}
		if !s.f.failed(s.i, err) {
			if s.received {
				return err
			}
			return s.f.answer(err)
		}
		if s.received || !s.replay {
			if ee := s.f.notes[s.i]; !ee.Answered {
				return &Error{Endpoints: []*EndpointError{ee}}
			}
			return err
		}
		// The first receive failed as a unary call would move on: send the
		// same request where the leader is now.
		if err := s.open(); err != nil {
			return err
		}
		if s.req != nil {
			if err := s.ClientStream.SendMsg(s.req); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		if s.closed {
			if err := s.ClientStream.CloseSend(); err != nil {
				return err
			}
		}
	}
}
