package dataplane_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// freezeWith freezes h's data plane once the session's reader has taken
// in bytes of a message it could not finish (In), retrying until it has.
func freezeWith(t *testing.T, dp *dataplane.Dataplane, wantIn int) *dataplane.Frozen {
	t.Helper()
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		f, err := dp.Freeze(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Freeze: %v", err)
		}
		if len(f.State.Sessions) == 1 && len(f.State.Sessions[0].In) == wantIn {
			return f
		}
		if try == 100 {
			t.Fatalf("the session never held the %d bytes of half a message: %+v", wantIn, f.State.Sessions)
		}
		f.Thaw(true)
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHandoffInProcess hands a data plane with a leased client over to a
// second one in the same process (the descriptors pass through files as
// they would through SCM_RIGHTS): half a 102 read before the freeze is
// finished after it, a packet the TUN held meanwhile reaches the client,
// the controller hears no release and no stop (the address is never free,
// so never someone else's), and the successor carries on the instance.
func TestHandoffInProcess(t *testing.T) {
	mt := dataplanetest.NewMemTUN(4)
	h := dataplanetest.Start(t, mt, nil)
	h.ExpectError()
	c := h.Dial()
	addr := h.LeaseRouted(c)
	before := h.DP.Sessions()[0]
	registrations := func() (n int) {
		h.Ctl.Set(func(c *dataplanetest.MemController) { n = c.Registrations })
		return n
	}
	regs := registrations()

	msg := wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(addr, dataplanetest.Pool.Gateway, 7, 1, []byte("across"), false))
	c.Write(msg[:7])
	f := freezeWith(t, h.DP, 7)
	st := f.State
	if st.InstanceID == "" || st.Sessions[0].ID != before.ID || st.Sessions[0].Lease.Addr != addr {
		t.Fatalf("hand-off state: %+v", st)
	}
	// A packet for the client while nobody reads the TUN: the kernel
	// keeps it for the successor.
	mt.Inject(packet.BuildICMPEcho(dataplanetest.Pool.Gateway, addr, 7, 2, []byte("kept"), true))

	file, release, err := f.File(0)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(file)
	release()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dp2, err := dataplane.Restore(dataplane.Config{
		ID: "dp-test", Version: "second", Listener: ln, TUN: mt, ControlPlane: h.Ctl,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		KeepaliveInterval: 20 * time.Second, KeepaliveTimeout: 60 * time.Second, ReportInterval: time.Hour,
	}, &st, []net.Conn{conn})
	if err != nil {
		t.Fatal(err)
	}
	f.Thaw(false)
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first data plane did not end after the hand-off")
	}
	if err := h.Err(); !errors.Is(err, dataplane.ErrHandedOver) {
		t.Fatalf("first Run: %v, want ErrHandedOver", err)
	}
	if n := len(h.DP.Sessions()); n != 0 {
		t.Errorf("the first data plane still has %d sessions", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dp2.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second Run: %v", err)
		}
	}()

	c.Write(msg[7:])
	if p := h.FromTUN(); !packet.Src(p).IsValid() || packet.Src(p) != addr {
		t.Fatalf("the 102 finished after the hand-off reached the TUN as %x", p)
	}
	if m := c.NextOf(wire.TypeNetResponse); packet.Dst(m.Data) != addr {
		t.Fatalf("103 for %s", packet.Dst(m.Data))
	}
	dataplanetest.Eventually(t, "the successor to register its instance again", func() bool { return registrations() > regs })
	if got := dp2.Status(); got.InstanceID != st.InstanceID || got.Handoffs != 1 || got.Sessions != 1 || got.LeasedSessions != 1 {
		t.Errorf("successor status: %+v", got)
	}
	if s := dp2.Sessions(); len(s) != 1 || s[0].ID != before.ID || s[0].Addr != addr || s[0].Traffic.PacketsFromClient < before.Traffic.PacketsFromClient {
		t.Errorf("successor sessions %+v, before %+v", s, before)
	}
	if n := h.Ctl.Leased(); n != 1 {
		t.Errorf("controller holds %d leases, want 1", n)
	}
	if s := h.Ctl.Stops(); len(s) != 0 {
		t.Errorf("the hand-off stopped the instance at the controller: %+v", s)
	}
	select {
	case r := <-h.Ctl.Released:
		t.Fatalf("released during the hand-off: %+v", r)
	default:
	}
	// The client leaves: the successor releases its lease.
	c.Conn.Close()
	select {
	case r := <-h.Ctl.Released:
		if r.SessionID != before.ID || r.Addr != addr {
			t.Errorf("release %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no release after the client left the successor")
	}
}

// TestFreezeResume: a freeze that is thawed (the successor failed) leaves
// the data plane as it was: the half message is finished, traffic flows,
// and a client that leaves while frozen has its lease released only once
// the freeze ends, never while a successor might hold its session.
func TestFreezeResume(t *testing.T) {
	mt := dataplanetest.NewMemTUN(4)
	h := dataplanetest.Start(t, mt, nil)
	c1, c2 := h.Dial(), h.Dial()
	a1, a2 := h.LeaseRouted(c1), h.LeaseRouted(c2)
	msg := wire.AppendMsg(nil, wire.TypeNetRequest, packet.BuildICMPEcho(a1, dataplanetest.Pool.Gateway, 1, 1, []byte("resume"), false))
	c1.Write(msg[:9])
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	f, err := h.DP.Freeze(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.DP.Freeze(context.Background()); err == nil {
		t.Error("a second Freeze during the first succeeded")
	}
	c2.Conn.Close()
	time.Sleep(100 * time.Millisecond)
	select {
	case r := <-h.Ctl.Released:
		t.Fatalf("released while frozen: %+v", r)
	default:
	}
	if h.Ctl.Leased() != 2 {
		t.Fatalf("leases while frozen: %d", h.Ctl.Leased())
	}
	f.Thaw(true)
	select {
	case r := <-h.Ctl.Released:
		if r.Addr != a2 {
			t.Errorf("released %s, want %s", r.Addr, a2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client that left while frozen was never released")
	}
	c1.Write(msg[9:])
	if p := h.FromTUN(); packet.Src(p) != a1 {
		t.Fatalf("TUN got %x", p)
	}
	mt.Inject(packet.BuildICMPEcho(dataplanetest.Pool.Gateway, a1, 1, 1, []byte("back"), true))
	if m := c1.NextOf(wire.TypeNetResponse); packet.Dst(m.Data) != a1 {
		t.Fatalf("103 for %s", packet.Dst(m.Data))
	}
	// A new client is accepted again.
	if a := h.LeaseRouted(h.Dial()); !a.IsValid() || a == a1 {
		t.Errorf("new client after the resume got %s", a)
	}
	_ = netip.Addr{}
}
