package dataplane_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/session"
	"github.com/fourover6/fourover6/dataplane/wire"
)

// syncBuffer is a log destination tests read while the data plane writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func logTo(buf *syncBuffer) func(*dataplane.Config) {
	return func(c *dataplane.Config) { c.Logger = slog.New(slog.NewTextHandler(buf, nil)) }
}

// TestStopTellsTheControllerOnce: on stop the sessions close and the
// controller hears one StopDataplane, not a release per session.
func TestStopTellsTheControllerOnce(t *testing.T) {
	h := start(t, nil)
	for range 5 {
		h.LeaseRouted(h.Dial())
	}
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	stops := h.Ctl.Stops()
	if len(stops) != 1 || stops[0].DataplaneID != "dp-test" || stops[0].InstanceID == "" {
		t.Fatalf("stops %+v, want one of this instance", stops)
	}
	if n := h.Ctl.Leased(); n != 0 {
		t.Fatalf("%d leases held after the stop", n)
	}
	if h.Ctl.Batches != 0 {
		t.Errorf("%d release batches sent besides the stop", h.Ctl.Batches)
	}
	if st := h.DP.Status(); st.ReleasesPending != 0 || st.ClosedBy["shutdown"] != 5 {
		t.Errorf("after the stop: %d releases pending, %d closed by shutdown", st.ReleasesPending, st.ClosedBy["shutdown"])
	}
}

// TestStopWithTheControllerDown: a controller that does not answer does
// not hold the stop up for longer than StopTimeout.
func TestStopWithTheControllerDown(t *testing.T) {
	h := start(t, func(c *dataplane.Config) { c.StopTimeout = 200 * time.Millisecond })
	h.LeaseRouted(h.Dial())
	h.Ctl.SetDown(true)
	start := time.Now()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("stop took %v with the controller down", took)
	}
	if len(h.Ctl.Stops()) != 0 {
		t.Fatal("a down controller heard the stop")
	}
}

// TestIDInUseAtStart: a registration refused for an id in use ends Run
// with the *IDInUseError, logged at ERROR with the live instance's address.
func TestIDInUseAtStart(t *testing.T) {
	var logs syncBuffer
	ctl := dataplanetest.NewMemController(253)
	ctl.RegisterErr = func(dataplane.Registration) error {
		return fmt.Errorf("register: %w", &dataplane.IDInUseError{DataplaneID: "dp-test",
			Live: dataplane.Instance{InstanceID: "other", ClientListen: "[fd00:46::1]:5678", APIAddress: "unix:///run/a.sock"}})
	}
	h := dataplanetest.StartFailing(t, ctl, logTo(&logs))
	var inUse *dataplane.IDInUseError
	if err := h.Err(); !errors.As(err, &inUse) {
		t.Fatalf("Run: %v, want an *IDInUseError", err)
	}
	if msg := inUse.Error(); !strings.Contains(msg, "another data plane with --id dp-test is running") ||
		!strings.Contains(msg, "[fd00:46::1]:5678") || !strings.Contains(msg, "give this one a different --id") {
		t.Errorf("message %q", msg)
	}
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "live_listen=[fd00:46::1]:5678") {
		t.Errorf("log:\n%s", l)
	}
	if len(ctl.Stops()) != 0 {
		t.Error("an instance that never registered said it stopped")
	}
}

// TestIDPendingRetried: while the controller waits to learn whether the
// previous instance of this id still runs, registration is retried (and
// logged as such) until the id is handed over; no start error.
func TestIDPendingRetried(t *testing.T) {
	var logs syncBuffer
	var calls atomic.Int32
	ctl := dataplanetest.NewMemController(253)
	ctl.RegisterErr = func(dataplane.Registration) error {
		if calls.Add(1) <= 2 {
			return fmt.Errorf("register: %w", &dataplane.IDPendingError{Registered: "old", Wait: 3 * time.Second, Msg: "waiting"})
		}
		return nil
	}
	h := dataplanetest.StartFailing(t, ctl, logTo(&logs))
	dataplanetest.Eventually(t, "registered after the wait", func() bool { return h.DP.Status().Registered })
	if n := calls.Load(); n < 3 {
		t.Fatalf("%d registrations, want the refused two and one more", n)
	}
	if l := logs.String(); !strings.Contains(l, "previous_instance=old") || strings.Contains(l, "level=ERROR") {
		t.Errorf("log:\n%s", l)
	}
}

// TestRefusedRegistrationIsAStartError: a registration the controller
// refuses (not for the id) is a *StartError: an operator must fix it.
func TestRefusedRegistrationIsAStartError(t *testing.T) {
	ctl := dataplanetest.NewMemController(253)
	ctl.RegisterErr = func(dataplane.Registration) error {
		return errors.New("register: controller said PermissionDenied: needs the dataplane role")
	}
	h := dataplanetest.StartFailing(t, ctl, nil)
	var se *dataplane.StartError
	if err := h.Err(); !errors.As(err, &se) {
		t.Fatalf("Run: %v, want a *StartError", err)
	}
}

// TestIDConflictDirective: told that another instance tried its id, the
// live data plane logs it at ERROR, naming the other, and serves on.
func TestIDConflictDirective(t *testing.T) {
	var logs syncBuffer
	h := start(t, logTo(&logs))
	c := h.Dial()
	h.LeaseRouted(c)
	h.Ctl.Commands <- dataplane.Directive{IDConflict: &dataplane.Instance{InstanceID: "second", ClientListen: "[fd00:47::1]:5678", APIAddress: "unix:///run/b.sock"}}
	eventually(t, "the conflict logged", func() bool {
		l := logs.String()
		return strings.Contains(l, "level=ERROR") && strings.Contains(l, "DATA PLANE ID IN USE") && strings.Contains(l, "other_listen=[fd00:47::1]:5678")
	})
	c.Write(wire.AddrRequest[:])
	c.NextOf(wire.TypeAddrResponse) // still served
	if h.DP.Ready() != nil {
		t.Fatalf("not ready after the conflict: %v", h.DP.Ready())
	}
}

// TestRegistersAgainWhenUnknown: a heartbeat answered "unknown" makes the
// data plane register again, once, and go on.
func TestRegistersAgainWhenUnknown(t *testing.T) {
	h := start(t, func(c *dataplane.Config) { c.HeartbeatInterval = 20 * time.Millisecond })
	h.Ctl.Set(func(c *dataplanetest.MemController) { c.Unknown = true })
	eventually(t, "a second registration", func() bool {
		n := 0
		h.Ctl.Set(func(c *dataplanetest.MemController) { n = c.Registrations })
		return n == 2
	})
	time.Sleep(100 * time.Millisecond)
	h.Ctl.Set(func(c *dataplanetest.MemController) {
		if c.Registrations != 2 {
			t.Errorf("%d registrations, want 2: registering again must not loop", c.Registrations)
		}
	})
	h.LeaseRouted(h.Dial())
}

// TestLosesTheIDOnReregistration: a data plane that must register again
// and finds another live instance holding its id stops with the
// *IDInUseError: its leases went to the other.
func TestLosesTheIDOnReregistration(t *testing.T) {
	h := start(t, func(c *dataplane.Config) { c.HeartbeatInterval = 20 * time.Millisecond })
	c := h.Dial()
	h.LeaseRouted(c)
	h.ExpectError()
	h.Ctl.Set(func(m *dataplanetest.MemController) {
		m.Unknown = true
		m.RegisterErr = func(dataplane.Registration) error {
			return &dataplane.IDInUseError{DataplaneID: "dp-test", Live: dataplane.Instance{InstanceID: "taker"}}
		}
	})
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the data plane goes on without its id")
	}
	if err := h.Err(); !errors.Is(err, dataplane.ErrIDInUse) {
		t.Fatalf("Run: %v", err)
	}
	c.ExpectClosed()
}

// TestLeaseLimitClosesTheClient: a 100 the controller refuses for the
// client's lease limit closes that connection, counted and logged.
func TestLeaseLimitClosesTheClient(t *testing.T) {
	var logs syncBuffer
	h := start(t, logTo(&logs))
	h.Ctl.Set(func(c *dataplanetest.MemController) {
		c.AllocateErr = fmt.Errorf("allocate: %w", &dataplane.LeaseLimitError{Limit: "prefix", Max: "4", Client: "fd00::/64", Msg: "at its limit"})
	})
	for range 3 {
		c := h.Dial()
		c.Write(wire.AddrRequest[:])
		c.ExpectClosed()
	}
	eventually(t, "the refusals counted", func() bool {
		st := h.DP.Status()
		return st.Refused["lease_limit"] == 3 && st.ClosedBy[session.CauseLeaseLimit.String()] == 3
	})
	if n := strings.Count(logs.String(), "limit=lease_limit"); n != 1 {
		t.Errorf("%d log lines for 3 refusals, want 1 (throttled)", n)
	}
}
