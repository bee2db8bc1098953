package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
)

// stores opens an empty store of each kind for t.
var stores = []struct {
	name string
	open func(t *testing.T) store.Store
}{
	{"bbolt", func(t *testing.T) store.Store {
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"etcd", func(t *testing.T) store.Store {
		ep, prefix := etcdtest.Shared(t)
		s, err := store.OpenEtcd(context.Background(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"memory", func(t *testing.T) store.Store { return store.NewMemory() }},
}

// fill writes a state of every kind of record into s.
func fill(t *testing.T, s store.Store, n int) {
	t.Helper()
	ctx := t.Context()
	for i := range n {
		l := store.Lease{
			Addr:       netip.AddrFrom4([4]byte{13, 8, byte((i + 2) >> 8), byte(i + 2)}),
			Owner:      store.Owner{Dataplane: fmt.Sprintf("dp%d", i%3), Session: fmt.Sprintf("s/%d ü", i)},
			InstanceID: "inst",
			ClientIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:46::%x", i+2)),
			ClientPort: uint16(1000 + i),
			LeasedAt:   baseT0.Add(time.Duration(i) * time.Millisecond),
			Sticky:     i%5 == 1,
		}
		if _, _, err := s.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n / 4 {
		if _, err := s.Release(ctx, netip.AddrFrom4([4]byte{13, 8, byte((i + 2) >> 8), byte(i + 2)}),
			store.Owner{Dataplane: fmt.Sprintf("dp%d", i%3), Session: fmt.Sprintf("s/%d ü", i)}, baseT0.Add(time.Hour+time.Duration(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []string{"fd00:46::99/128", "fd00:47::/64"} {
		if _, err := s.PutReservation(ctx, store.Reservation{Client: netip.MustParsePrefix(c), Addr: netip.AddrFrom4([4]byte{13, 8, 3, byte(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutSettings(ctx, store.Settings{
		DNS:        []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")},
		RangeFirst: netip.MustParseAddr("13.8.0.2"), RangeLast: netip.MustParseAddr("13.8.3.250"),
	}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []store.Dataplane{{ID: "dp0", InstanceID: "a", Version: "v1", ClientListen: "[::]:5678", RegisteredAt: baseT0},
		{ID: "dp/1 odd", Draining: true, APIAddress: "unix:///run/x.sock", RegisteredAt: baseT0}} {
		if err := s.PutDataplane(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

// sameState compares two loaded states field by field.
func sameState(t *testing.T, got, want store.State) {
	t.Helper()
	if store.Summarize(got) != store.Summarize(want) {
		t.Fatalf("state holds %v, want %v", store.Summarize(got), store.Summarize(want))
	}
	for i, l := range want.Leases {
		g := got.Leases[i]
		if g.Addr != l.Addr || g.Owner != l.Owner || g.InstanceID != l.InstanceID || g.ClientIPv6 != l.ClientIPv6 ||
			g.ClientPort != l.ClientPort || !g.LeasedAt.Equal(l.LeasedAt) || g.Sticky != l.Sticky {
			t.Fatalf("lease %d: %+v, want %+v", i, g, l)
		}
	}
	for a, ts := range want.Released {
		if !got.Released[a].Equal(ts) {
			t.Fatalf("release time of %s: %v, want %v", a, got.Released[a], ts)
		}
	}
	if len(want.Holders) == 0 || fmt.Sprint(got.Holders) != fmt.Sprint(want.Holders) {
		t.Fatalf("last holders %v, want %v (not empty)", got.Holders, want.Holders)
	}
	if fmt.Sprint(got.Reservations) != fmt.Sprint(want.Reservations) || fmt.Sprint(got.Settings) != fmt.Sprint(want.Settings) {
		t.Fatalf("reservations %v settings %+v, want %v %+v", got.Reservations, got.Settings, want.Reservations, want.Settings)
	}
	for i, d := range want.Dataplanes {
		g := got.Dataplanes[i]
		if g.ID != d.ID || g.InstanceID != d.InstanceID || g.Version != d.Version || g.ClientListen != d.ClientListen ||
			g.APIAddress != d.APIAddress || g.Draining != d.Draining || !g.RegisteredAt.Equal(d.RegisteredAt) {
			t.Fatalf("data plane %d: %+v, want %+v", i, g, d)
		}
	}
}

func load(t *testing.T, s store.Store) store.State {
	t.Helper()
	st, err := s.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func backupTo(t *testing.T, s store.Store, path string) {
	t.Helper()
	var buf bytes.Buffer
	n, err := s.(store.Backuper).Backup(t.Context(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Fatalf("Backup says %d bytes, wrote %d", n, buf.Len())
	}
	mustWrite(t, path, buf.Bytes())
}

// TestBackupRestoreAcrossStores: a backup of each store restores into each
// store with every lease, release time, reservation, setting and data
// plane; the restored store works (claims, idempotent per owner).
func TestBackupRestoreAcrossStores(t *testing.T) {
	for _, from := range stores {
		for _, to := range stores {
			t.Run(from.name+" to "+to.name, func(t *testing.T) {
				src := from.open(t)
				fill(t, src, 300)
				want := load(t, src)
				file := filepath.Join(t.TempDir(), "backup.db")
				backupTo(t, src, file)

				snap, err := store.ReadSnapshot(file, nil)
				if err != nil {
					t.Fatal(err)
				}
				sameState(t, snap.State, want)
				dst := to.open(t)
				res, err := store.Restore(t.Context(), dst, snap, false, "")
				if err != nil || res.Skipped || !res.Replaced.Empty() || res.Restored != store.Summarize(want) {
					t.Fatalf("Restore = %+v, %v", res, err)
				}
				sameState(t, load(t, dst), want)
				// The restored store is a working store: the owner index
				// came along.
				held, existing, err := dst.Claim(t.Context(), store.Lease{Addr: netip.MustParseAddr("13.8.2.2"), Owner: want.Leases[0].Owner})
				if err != nil || !existing || held.Addr != want.Leases[0].Addr {
					t.Fatalf("claim by a restored owner: %+v %v %v", held, existing, err)
				}
				// Again with the same backup: recognized, nothing written.
				if res, err := store.Restore(t.Context(), dst, snap, false, ""); err != nil || !res.Skipped {
					t.Fatalf("second restore = %+v, %v", res, err)
				}
			})
		}
	}
}

// TestRestoreRefusesToReplace: a store holding state is not restored into
// unless asked; then its state is saved first, to a new file.
func TestRestoreRefusesToReplace(t *testing.T) {
	for _, kind := range stores {
		t.Run(kind.name, func(t *testing.T) {
			src := store.NewMemory()
			fill(t, src, 10)
			file := filepath.Join(t.TempDir(), "backup.db")
			backupTo(t, src, file)
			snap, err := store.ReadSnapshot(file, nil)
			if err != nil {
				t.Fatal(err)
			}
			dst := kind.open(t)
			if err := dst.PutDataplane(t.Context(), store.Dataplane{ID: "live"}); err != nil {
				t.Fatal(err)
			}
			_, err = store.Restore(t.Context(), dst, snap, false, "")
			if !errors.Is(err, store.ErrHoldsState) || !strings.Contains(err.Error(), "1 data planes") {
				t.Fatalf("restore over live state: %v", err)
			}
			if st := load(t, dst); len(st.Leases) != 0 || len(st.Dataplanes) != 1 {
				t.Fatalf("refused restore changed the store: %+v", store.Summarize(st))
			}
			saved := filepath.Join(t.TempDir(), "replaced.db")
			mustWrite(t, saved, []byte("do not overwrite"))
			if _, err := store.Restore(t.Context(), dst, snap, true, saved); err == nil {
				t.Fatal("restore overwrote an existing file with the replaced state")
			}
			os.Remove(saved)
			res, err := store.Restore(t.Context(), dst, snap, true, saved)
			if err != nil || res.SavedTo != saved || res.Replaced.Dataplanes != 1 {
				t.Fatalf("replace = %+v, %v", res, err)
			}
			sameState(t, load(t, dst), snap.State)
			old, err := store.ReadSnapshot(saved, nil)
			if err != nil || len(old.State.Dataplanes) != 1 || old.State.Dataplanes[0].ID != "live" {
				t.Fatalf("saved state: %+v %v", old.State, err)
			}
		})
	}
}

// TestEtcdInterruptedRestore: while a restore's marker is there, Load
// refuses; the same restore runs again without --restore-replace.
func TestEtcdInterruptedRestore(t *testing.T) {
	ep, prefix := etcdtest.Shared(t)
	e, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	src := store.NewMemory()
	fill(t, src, 20)
	file := filepath.Join(t.TempDir(), "backup.db")
	backupTo(t, src, file)
	snap, err := store.ReadSnapshot(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client().Put(t.Context(), prefix+"meta/restoring", snap.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client().Put(t.Context(), prefix+"leases/13.8.9.9", `{"addr":"13.8.9.9","dataplane":"half","session":"written"}`, clientv3.WithPrevKV()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Load(t.Context()); !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Load during a restore: %v", err)
	}
	other := snap
	other.ID = "another"
	if _, err := store.Restore(t.Context(), e, other, false, ""); !errors.Is(err, store.ErrHoldsState) {
		t.Fatalf("restore of another backup over an interrupted one: %v", err)
	}
	if _, err := store.Restore(t.Context(), e, snap, false, ""); err != nil {
		t.Fatal(err)
	}
	sameState(t, load(t, e), snap.State)
}

// TestBoltBackupIsAStateFile: a bbolt backup opens as --state.
func TestBoltBackupIsAStateFile(t *testing.T) {
	s, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fill(t, s, 50)
	file := filepath.Join(t.TempDir(), "backup.db")
	backupTo(t, s, file)
	b, err := store.OpenBolt(file)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sameState(t, load(t, b), load(t, s))
}

// TestReadSnapshotRefusesDamage: a damaged backup is refused like a
// damaged state file, and a file that is not a backup as well.
func TestReadSnapshotRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	for _, c := range corruptions() {
		if c.want != refused {
			continue
		}
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".db")
		c.make(t, path)
		var se *store.StateError
		if _, err := store.ReadSnapshot(path, nil); !errors.As(err, &se) {
			t.Errorf("%s: ReadSnapshot = %v", c.name, err)
		}
	}
	if _, err := store.ReadSnapshot(filepath.Join(dir, "missing.db"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing backup: %v", err)
	}
}

// TestEtcdReplaceDamaged: a damaged etcd state is only replaced with
// replace, and saved as it was first.
func TestEtcdReplaceDamaged(t *testing.T) {
	ep, prefix := etcdtest.Shared(t)
	e, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Client().Put(t.Context(), prefix+"leases/13.8.0.7", `{"addr":`); err != nil {
		t.Fatal(err)
	}
	src := store.NewMemory()
	fill(t, src, 5)
	file := filepath.Join(t.TempDir(), "backup.db")
	backupTo(t, src, file)
	snap, err := store.ReadSnapshot(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Restore(t.Context(), e, snap, false, ""); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("restore over a damaged state without replace: %v", err)
	}
	saved := filepath.Join(t.TempDir(), "replaced")
	res, err := store.Restore(t.Context(), store.NewMonitor(e, store.MonitorOptions{}), snap, true, saved)
	if err != nil || !res.ReplacedDamaged || res.SavedTo != saved {
		t.Fatalf("replace: %+v %v", res, err)
	}
	if b, _ := os.ReadFile(saved); !strings.Contains(string(b), `"key":"`+prefix+`leases/13.8.0.7","value":"{\"addr\":"`) {
		t.Fatalf("saved:\n%s", b)
	}
	sameState(t, load(t, e), snap.State)
}
