package dataplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// memTUN is an in-memory TUN: tests inject packets "from the kernel" with
// Inject and see what the data plane wrote on Written.
type memTUN struct {
	in      chan []byte
	Written chan []byte
	closed  chan struct{}
	once    sync.Once
}

func newMemTUN() *memTUN {
	return &memTUN{in: make(chan []byte, 1024), Written: make(chan []byte, 4096), closed: make(chan struct{})}
}

func (m *memTUN) Name() string       { return "mem0" }
func (m *memTUN) BatchSize() int     { return 4 }
func (m *memTUN) WriteHeadroom() int { return 16 }
func (m *memTUN) Close() error       { m.once.Do(func() { close(m.closed) }); return nil }
func (m *memTUN) Inject(p []byte)    { m.in <- p }

func (m *memTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	select {
	case p := <-m.in:
		sizes[0] = copy(bufs[0][off:], p)
	case <-m.closed:
		return 0, os.ErrClosed
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

func (m *memTUN) Write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		m.Written <- append([]byte(nil), b[off:]...)
	}
	return len(bufs), nil
}

// memController is an in-memory controller: a pool of size addresses from
// 13.8.0.2, keyed by session.
type memController struct {
	mu       sync.Mutex
	size     int
	leases   map[string]netip.Addr // session -> addr
	used     map[netip.Addr]string
	released chan string // session ids, as releases arrive
	down     bool
	commands chan dataplane.Command
}

func newMemController(size int) *memController {
	return &memController{size: size, leases: map[string]netip.Addr{}, used: map[netip.Addr]string{}, released: make(chan string, 4096), commands: make(chan dataplane.Command, 16)}
}

func (c *memController) Register(context.Context, dataplane.Registration) (dataplane.PoolInfo, error) {
	return dataplane.PoolInfo{Gateway: netip.MustParseAddr("13.8.0.1"), Pool: netip.MustParsePrefix("13.8.0.0/24")}, nil
}

var testDNS = [3]netip.Addr{netip.MustParseAddr("202.38.120.242"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("202.106.0.20")}

func (c *memController) Allocate(_ context.Context, r dataplane.AllocateRequest) (wire.AddrResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down {
		return wire.AddrResponse{}, fmt.Errorf("allocate: %w: connection refused", dataplane.ErrControllerUnavailable)
	}
	a, ok := c.leases[r.SessionID]
	if !ok {
		for i := 0; i < c.size; i++ {
			cand := netip.AddrFrom4([4]byte{13, 8, 0, byte(2 + i)})
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
	return wire.AddrResponse{Addr: a, Route: netip.IPv4Unspecified(), DNS: testDNS}, nil
}

func (c *memController) Release(_ context.Context, r dataplane.ReleaseRequest) error {
	c.mu.Lock()
	if c.leases[r.SessionID] == r.Addr {
		delete(c.leases, r.SessionID)
		delete(c.used, r.Addr)
	}
	c.mu.Unlock()
	c.released <- r.SessionID
	return nil
}

func (c *memController) Report(context.Context, dataplane.Report) ([]string, error) {
	return nil, nil
}

func (c *memController) Heartbeat(context.Context, dataplane.Heartbeat) (dataplane.HeartbeatReply, error) {
	return dataplane.HeartbeatReply{Known: true}, nil
}

// WatchCommands delivers commands sent on c.commands.
func (c *memController) WatchCommands(ctx context.Context, _, _ string, fn func(dataplane.Command)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case cmd := <-c.commands:
			fn(cmd)
		}
	}
}

func (c *memController) leased() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.leases)
}
