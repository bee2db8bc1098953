// Package dataplanetest holds in-memory stand-ins for the data plane's TUN
// and controller, for the tests of the data plane and of the packages built
// on it (api, metrics).
package dataplanetest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// MemTUN is an in-memory TUN: tests inject packets "from the kernel" with
// Inject and see what the data plane wrote on Written.
type MemTUN struct {
	in      chan []byte
	Written chan []byte
	closed  chan struct{}
	once    sync.Once
	batch   int

	dmu      sync.Mutex
	deadline chan struct{} // closed when the read deadline passes; nil: none
	changed  chan struct{} // closed (and replaced) when the deadline changes
}

// SetReadDeadline implements the deadline a hand-off stops the TUN reader
// with: a Read blocked at t returns os.ErrDeadlineExceeded (t in the
// past: at once); the zero time clears it.
func (m *MemTUN) SetReadDeadline(t time.Time) error {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	if m.changed != nil {
		close(m.changed) // a blocked Read looks again
	}
	m.changed = make(chan struct{})
	if t.IsZero() {
		m.deadline = nil
		return nil
	}
	ch := make(chan struct{})
	m.deadline = ch
	time.AfterFunc(time.Until(t), func() { close(ch) })
	return nil
}

func (m *MemTUN) deadlineCh() (deadline, changed <-chan struct{}) {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	if m.changed == nil {
		m.changed = make(chan struct{})
	}
	return m.deadline, m.changed
}

// NewMemTUN returns a device reading up to batch packets at a time.
func NewMemTUN(batch int) *MemTUN {
	return &MemTUN{in: make(chan []byte, 1024), Written: make(chan []byte, 4096), closed: make(chan struct{}),
		batch: max(batch, 1)}
}

// Inject queues a packet for the data plane to read.
func (m *MemTUN) Inject(p []byte) { m.in <- p }

// Name implements tun.Device.
func (m *MemTUN) Name() string { return "mem0" }

// BatchSize implements tun.Device.
func (m *MemTUN) BatchSize() int { return m.batch }

// NewWriter implements tun.Device: each packet goes to Written at once.
func (m *MemTUN) NewWriter() tun.Writer { return tun.NewPacketWriter(m) }

// Close implements tun.Device.
func (m *MemTUN) Close() error { m.once.Do(func() { close(m.closed) }); return nil }

// Read implements tun.Device.
func (m *MemTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	for waiting := true; waiting; {
		deadline, changed := m.deadlineCh()
		select {
		case p := <-m.in:
			sizes[0] = copy(bufs[0][off:], p)
			waiting = false
		case <-m.closed:
			return 0, os.ErrClosed
		case <-deadline:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
		}
	}
	n := 1
	for n < len(bufs) {
		select {
		case p := <-m.in:
			sizes[n] = copy(bufs[n][off:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// Write is the packet writer's: one packet per call, copied to Written.
func (m *MemTUN) Write(p []byte) (int, error) {
	m.Written <- append([]byte(nil), p...)
	return len(p), nil
}

// Pool is the pool MemController serves.
var Pool = dataplane.Assignment{Gateway: netip.MustParseAddr("13.8.0.1"), Pool: netip.MustParsePrefix("13.8.0.0/24")}

// DNS are the servers of MemController's 101s.
var DNS = [3]netip.Addr{netip.MustParseAddr("202.38.120.242"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("202.106.0.20")}

// MemController is an in-memory controller: a pool of Size addresses from
// 13.8.0.2, keyed by session.
type MemController struct {
	mu     sync.Mutex
	size   int
	leases map[string]netip.Addr // session -> address
	used   map[netip.Addr]string
	down   bool
	stops  []dataplane.StopRequest

	// Released receives every release, as it arrives.
	Released chan dataplane.ReleaseRequest
	// Commands are delivered to the data plane's command stream.
	Commands chan dataplane.Directive
	// Batches counts ReleaseBatch calls that succeeded.
	Batches int

	// RegisterErr, when set, decides each registration (nil: accepted).
	RegisterErr func(dataplane.Registration) error
	// AllocateErr, when set, answers every allocation with its error.
	AllocateErr error
	// Unknown makes heartbeats say the controller does not know the
	// instance.
	Unknown bool
	// Registrations counts registrations accepted.
	Registrations int
}

// NewMemController returns a controller with size addresses.
func NewMemController(size int) *MemController {
	return &MemController{size: size, leases: map[string]netip.Addr{}, used: map[netip.Addr]string{},
		Released: make(chan dataplane.ReleaseRequest, 4096), Commands: make(chan dataplane.Directive, 16)}
}

// SetSize changes the pool size (a smaller one exhausts sooner).
func (c *MemController) SetSize(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.size = n
}

// SetDown makes the controller unreachable (or reachable again).
func (c *MemController) SetDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
}

// Leased counts the leases held.
func (c *MemController) Leased() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.leases)
}

// Stops returns the StopDataplane calls received.
func (c *MemController) Stops() []dataplane.StopRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]dataplane.StopRequest(nil), c.stops...)
}

func (c *MemController) unavailable(op string) error {
	if c.down {
		return fmt.Errorf("%s: %w: connection refused (%w)", op, dataplane.ErrControllerUnavailable, dataplane.ErrNotSent)
	}
	return nil
}

// Register implements dataplane.ControlPlane.
func (c *MemController) Register(_ context.Context, r dataplane.Registration) (dataplane.Assignment, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.unavailable("register"); err != nil {
		return dataplane.Assignment{}, err
	}
	if c.RegisterErr != nil {
		if err := c.RegisterErr(r); err != nil {
			return dataplane.Assignment{}, err
		}
	}
	c.Registrations++
	c.Unknown = false
	return Pool, nil
}

// Set runs f under the controller's lock, to change its fields.
func (c *MemController) Set(f func(c *MemController)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// Allocate implements dataplane.ControlPlane: the lowest free address.
func (c *MemController) Allocate(_ context.Context, r dataplane.AllocateRequest) (wire.AddrResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.unavailable("allocate"); err != nil {
		return wire.AddrResponse{}, err
	}
	if c.AllocateErr != nil {
		return wire.AddrResponse{}, c.AllocateErr
	}
	a, ok := c.leases[r.SessionID]
	if !ok {
		for i := 0; i < c.size; i++ {
			v := uint32(13)<<24 | uint32(8)<<16 + 2 + uint32(i) // 13.8.0.2 up, past .255 for big pools
			cand := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
			if _, taken := c.used[cand]; !taken {
				a, ok = cand, true
				break
			}
		}
		if !ok {
			return wire.AddrResponse{}, fmt.Errorf("allocate: %w: all %d leased", dataplane.ErrPoolExhausted, c.size)
		}
		c.leases[r.SessionID] = a
		c.used[a] = r.SessionID
	}
	return wire.AddrResponse{Addr: a, Route: netip.IPv4Unspecified(), DNS: DNS}, nil
}

// ReleaseBatch implements dataplane.ControlPlane.
func (c *MemController) ReleaseBatch(_ context.Context, b dataplane.ReleaseBatch) (int, error) {
	c.mu.Lock()
	if err := c.unavailable("release"); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	n := 0
	for _, r := range b.Releases {
		if a, ok := c.leases[r.SessionID]; ok && a == r.Addr {
			delete(c.leases, r.SessionID)
			delete(c.used, r.Addr)
			n++
		}
	}
	c.Batches++
	c.mu.Unlock()
	for _, r := range b.Releases {
		c.Released <- r
	}
	return n, nil
}

// Report implements dataplane.ControlPlane.
func (c *MemController) Report(context.Context, dataplane.Report) (dataplane.ReportReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return dataplane.ReportReply{}, c.unavailable("report")
}

// Heartbeat implements dataplane.ControlPlane.
func (c *MemController) Heartbeat(context.Context, dataplane.Heartbeat) (dataplane.HeartbeatReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.unavailable("heartbeat"); err != nil {
		return dataplane.HeartbeatReply{}, err
	}
	return dataplane.HeartbeatReply{Known: !c.Unknown}, nil
}

// Stop implements dataplane.ControlPlane: every lease goes.
func (c *MemController) Stop(_ context.Context, s dataplane.StopRequest) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.unavailable("stop"); err != nil {
		return 0, err
	}
	c.stops = append(c.stops, s)
	n := len(c.leases)
	clear(c.leases)
	clear(c.used)
	return n, nil
}

// WatchDirectives implements dataplane.ControlPlane: it delivers Commands.
func (c *MemController) WatchDirectives(ctx context.Context, _, _ string, fn func(dataplane.Directive)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case cmd := <-c.Commands:
			fn(cmd)
		}
	}
}
