package tun

import (
	"errors"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func openIn(t *testing.T, c Config) (Device, Opened, error) {
	t.Helper()
	var (
		dev Device
		o   Opened
		err error
	)
	netnstest.Do(t, func(netns.NsHandle) { dev, o, err = OpenReport(c) })
	if dev != nil {
		t.Cleanup(func() { dev.Close() })
	}
	return dev, o, err
}

// TestAutoTakesOffload: this kernel supports offloads, so auto uses them
// and says so.
func TestAutoTakesOffload(t *testing.T) {
	dev, o, err := openIn(t, Config{Name: "t4o6a", Backend: BackendAuto, MTU: 1500})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if o.Backend != BackendOffload || !strings.Contains(o.Reason, "TUNSETOFFLOAD") {
		t.Fatalf("auto chose %+v, want offload with the reason", o)
	}
	if _, ok := dev.(*offloadDevice); !ok || dev.BatchSize() < 2 {
		t.Fatalf("auto opened %T (batch %d), want the offload device", dev, dev.BatchSize())
	}
}

// TestAutoFallsBack: a kernel that refuses offloads (stood in for) gets
// water, with the refusal as the reason; the name is free for it, and by
// name offload fails instead.
func TestAutoFallsBack(t *testing.T) {
	refuse := &noOffloadError{what: "TUNSETOFFLOAD (checksum, TSO4, TSO6)", err: unix.EINVAL}
	openOffloadFn = func(Config) (Device, error) { return nil, refuse }
	t.Cleanup(func() { openOffloadFn = openOffload })

	dev, o, err := openIn(t, Config{Name: "t4o6b", Backend: BackendAuto, MTU: 1500})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if o.Backend != BackendWater || !strings.Contains(o.Reason, "offload unavailable (TUNSETOFFLOAD") {
		t.Fatalf("auto chose %+v, want water with the refusal as reason", o)
	}
	if _, ok := dev.(*waterDevice); !ok || dev.Name() != "t4o6b" {
		t.Fatalf("auto opened %T %q, want water on t4o6b", dev, dev.Name())
	}
	if _, _, err := openIn(t, Config{Name: "t4o6c", Backend: BackendOffload}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("offload by name on a refusing kernel: %v, want the refusal", err)
	}
}

// TestAutoOtherErrors: a failure that has nothing to do with offloads is
// not papered over by water.
func TestAutoOtherErrors(t *testing.T) {
	busy := errors.New("open TUN: device or resource busy")
	openOffloadFn = func(Config) (Device, error) { return nil, busy }
	t.Cleanup(func() { openOffloadFn = openOffload })
	if _, _, err := openIn(t, Config{Name: "t4o6d", Backend: BackendAuto}); !errors.Is(err, busy) {
		t.Fatalf("auto: %v, want the offload backend's error", err)
	}
}

// TestOffloadReleasesName: the offload backend's descriptor is attached to
// the name; once closed, the name is free again (water takes it).
func TestOffloadReleasesName(t *testing.T) {
	netnstest.Do(t, func(netns.NsHandle) {
		d, err := openOffload(Config{Name: "t4o6e"})
		if err != nil {
			t.Errorf("offload: %v", err)
			return
		}
		d.Close()
		w, err := openWater(Config{Name: "t4o6e"})
		if err != nil {
			t.Errorf("water after offload closed: %v", err)
			return
		}
		w.Close()
	})
}
