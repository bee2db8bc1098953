package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// BoltOptions configure OpenBoltWith.
type BoltOptions struct {
	// Logger receives what the store notices about its file: a damaged
	// meta page bbolt recovered from, records skipped at Load, the file
	// moved aside (Fresh), a failure while running. Nil discards.
	Logger *slog.Logger
	// Fresh: when the file cannot be used (empty, not a state file,
	// corrupt, of a newer format: a *StateError), move it aside as
	// PATH.broken-TIMESTAMP and start with an empty store. Nothing is
	// deleted. A file that can be used is opened as it is.
	Fresh bool
	// Now is the clock of the TIMESTAMP; nil means time.Now.
	Now func() time.Time
}

// OpenBolt opens the bbolt file at path with default options (see
// OpenBoltWith).
func OpenBolt(path string) (*Bolt, error) { return OpenBoltWith(path, BoltOptions{}) }

// OpenBoltWith opens the bbolt state file at path, creating it (and its
// directory) when missing. It fails within a second when another process
// has the file open.
//
// An existing file is checked before bbolt writes to it: its pages (every
// page bbolt would read must be inside the file and well formed), bbolt's
// own consistency check, the meta bucket and format, and every record
// (see loader). A file that fails is refused with a *StateError, unless
// o.Fresh. A missing file is created complete (buckets and format) under
// a temporary name and then linked into place, so a crash never leaves an
// empty or half-made file at path.
func OpenBoltWith(path string, o BoltOptions) (*Bolt, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create the state directory: %w", err)
	}
	exists, err := verifyBolt(path, log)
	var se *StateError
	switch {
	case err == nil:
	case errors.As(err, &se) && o.Fresh:
		aside, merr := moveAside(path, "broken", now())
		if merr != nil {
			return nil, fmt.Errorf("%w; and it cannot be moved aside: %v", err, merr)
		}
		log.Error("the state file cannot be used: moved it aside, starting with an empty store (--fresh-state)",
			"path", path, "moved_to", aside, "problem", err.Error())
		exists = false
	default:
		return nil, err
	}
	if !exists {
		if err := createBolt(path); err != nil {
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
	}
	db, err := openBoltDB(path, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	// Buckets missing from a checked file are created (an empty bucket
	// loses nothing); a file that has them all is not written to.
	err = guard(func() error {
		missing := false
		db.View(func(tx *bolt.Tx) error {
			for _, b := range dataBuckets {
				missing = missing || tx.Bucket(b) == nil
			}
			return nil
		})
		if !missing {
			return nil
		}
		return db.Update(func(tx *bolt.Tx) error {
			for _, b := range dataBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	b := &Bolt{db: db, path: path, log: log, ops: make(chan *boltOp, maxBatch), stop: make(chan struct{}), stopped: make(chan struct{})}
	go b.commitLoop()
	return b, nil
}

// dataBuckets are every bucket of format 1 but meta.
var dataBuckets = [][]byte{bktLeases, bktOwners, bktReleased, bktHolders, bktReservations, bktSettings, bktDataplanes}

// openBoltDB opens path with bbolt, turning a panic of bbolt into an error
// and closing the file it opened (so its lock is released).
func openBoltDB(path string, opts *bolt.Options) (*bolt.DB, error) {
	var file *os.File
	o := *opts
	o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err == nil && file == nil {
			file = f
		}
		return f, err
	}
	var db *bolt.DB
	err := guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &o)
		return err
	})
	var pe *panicError
	switch {
	case err == nil:
		return db, nil
	case errors.As(err, &pe):
		if file != nil {
			file.Close()
		}
		return nil, corrupt(path, "bbolt cannot open it: %v", pe.value)
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("open %s: the file is locked: is another controller running with this --state?", path)
	case errors.Is(err, bolterrors.ErrInvalid):
		return nil, notState(path, "not a bbolt database")
	case errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return nil, corrupt(path, "bbolt cannot open it: %v", err)
	}
	return nil, fmt.Errorf("open %s: %w", path, err)
}

// verifyBolt checks the file at path, if there is one, without writing to
// it (see OpenBoltWith).
func verifyBolt(path string, log *slog.Logger) (exists bool, err error) {
	return inspectBolt(path, log, nil)
}

// inspectBolt checks the file at path, if there is one, without writing to
// it, then runs fn (if not nil) in the same read transaction.
func inspectBolt(path string, log *slog.Logger, fn func(*bolt.Tx) error) (exists bool, err error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("open %s: %w", path, err)
	case fi.IsDir():
		return true, fmt.Errorf("open %s: is a directory", path)
	case fi.Size() == 0:
		return true, notState(path, "it is empty (0 bytes)")
	}
	f, err := os.Open(path)
	if err != nil {
		return true, fmt.Errorf("open %s: %w", path, err)
	}
	bf, err := checkBoltPages(f, fi.Size(), path)
	f.Close()
	if err != nil {
		return true, err
	}
	if bf.damagedMeta >= 0 {
		if bf.lostNewest {
			log.Error("meta page of the state file is damaged: using the previous transaction; the last write before the damage may be lost",
				"path", path, "meta_page", bf.damagedMeta, "txid", bf.meta.txid)
		} else {
			log.Warn("the older meta page of the state file is damaged; the next write replaces it",
				"path", path, "meta_page", bf.damagedMeta, "txid", bf.meta.txid)
		}
	}
	db, err := openBoltDB(path, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return true, err
	}
	defer db.Close()
	return true, guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			if err := checkTx(tx, path); err != nil || fn == nil {
				return err
			}
			return fn(tx)
		})
	})
}

// checkTx checks a read transaction: our meta bucket and format, bbolt's
// consistency check, every record.
func checkTx(tx *bolt.Tx, where string) error {
	meta := tx.Bucket(bktMeta)
	if meta == nil {
		var names []string
		tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if len(names) < 5 {
				names = append(names, fmt.Sprintf("%q", clipKey(name)))
			}
			return nil
		})
		if len(names) == 0 {
			return notState(where, "a bbolt database with no meta bucket (and no buckets at all)")
		}
		return notState(where, "a bbolt database with no meta bucket (its buckets: %s)", strings.Join(names, ", "))
	}
	switch v := meta.Get(keyFormat); {
	case v == nil:
		return notState(where, "a bbolt database whose meta bucket has no format")
	case string(v) != boltFormat:
		return &StateError{Where: where, Kind: ErrFormat, Detail: fmt.Sprintf(
			"state format %q, but this controller reads format %q: it was written by a newer controller", clipKey(v), boltFormat)}
	}
	var problems []string
	n := 0
	for err := range tx.Check() {
		if n < 3 {
			problems = append(problems, err.Error())
		}
		n++
	}
	if n > 0 {
		more := ""
		if n > 3 {
			more = fmt.Sprintf(" (and %d more problems)", n-3)
		}
		return corrupt(where, "bbolt's consistency check: %s%s", strings.Join(problems, "; "), more)
	}
	_, err := loadTx(tx, where, nil)
	return err
}

// loadTx reads the whole state of a transaction; skipped records go to log
// (nil: not logged).
func loadTx(tx *bolt.Tx, where string, log *slog.Logger) (State, error) {
	l := newLoader(where, func(o Owner) string { return string(ownerKey(o)) }, log)
	each := func(name []byte, fn func(k, v []byte) error) error {
		if b := tx.Bucket(name); b != nil {
			return b.ForEach(fn)
		}
		return nil
	}
	addrOf := func(k []byte) (netip.Addr, bool) {
		if len(k) != 4 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(k)), true
	}
	err := each(bktLeases, func(k, v []byte) error {
		a, ok := addrOf(k)
		if !ok {
			return l.fatal("lease key %x is %d bytes, not an IPv4 address (4)", clipKey(k), len(k))
		}
		return l.lease(a, a.String(), v)
	})
	if err != nil {
		return State{}, err
	}
	err = each(bktOwners, func(k, v []byte) error {
		a, ok := addrOf(v)
		if !ok {
			return l.fatal("the owner index entry %q holds %d bytes, not an IPv4 address (4)", clipKey(k), len(v))
		}
		l.owner(string(k), a)
		return nil
	})
	if err != nil {
		return State{}, err
	}
	err = each(bktReleased, func(k, v []byte) error {
		a, ok := addrOf(k)
		if !ok {
			l.released(a, time.Time{}, fmt.Sprintf("%x", clipKey(k)), fmt.Errorf("release time key of %d bytes, not an IPv4 address (4)", len(k)))
			return nil
		}
		var t time.Time
		if v == nil {
			err = errors.New("a nested bucket where a release time belongs")
		} else {
			t, err = decodeTime(v)
		}
		l.released(a, t, a.String(), err)
		return nil
	})
	if err != nil {
		return State{}, err
	}
	each(bktHolders, func(k, v []byte) error {
		a, ok := addrOf(k)
		if !ok {
			l.holder(a, fmt.Sprintf("%x", clipKey(k)), v, fmt.Errorf("last holder key of %d bytes, not an IPv4 address (4)", len(k)))
			return nil
		}
		l.holder(a, a.String(), v, nil)
		return nil
	})
	if err := each(bktReservations, l.reservation); err != nil {
		return State{}, err
	}
	if b := tx.Bucket(bktSettings); b != nil {
		if v := b.Get(keySettings); v != nil {
			if err := l.settings(v); err != nil {
				return State{}, err
			}
		}
	}
	each(bktDataplanes, func(k, v []byte) error {
		l.dataplane(string(k), v)
		return nil
	})
	return l.finish()
}

// createBolt makes a complete, empty state file at path: under a temporary
// name first, then hard-linked into place, which fails rather than replace
// a file another controller created meanwhile.
func createBolt(path string) error {
	tmp := fmt.Sprintf("%s.new-%d", path, os.Getpid())
	os.Remove(tmp) // a leftover of a crash of this pid: never in use
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bktMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyFormat, []byte(boltFormat)); err != nil {
			return err
		}
		for _, b := range dataBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	defer os.Remove(tmp)
	if err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// moveAside renames path to PATH.TAG-TIMESTAMP (with -2, -3... if that
// exists), never replacing a file, and returns the new name.
func moveAside(path, tag string, now time.Time) (string, error) {
	base := fmt.Sprintf("%s.%s-%s", path, tag, now.UTC().Format("20060102T150405Z"))
	for i := 1; i < 100; i++ {
		dst := base
		if i > 1 {
			dst = fmt.Sprintf("%s-%d", base, i)
		}
		err := os.Link(path, dst)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if err := os.Remove(path); err != nil {
			return "", err
		}
		return dst, syncDir(filepath.Dir(path))
	}
	return "", fmt.Errorf("too many files named %s-*", base)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// panicError is a panic (or a memory fault) inside bbolt, as an error.
type panicError struct {
	value any
	stack string
}

func (e *panicError) Error() string { return fmt.Sprintf("bbolt panicked: %v", e.value) }

// guard runs fn with memory faults turned into panics (debug.SetPanicOnFault:
// bbolt reads its file through a memory map, and a page changed or cut
// under it faults) and any panic turned into a *panicError.
func guard(fn func() error) (err error) {
	prev := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(prev)
		if r := recover(); r != nil {
			err = &panicError{value: r, stack: string(debug.Stack())}
		}
	}()
	return fn()
}
