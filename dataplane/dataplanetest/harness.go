package dataplanetest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// failAfter bounds every wait in the harness; reaching it fails the test.
const failAfter = 10 * time.Second

// Harness is a running data plane on a loopback listener with a MemTUN
// and a MemController; it stops at the end of the test.
type Harness struct {
	T    testing.TB
	DP   *dataplane.Dataplane
	TUN  *MemTUN
	Ctl  *MemController
	Addr string // where clients connect
	// ClientIP is the address clients connect from, as the data plane
	// sees it: ::1, or 127.0.0.1 where there is no IPv6 loopback.
	ClientIP string

	cancel    context.CancelFunc
	done      chan struct{}
	err       error
	expectErr bool
}

// Stop stops the data plane (as a signal does) and returns Run's error.
func (h *Harness) Stop() error {
	h.cancel()
	<-h.done
	return h.err
}

// ExpectError tells the harness that Run is to end with an error.
func (h *Harness) ExpectError() { h.expectErr = true }

// Done is closed when Run has returned.
func (h *Harness) Done() <-chan struct{} { return h.done }

// Err is Run's error, once Done.
func (h *Harness) Err() error {
	<-h.done
	return h.err
}

// Start runs a data plane over tun (nil: a MemTUN reading four packets at
// a time). mod may change the
// configuration before it starts.
func Start(t testing.TB, tun *MemTUN, mod func(*dataplane.Config)) *Harness {
	t.Helper()
	return start(t, tun, nil, mod, false)
}

// StartFailing is Start for a data plane expected to stop on its own with
// an error (Err): it does not wait for it to register, and ctl (nil: a
// fresh MemController) is set up before Run starts.
func StartFailing(t testing.TB, ctl *MemController, mod func(*dataplane.Config)) *Harness {
	t.Helper()
	return start(t, nil, ctl, mod, true)
}

func start(t testing.TB, tun *MemTUN, ctl *MemController, mod func(*dataplane.Config), expectErr bool) *Harness {
	t.Helper()
	clientIP := "::1" // clients are IPv6, as in the protocol
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		clientIP = "127.0.0.1"
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	if tun == nil {
		tun = NewMemTUN(4)
	}
	if ctl == nil {
		ctl = NewMemController(253)
	}
	h := &Harness{T: t, TUN: tun, Ctl: ctl, Addr: ln.Addr().String(), ClientIP: clientIP, expectErr: expectErr}
	cfg := dataplane.Config{
		ID: "dp-test", Listener: ln, TUN: h.TUN, ControlPlane: h.Ctl,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		KeepaliveInterval: 20 * time.Second, KeepaliveTimeout: 60 * time.Second,
		ReportInterval: time.Hour,
	}
	if mod != nil {
		mod(&cfg)
	}
	if h.DP, err = dataplane.New(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.done = make(chan struct{})
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.err = h.DP.Run(ctx)
	}()
	t.Cleanup(func() {
		if err := h.Stop(); err != nil && !h.expectErr {
			t.Errorf("Run: %v", err)
		}
	})
	if !h.expectErr {
		Eventually(t, "the data plane to register", func() bool { return h.DP.Status().Registered })
	}
	return h
}

// Client is a raw lab-protocol connection to the harness.
type Client struct {
	t    testing.TB
	Conn net.Conn
	Dec  *wire.Decoder
}

// Dial connects a client.
func (h *Harness) Dial() *Client {
	h.T.Helper()
	c, err := net.Dial("tcp", h.Addr)
	if err != nil {
		h.T.Fatal(err)
	}
	h.T.Cleanup(func() { c.Close() })
	return &Client{t: h.T, Conn: c, Dec: wire.NewDecoder(c, 0)}
}

// Write sends bytes, failing the test on error.
func (c *Client) Write(b []byte) {
	c.t.Helper()
	if _, err := c.Conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// Next reads the next message of any type.
func (c *Client) Next() wire.Msg {
	c.t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(failAfter))
	m, err := c.Dec.Next()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// NextOf returns the next message of type t, skipping keepalives.
func (c *Client) NextOf(t wire.Type) wire.Msg {
	c.t.Helper()
	for {
		m := c.Next()
		if m.Type == t {
			return m
		}
		if m.Type != wire.TypeKeepalive {
			c.t.Fatalf("got %v, want %v", m.Type, t)
		}
	}
}

// Lease sends a 100 and returns the 101, which must be the first message.
func (c *Client) Lease() wire.AddrResponse {
	c.t.Helper()
	c.Write(wire.AddrRequest[:])
	m := c.Next()
	if m.Type != wire.TypeAddrResponse {
		c.t.Fatalf("first message is %v, want 101", m.Type)
	}
	r, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

// LeaseRouted leases and makes sure the data plane routes the address: the
// route goes in right after the 101 is queued, on the session's reader
// goroutine, so once a later 102 reached the TUN the route is there.
func (h *Harness) LeaseRouted(c *Client) netip.Addr {
	h.T.Helper()
	a := c.Lease().Addr
	c.Write(wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(a, Pool.Gateway, 1, 0, []byte("sync"), false)))
	select {
	case <-h.TUN.Written:
	case <-time.After(failAfter):
		h.T.Fatal("sync packet never reached the TUN")
	}
	return a
}

// ExpectClosed waits for the server to close the connection.
func (c *Client) ExpectClosed() {
	c.t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(failAfter))
	for {
		_, err := c.Dec.Next()
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) || errors.Is(err, wire.ErrTruncated) || errors.Is(err, syscall.ECONNRESET) {
			return
		}
		c.t.Fatalf("connection not closed by server: %v", err)
	}
}

// Eventually polls f until it holds, failing the test after a while.
func Eventually(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(failAfter)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// FromTUN returns the next packet the data plane wrote to the TUN.
func (h *Harness) FromTUN() []byte {
	h.T.Helper()
	select {
	case p := <-h.TUN.Written:
		return p
	case <-time.After(failAfter):
		h.T.Fatal("nothing reached the TUN")
		return nil
	}
}
