package tun_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/tun"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/vishvananda/netns"
)

// TestWaterEcho creates a real TUN in a fresh namespace, writes an ICMP echo
// request to the interface's own address and reads the kernel's reply.
func TestWaterEcho(t *testing.T) { testEcho(t, tun.BackendWater) }

func TestOffloadEcho(t *testing.T) { testEcho(t, tun.BackendOffload) }

func testEcho(t *testing.T, backend tun.Backend) {
	var dev tun.Device
	gw := netip.MustParseAddr("13.8.0.1")
	client := netip.MustParseAddr("13.8.0.2")
	netnstest.Do(t, func(netns.NsHandle) {
		var err error
		dev, err = tun.Open(tun.Config{Name: "t4o6", Backend: backend, MTU: 1500})
		if err != nil {
			t.Errorf("open: %v", err)
			return
		}
		if err := netcfg.Configure(netcfg.LinkConfig{Name: dev.Name(), MTU: 1500, Addr: netip.PrefixFrom(gw, 24)}); err != nil {
			t.Errorf("configure: %v", err)
		}
		// Configuring twice is harmless (restart of a daemon on a persisted link).
		if err := netcfg.Configure(netcfg.LinkConfig{Name: dev.Name(), MTU: 1500, Addr: netip.PrefixFrom(gw, 24)}); err != nil {
			t.Errorf("configure again: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	defer dev.Close()
	if dev.Name() != "t4o6" {
		t.Fatalf("name %q", dev.Name())
	}
	const off = 5
	req := packet.BuildICMPEcho(client, gw, 7, 1, []byte("ping"), false)
	w := dev.NewWriter()
	if err := w.WritePacket(req); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("write: %v", err)
	}
	bs := max(dev.BatchSize(), 1)
	if backend == tun.BackendOffload && bs < 2 {
		t.Fatalf("offload backend batch size %d", bs)
	}
	bufs := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, off+1500)
	}
	sizes := make([]int, bs)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := dev.Read(bufs, sizes, off)
		if err != nil || n < 1 {
			t.Fatalf("read: %d %v", n, err)
		}
		p := bufs[0][off : off+sizes[0]]
		if _, prob := packet.CheckIPv4(p); prob != packet.OK {
			continue // e.g. IPv6 noise
		}
		if packet.Src(p) == gw && packet.Dst(p) == client && p[9] == 1 && p[20] == 0 {
			return // echo reply
		}
	}
	t.Fatal("no echo reply from the kernel")
}

func TestCloseUnblocksRead(t *testing.T) {
	var dev tun.Device
	netnstest.Do(t, func(netns.NsHandle) {
		var err error
		if dev, err = tun.Open(tun.Config{Name: "t4o6c"}); err != nil {
			t.Errorf("open: %v", err)
		}
	})
	if dev == nil {
		return
	}
	done := make(chan error)
	go func() {
		_, err := dev.Read([][]byte{make([]byte, 1600)}, []int{0}, 0)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	dev.Close()
	select {
	case err := <-done:
		if !tun.IsClosed(err) {
			t.Fatalf("read after close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

func TestUnknownBackend(t *testing.T) {
	if _, err := tun.Open(tun.Config{Backend: "nope"}); err == nil {
		t.Fatal("unknown backend accepted")
	}
}
