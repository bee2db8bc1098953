package store_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fourover6/fourover6/controlplane/store"
)

// logBuffer collects a logger's output across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

var freshNow = time.Date(2025, 4, 1, 10, 20, 30, 0, time.UTC)

// TestCorruptStateFiles opens every damaged file of the suite: no panic,
// and each is refused with a StateError naming the file and the problem
// (the file left as it was), or opened with the damaged record skipped and
// logged, or opened on bbolt's previous transaction and logged. A refused
// file is moved aside, intact, by Fresh.
func TestCorruptStateFiles(t *testing.T) {
	cases := corruptions()
	if len(cases) < 18 {
		t.Fatalf("%d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "state.db")
			c.make(t, path)
			before := mustRead(t, path)
			var logs logBuffer
			s, err := store.OpenBoltWith(path, store.BoltOptions{Logger: logs.logger()})
			switch c.want {
			case refused:
				var se *store.StateError
				if !errors.As(err, &se) {
					if s != nil {
						s.Close()
					}
					t.Fatalf("OpenBolt = %v, want a StateError", err)
				}
				if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("error %q does not name the file and %q", err, c.msg)
				}
				if !errors.Is(err, store.ErrCorrupt) && !errors.Is(err, store.ErrNotState) && !errors.Is(err, store.ErrFormat) {
					t.Fatalf("error %q matches no kind", err)
				}
				if !bytes.Equal(mustRead(t, path), before) {
					t.Fatal("the refused file was changed")
				}
				t.Logf("refused: %v", err)
				checkFresh(t, path, before)
			case skipped, fallback:
				if err != nil {
					t.Fatalf("OpenBolt: %v", err)
				}
				defer s.Close()
				st, err := s.Load(t.Context())
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if len(st.Leases) == 0 || len(st.Reservations) != 3 {
					t.Fatalf("loaded %d leases, %d reservations", len(st.Leases), len(st.Reservations))
				}
				if !strings.Contains(logs.String(), c.msg) || !strings.Contains(logs.String(), "level=") {
					t.Fatalf("log does not mention %q:\n%s", c.msg, logs.String())
				}
				if c.want == skipped && !strings.Contains(logs.String(), "level=ERROR") {
					t.Fatalf("skipped record not logged at ERROR:\n%s", logs.String())
				}
				t.Logf("opened: %s", strings.TrimSpace(logs.String()))
			}
		})
	}
}

// checkFresh opens the refused file at path with Fresh: it is moved aside
// unchanged and the store starts empty, saying so.
func checkFresh(t *testing.T, path string, before []byte) {
	t.Helper()
	var logs logBuffer
	s, err := store.OpenBoltWith(path, store.BoltOptions{Logger: logs.logger(), Fresh: true, Now: func() time.Time { return freshNow }})
	if err != nil {
		t.Fatalf("OpenBolt with Fresh: %v", err)
	}
	defer s.Close()
	aside := path + ".broken-20250401T102030Z"
	if got, err := os.ReadFile(aside); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("the refused file is not kept as %s: %v", aside, err)
	}
	if !strings.Contains(logs.String(), "moved it aside") || !strings.Contains(logs.String(), aside) {
		t.Fatalf("log does not say the file was moved aside:\n%s", logs.String())
	}
	st, err := s.Load(t.Context())
	if err != nil || len(st.Leases) != 0 || len(st.Reservations) != 0 {
		t.Fatalf("fresh store: %+v %v", st, err)
	}
}

// openAndUse opens the file at path and, if it opens, loads it and writes
// to it: whatever the damage, every step ends in an error or success,
// never a panic or a crash.
func openAndUse(t *testing.T, path string) error {
	t.Helper()
	s, err := store.OpenBoltWith(path, store.BoltOptions{})
	if err != nil {
		var se *store.StateError
		if !errors.As(err, &se) {
			t.Fatalf("not a StateError: %v", err)
		}
		return err
	}
	defer s.Close()
	if _, err := s.Load(t.Context()); err != nil {
		return err
	}
	l := store.Lease{Addr: netipAddr("13.8.1.1"), Owner: store.Owner{Dataplane: "dpX", Session: "probe"}}
	_, _, err = s.Claim(t.Context(), l)
	return err
}

// TestCorruptTruncateSweep cuts the file at many offsets: every cut that
// removes a page bbolt uses is refused.
func TestCorruptTruncateSweep(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	writeState(t, good)
	b := mustRead(t, good)
	_, m := newestMeta(b)
	need := int(m.hwm) * int(m.pageSize)
	step := 509
	if testing.Short() {
		step = 4093
	}
	n := 0
	for off := 0; off < len(b); off += step {
		path := filepath.Join(dir, "cut.db")
		os.Remove(path)
		mustWrite(t, path, b[:off])
		err := openAndUse(t, path)
		if off < need && err == nil {
			t.Fatalf("cut at %d of %d bytes (%d in use): opened", off, len(b), need)
		}
		n++
	}
	t.Logf("%d cuts of a %d-byte file (%d bytes in use)", n, len(b), need)
}

// TestCorruptFlipSweep flips one byte at a time across the file: a flip
// may go unnoticed (a free page, a byte of a client's port), but none
// panics.
func TestCorruptFlipSweep(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	writeState(t, good)
	b := mustRead(t, good)
	step := 131
	if testing.Short() {
		step = 997
	}
	var refusedN, okN int
	for pos := 0; pos < len(b); pos += step {
		c := bytes.Clone(b)
		c[pos] ^= 0xA5
		path := filepath.Join(dir, "flip.db")
		os.Remove(path)
		mustWrite(t, path, c)
		if openAndUse(t, path) != nil {
			refusedN++
		} else {
			okN++
		}
	}
	t.Logf("%d flips: %d refused or failed cleanly, %d unnoticed", refusedN+okN, refusedN, okN)
}

// TestBoltDamagedWhileRunning damages the file under an open store (pages
// overwritten, the file cut): bbolt reads garbage or faults; the store
// turns that into a StateError for this and every later call, logged once.
func TestBoltDamagedWhileRunning(t *testing.T) {
	for _, damage := range []string{"overwrite", "truncate"} {
		t.Run(damage, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			writeState(t, path)
			var logs logBuffer
			s, err := store.OpenBoltWith(path, store.BoltOptions{Logger: logs.logger()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Load(t.Context()); err != nil {
				t.Fatal(err)
			}
			b := mustRead(t, path)
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			switch damage {
			case "overwrite": // every page but the metas: garbage
				junk := bytes.Repeat([]byte{0xff}, len(b)-2*psz)
				_, err = f.WriteAt(junk, int64(2*psz))
			case "truncate": // reads past the end of the file fault (SIGBUS)
				err = f.Truncate(int64(2 * psz))
			}
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Load(t.Context())
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Load on a damaged file: %v", err)
			}
			l := store.Lease{Addr: netipAddr("13.8.1.1"), Owner: store.Owner{Dataplane: "dpX", Session: "s"}}
			if _, _, err := s.Claim(t.Context(), l); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Claim after the damage: %v", err)
			}
			if _, _, err := s.Lease(t.Context(), l.Addr); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("Lease after the damage: %v", err)
			}
			if n := strings.Count(logs.String(), "the state file is damaged"); n != 1 {
				t.Fatalf("logged %d times:\n%s", n, logs.String())
			}
			t.Logf("%v", err)
		})
	}
}

// TestDamagedLastHolder: the checker reads the holders bucket record by
// record; a damaged one is left out of the state (the address's client
// gets another address when it returns) and named in the log, the healthy
// ones load, and a backup of the file reads the same.
func TestDamagedLastHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	editBolt(put("holders", a4("13.8.0.4"), "fd00:46::4%eth0"))(t, path)
	var logs logBuffer
	s, err := store.OpenBoltWith(path, store.BoltOptions{Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Holders) != 4 {
		t.Fatalf("holders %v: want the 4 healthy ones of 5", st.Holders)
	}
	if _, ok := st.Holders[netip.MustParseAddr("13.8.0.4")]; ok {
		t.Fatal("the damaged holder was loaded")
	}
	if c := st.Holders[netip.MustParseAddr("13.8.0.2")]; c != netip.MustParseAddr("fd00:46::2") {
		t.Fatalf("holder of 13.8.0.2 = %v", c)
	}
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "last holder") || !strings.Contains(l, "13.8.0.4") {
		t.Fatalf("log:\n%s", l)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	backupTo(t, s, backup)
	snap, err := store.ReadSnapshot(backup, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A bbolt backup is the file's own snapshot: the damaged record is in
	// it, and skipped again when it is read.
	if len(snap.State.Holders) != 4 {
		t.Fatalf("backup: holders %v", snap.State.Holders)
	}
}
