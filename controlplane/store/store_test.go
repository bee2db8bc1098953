package store_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/controlplane/store"
	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
	"github.com/fourover6/fourover6/controlplane/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	etcdtest.StopShared()
	os.Exit(code)
}

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Opener, bool) {
		return func() (store.Store, error) { return store.NewMemory(), nil }, false
	})
}

func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Opener, bool) {
		path := filepath.Join(t.TempDir(), "sub", "dir", "state.db") // directories are created
		return func() (store.Store, error) { return store.OpenBolt(path) }, true
	})
}

func TestEtcd(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Opener, bool) {
		ep, prefix := etcdtest.Shared(t)
		return func() (store.Store, error) {
			return store.OpenEtcd(context.Background(), store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
		}, true
	})
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := store.OpenBolt(path); err == nil || !strings.Contains(err.Error(), "another controller") {
		t.Fatalf("second open: %v", err)
	}
	if s.String() != "bbolt:"+path {
		t.Fatalf("String() = %q", s.String())
	}
}

func TestParseEtcdURL(t *testing.T) {
	c, err := store.ParseEtcdURL("etcd://10.0.0.1:2379,10.0.0.2:2379/my/state")
	if err != nil || len(c.Endpoints) != 2 || c.Endpoints[1] != "http://10.0.0.2:2379" || c.Prefix != "/my/state/" {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"http://x:1", "etcd://", "etcd://host", "etcd://:2379"} {
		if _, err := store.ParseEtcdURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEtcdFence(t *testing.T) {
	ep, prefix := etcdtest.Shared(t)
	ctx := context.Background()
	s, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: []string{ep}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := s.Client().Put(ctx, prefix+"election/me", "c1")
	if err != nil {
		t.Fatal(err)
	}
	s.SetFence(prefix+"election/me", resp.Header.Revision)
	l := store.Lease{Addr: netipAddr("13.8.0.2"), Owner: store.Owner{Dataplane: "dp", Session: "s"}}
	if _, _, err := s.Claim(ctx, l); err != nil {
		t.Fatalf("claim while holding the fence: %v", err)
	}
	// Another controller's election key replaces ours: writes stop.
	if _, err := s.Client().Delete(ctx, prefix+"election/me"); err != nil {
		t.Fatal(err)
	}
	l2 := store.Lease{Addr: netipAddr("13.8.0.3"), Owner: store.Owner{Dataplane: "dp", Session: "s2"}}
	if _, _, err := s.Claim(ctx, l2); err != store.ErrFenced {
		t.Fatalf("claim after losing the fence: %v, want ErrFenced", err)
	}
	if _, err := s.Release(ctx, l.Addr, l.Owner, l.LeasedAt); err != store.ErrFenced {
		t.Fatalf("release after losing the fence: %v", err)
	}
	if err := s.PutSettings(ctx, store.Settings{}); err != store.ErrFenced {
		t.Fatalf("put after losing the fence: %v", err)
	}
	s.SetFence("", 0)
	if _, _, err := s.Claim(ctx, l2); err != nil {
		t.Fatalf("claim without a fence: %v", err)
	}
}

func netipAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
