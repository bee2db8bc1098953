package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

func TestStateFlags(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--fresh-state", "--store", "etcd://127.0.0.1:2379"}, "--fresh-state is for the bbolt"},
		{[]string{"--restore-replace"}, "--restore-replace only goes with --restore"},
		{[]string{"--restore", filepath.Join(dir, "missing.db")}, "no such file"},
		{[]string{"--restore", dir}, "is a directory"},
	}
	for _, c := range cases {
		var out, errb lockedBuffer
		if code := run(t.Context(), append(c.args, "--state", filepath.Join(dir, "s.db")), &out, &errb); code != exitUsage || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errb.String(), exitUsage, c.want)
		}
	}
}

// runFor runs the controller with args until it has started (its socket
// answers), then stops it; it returns the exit code and the log. A
// controller that exits on its own returns at once.
func runFor(t *testing.T, args ...string) (int, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "unix://" + sock, "--dns", "192.0.2.53", "--resolv-conf", "/nonexistent"}, args...), &out, &errb)
	}()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case code := <-done:
			return code, errb.String()
		case <-deadline:
			t.Fatalf("controller neither started nor exited:\n%s", errb.String())
		case <-time.After(10 * time.Millisecond):
		}
		if _, err := os.Stat(sock); err == nil && strings.Contains(errb.String(), "controller started") {
			cancel()
			return <-done, errb.String()
		}
	}
}

// TestRefusedState: an unusable --state file is exit code 3 with a message
// naming the file and what to do; --fresh-state moves it aside and starts.
func TestRefusedState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.db")
	if err := os.WriteFile(state, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, logs := runFor(t, "--state", state)
	if code != exitState {
		t.Fatalf("exit %d, want %d:\n%s", code, exitState, logs)
	}
	for _, want := range []string{state + " is not a 4over6-controller state file: it is empty", "--fresh-state", "--restore BACKUP"} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "goroutine ") {
		t.Fatalf("a stack trace:\n%s", logs)
	}
	code, logs = runFor(t, "--state", state, "--fresh-state")
	if code != exitOK || !strings.Contains(logs, "moved it aside") {
		t.Fatalf("--fresh-state: exit %d:\n%s", code, logs)
	}
	matches, _ := filepath.Glob(state + ".broken-*")
	if len(matches) != 1 {
		t.Fatalf("moved aside: %v", matches)
	}
	// Now the file is usable: --fresh-state leaves it alone.
	code, logs = runFor(t, "--state", state, "--fresh-state")
	if matches, _ := filepath.Glob(state + ".broken-*"); code != exitOK || len(matches) != 1 {
		t.Fatalf("--fresh-state on a good file: exit %d, %v:\n%s", code, matches, logs)
	}
}

// TestRestore: --restore fills an empty store, does nothing the second
// time, and refuses to replace other state without --restore-replace.
func TestRestore(t *testing.T) {
	dir := t.TempDir()
	backup := writeBackup(t, filepath.Join(dir, "backup.db"), "dp-from-backup")
	state := filepath.Join(dir, "state.db")

	code, logs := runFor(t, "--state", state, "--restore", backup)
	if code != exitOK || !strings.Contains(logs, "state restored from a backup") || !strings.Contains(logs, "1 data planes") {
		t.Fatalf("restore: exit %d:\n%s", code, logs)
	}
	code, logs = runFor(t, "--state", state, "--restore", backup)
	if code != exitOK || !strings.Contains(logs, "restored from this backup before") {
		t.Fatalf("second restore: exit %d:\n%s", code, logs)
	}
	other := writeBackup(t, filepath.Join(dir, "other.db"), "dp-other")
	code, logs = runFor(t, "--state", state, "--restore", other)
	if code != exitState || !strings.Contains(logs, "already holds state") || !strings.Contains(logs, "--restore-replace") {
		t.Fatalf("restore over state: exit %d:\n%s", code, logs)
	}
	code, logs = runFor(t, "--state", state, "--restore", other, "--restore-replace")
	if code != exitOK || !strings.Contains(logs, "replaced_saved_to="+state+".replaced-") {
		t.Fatalf("--restore-replace: exit %d:\n%s", code, logs)
	}
	s, err := store.OpenBolt(state)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load(t.Context())
	if err != nil || len(st.Dataplanes) != 1 || st.Dataplanes[0].ID != "dp-other" {
		t.Fatalf("state after --restore-replace: %+v %v", st.Dataplanes, err)
	}
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("not a backup"), 0o600)
	if code, logs = runFor(t, "--state", filepath.Join(dir, "new.db"), "--restore", bad); code != exitState || !strings.Contains(logs, "take another one") {
		t.Fatalf("a bad backup: exit %d:\n%s", code, logs)
	}
}

// writeBackup writes a backup holding one data plane and a lease.
func writeBackup(t *testing.T, path, dp string) string {
	t.Helper()
	m := store.NewMemory()
	m.PutDataplane(t.Context(), store.Dataplane{ID: dp})
	m.Claim(t.Context(), store.Lease{Addr: netip.MustParseAddr("13.8.0.9"), Owner: store.Owner{Dataplane: dp, Session: "s1"}})
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := m.Backup(t.Context(), f); err != nil {
		t.Fatal(err)
	}
	return path
}

// failing fails writes while fail is set.
type failing struct {
	store.Store
	fail atomic.Bool
}

func (f *failing) PutSettings(ctx context.Context, s store.Settings) error {
	if f.fail.Load() {
		return errors.New("no space left on device")
	}
	return f.Store.PutSettings(ctx, s)
}

// TestReadiness: ready means leading and the last store write succeeded.
func TestReadiness(t *testing.T) {
	fs := &failing{Store: store.NewMemory()}
	d := &daemon{store: store.NewMonitor(fs, store.MonitorOptions{ProbeEvery: -1})}
	defer d.store.Close()
	if err := d.ready(t.Context()); err == nil || !strings.Contains(err.Error(), "standby") {
		t.Fatalf("standby: %v", err)
	}
	d.leading.Store(true)
	if err := d.ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	fs.fail.Store(true)
	d.store.PutSettings(t.Context(), store.Settings{})
	if err := d.ready(t.Context()); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("after a failed write: %v", err)
	}
	fs.fail.Store(false)
	d.store.PutSettings(t.Context(), store.Settings{})
	if err := d.ready(t.Context()); err != nil {
		t.Fatalf("after a good write: %v", err)
	}
}
