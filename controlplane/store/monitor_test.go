package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// flakyStore fails its writes while fail is set, as a full disk would.
type flakyStore struct {
	store.Store
	fail   atomic.Bool
	probes atomic.Int64
}

var errDiskFull = fmt.Errorf("commit to state.db: write state.db: %w", syscall.ENOSPC)

func (f *flakyStore) err() error {
	if f.fail.Load() {
		return errDiskFull
	}
	return nil
}

func (f *flakyStore) Claim(ctx context.Context, l store.Lease) (store.Lease, bool, error) {
	if err := f.err(); err != nil {
		return store.Lease{}, false, err
	}
	return f.Store.Claim(ctx, l)
}

func (f *flakyStore) PutSettings(ctx context.Context, s store.Settings) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.PutSettings(ctx, s)
}

func (f *flakyStore) ReleaseMany(ctx context.Context, rs []store.Release, at time.Time) ([]bool, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Store.ReleaseMany(ctx, rs, at)
}

func (f *flakyStore) DeleteDataplane(ctx context.Context, id string) (bool, error) {
	if err := f.err(); err != nil {
		return false, err
	}
	return f.Store.DeleteDataplane(ctx, id)
}

func (f *flakyStore) Load(ctx context.Context) (store.State, error) {
	if err := f.err(); err != nil {
		return store.State{}, err
	}
	return f.Store.Load(ctx)
}

func (f *flakyStore) Probe(context.Context) error {
	f.probes.Add(1)
	return f.err()
}

func TestMonitorWriteHealth(t *testing.T) {
	var logs logBuffer
	clock := baseT0
	fs := &flakyStore{Store: store.NewMemory()}
	m := store.NewMonitor(fs, store.MonitorOptions{Logger: logs.logger(), ProbeEvery: -1, Now: func() time.Time { return clock }})
	defer m.Close()
	ctx := t.Context()
	lease := func(i int) store.Lease {
		return store.Lease{Addr: netip.AddrFrom4([4]byte{13, 8, 0, byte(i)}), Owner: store.Owner{Dataplane: "d", Session: string(rune('a' + i))}}
	}
	if _, _, err := m.Claim(ctx, lease(2)); err != nil || m.LastWriteErr() != nil {
		t.Fatalf("claim: %v, health %v", err, m.LastWriteErr())
	}
	// Refusals on the merits are no failures.
	if _, _, err := m.Claim(ctx, store.Lease{Addr: lease(2).Addr, Owner: store.Owner{Dataplane: "d", Session: "other"}}); !errors.Is(err, store.ErrTaken) {
		t.Fatal(err)
	}
	if _, _, err := m.Claim(ctx, store.Lease{Addr: lease(3).Addr}); !errors.Is(err, store.ErrInvalid) {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	m.Claim(cctx, lease(3))
	if m.LastWriteErr() != nil || m.Errors(store.OpClaim) != 0 {
		t.Fatalf("refusals counted: %v %d", m.LastWriteErr(), m.Errors(store.OpClaim))
	}

	fs.fail.Store(true)
	for i := range 5 {
		if _, _, err := m.Claim(ctx, lease(10+i)); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("claim on a full disk: %v", err)
		}
		clock = clock.Add(time.Second)
	}
	m.PutSettings(ctx, store.Settings{})
	var we *store.WriteError
	if err := m.LastWriteErr(); !errors.As(err, &we) || we.Op != store.OpPutSettings || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("health after failures: %v", err)
	}
	if m.Errors(store.OpClaim) != 5 || m.Errors(store.OpPutSettings) != 1 {
		t.Fatalf("errors counted: claim %d, put_settings %d", m.Errors(store.OpClaim), m.Errors(store.OpPutSettings))
	}
	// Logged at ERROR, throttled: one line for the first failure; the next
	// one after LogEvery (10s) says how many were left out.
	if n := strings.Count(logs.String(), "store call failed"); n != 1 {
		t.Fatalf("%d failure lines:\n%s", n, logs.String())
	}
	clock = clock.Add(10 * time.Second)
	m.Claim(ctx, lease(30))
	if !strings.Contains(logs.String(), "similar_failures_not_logged=5") {
		t.Fatalf("throttled log:\n%s", logs.String())
	}
	// A failed read is counted but does not make writes unhealthy again
	// once they work.
	fs.fail.Store(false)
	if err := m.PutSettings(ctx, store.Settings{}); err != nil || m.LastWriteErr() != nil {
		t.Fatalf("write after recovery: %v, health %v", err, m.LastWriteErr())
	}
	if !strings.Contains(logs.String(), "store writes succeed again") {
		t.Fatalf("recovery not logged:\n%s", logs.String())
	}
	fs.fail.Store(true)
	m.Load(ctx)
	fs.fail.Store(false)
	if m.Errors(store.OpLoad) != 1 || m.LastWriteErr() != nil {
		t.Fatalf("a failed read: %d load errors, health %v", m.Errors(store.OpLoad), m.LastWriteErr())
	}
}

// TestMonitorBatchWrites: a batch release and a registry deletion are
// writes like the others: counted when they fail, and they make the
// store's health.
func TestMonitorBatchWrites(t *testing.T) {
	fs := &flakyStore{Store: store.NewMemory()}
	m := store.NewMonitor(fs, store.MonitorOptions{ProbeEvery: -1})
	defer m.Close()
	ctx := t.Context()
	fs.fail.Store(true)
	if _, err := m.ReleaseMany(ctx, []store.Release{{Addr: netip.MustParseAddr("13.8.0.2")}}, baseT0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	if _, err := m.DeleteDataplane(ctx, "dp1"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	var we *store.WriteError
	if err := m.LastWriteErr(); !errors.As(err, &we) || we.Op != store.OpDeleteDataplane || we.Op.String() != "delete_dataplane" {
		t.Fatalf("health %v", err)
	}
	if m.Errors(store.OpReleaseMany) != 1 || m.Errors(store.OpDeleteDataplane) != 1 {
		t.Fatalf("errors: release_many %d, delete_dataplane %d", m.Errors(store.OpReleaseMany), m.Errors(store.OpDeleteDataplane))
	}
	fs.fail.Store(false)
	if _, err := m.ReleaseMany(ctx, nil, baseT0); err != nil || m.LastWriteErr() != nil {
		t.Fatalf("after recovery: %v, health %v", err, m.LastWriteErr())
	}
}

// TestMonitorProbes: with no client writing, the prober's writes bring the
// health back once the store works again, and stop then.
func TestMonitorProbes(t *testing.T) {
	fs := &flakyStore{Store: store.NewMemory()}
	m := store.NewMonitor(fs, store.MonitorOptions{ProbeEvery: 10 * time.Millisecond})
	defer m.Close()
	fs.fail.Store(true)
	m.PutSettings(t.Context(), store.Settings{})
	deadline := time.Now().Add(10 * time.Second)
	for fs.probes.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("no probes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if m.LastWriteErr() == nil || m.Errors(store.OpProbe) < 2 {
		t.Fatalf("failing probes: health %v, %d probe errors", m.LastWriteErr(), m.Errors(store.OpProbe))
	}
	fs.fail.Store(false)
	for m.LastWriteErr() != nil {
		if time.Now().After(deadline) {
			t.Fatal("health did not come back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	n := fs.probes.Load()
	time.Sleep(50 * time.Millisecond)
	if fs.probes.Load() > n+1 {
		t.Fatalf("still probing while healthy: %d -> %d", n, fs.probes.Load())
	}
}
