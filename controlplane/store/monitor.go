package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Monitor wraps a Store and keeps what readiness and metrics need: whether
// the last write succeeded, and how many calls failed, by operation. Store
// failures are logged at ERROR, at most once per LogEvery (with how many
// were left out), and their end once.
//
// A failure is an error of the store itself: a commit that did not reach
// the disk, etcd not answering in time, a damaged file. A write the store
// refused on its merits (ErrTaken, ErrInvalid), a lost fence (ErrFenced),
// a caller that went away (context.Canceled) or a closed store is not.
//
// After a failed write, Monitor probes the store with a harmless write
// (Prober) every ProbeEvery, so that the health comes back when the disk
// has room again even if no client writes meanwhile.
//
// Methods of the wrapped store that Monitor does not list pass through
// unmonitored.
type Monitor struct {
	Store
	log        *slog.Logger
	logEvery   time.Duration
	probeEvery time.Duration
	now        func() time.Time

	errs      [numOps]atomic.Uint64
	lastWrite atomic.Pointer[WriteError] // nil: the last write succeeded (or none failed yet)

	mu         sync.Mutex // the throttle of the failure log, the prober
	lastLog    time.Time
	suppressed int
	probing    bool
	closed     bool
	stop       chan struct{}
	probeDone  sync.WaitGroup
}

// MonitorOptions configure NewMonitor.
type MonitorOptions struct {
	Logger *slog.Logger // nil discards
	// LogEvery bounds the failure log to one line per interval; 0 means
	// 10s.
	LogEvery time.Duration
	// ProbeEvery is how often a failed store is probed; 0 means 5s, a
	// negative value turns probing off.
	ProbeEvery time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Op names a monitored store operation (the op label of the metric).
type Op int

// The monitored operations.
const (
	OpClaim Op = iota
	OpRelease
	OpLease
	OpLoad
	OpPutReservation
	OpDeleteReservation
	OpPutSettings
	OpPutDataplane
	OpBackup
	OpRestore
	OpProbe
	OpReleaseMany
	OpDeleteDataplane
	numOps
)

var opNames = [numOps]string{"claim", "release", "lease", "load", "put_reservation", "delete_reservation",
	"put_settings", "put_dataplane", "backup", "restore", "probe", "release_many", "delete_dataplane"}

func (o Op) String() string { return opNames[o] }

// Ops lists every operation, in order.
func Ops() []Op {
	ops := make([]Op, numOps)
	for i := range ops {
		ops[i] = Op(i)
	}
	return ops
}

func (o Op) write() bool {
	switch o {
	case OpLease, OpLoad, OpBackup:
		return false
	}
	return true
}

// WriteError is a failed write: which, when, why.
type WriteError struct {
	Op  Op
	At  time.Time
	Err error
}

func (e *WriteError) Error() string {
	return fmt.Sprintf("the last store write (%s at %s) failed: %v", e.Op, e.At.UTC().Format(time.RFC3339), e.Err)
}

func (e *WriteError) Unwrap() error { return e.Err }

// NewMonitor wraps s.
func NewMonitor(s Store, o MonitorOptions) *Monitor {
	m := &Monitor{Store: s, log: o.Logger, logEvery: o.LogEvery, probeEvery: o.ProbeEvery, now: o.Now, stop: make(chan struct{})}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.logEvery <= 0 {
		m.logEvery = 10 * time.Second
	}
	if m.probeEvery == 0 {
		m.probeEvery = 5 * time.Second
	}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// LastWriteErr is nil when the last write succeeded, else a *WriteError.
// It is one atomic load: readiness probes call it.
func (m *Monitor) LastWriteErr() error {
	if we := m.lastWrite.Load(); we != nil {
		return we
	}
	return nil
}

// Errors returns the store failures counted for op.
func (m *Monitor) Errors(op Op) uint64 { return m.errs[op].Load() }

// IsFailure tells a failure of the store from a refusal on the merits.
func IsFailure(err error) bool {
	switch {
	case err == nil, errors.Is(err, ErrTaken), errors.Is(err, ErrInvalid), errors.Is(err, ErrFenced),
		errors.Is(err, ErrClosed), errors.Is(err, context.Canceled):
		return false
	}
	return true
}

// record notes the outcome of one call and returns err.
func (m *Monitor) record(op Op, err error) error {
	if !IsFailure(err) {
		if op.write() && err == nil {
			if we := m.lastWrite.Load(); we != nil && m.lastWrite.CompareAndSwap(we, nil) {
				m.log.Info("store writes succeed again", "store", m.Store.String(), "op", op.String(),
					"failing_since", we.At.UTC().Format(time.RFC3339))
			}
		}
		return err
	}
	m.errs[op].Add(1)
	now := m.now()
	if op.write() {
		m.lastWrite.Store(&WriteError{Op: op, At: now, Err: err})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if op.write() {
		m.startProbeLocked()
	}
	if !m.lastLog.IsZero() && now.Sub(m.lastLog) < m.logEvery {
		m.suppressed++
		return err
	}
	m.log.Error("store call failed", "store", m.Store.String(), "op", op.String(), "error", err.Error(),
		"similar_failures_not_logged", m.suppressed)
	m.lastLog, m.suppressed = now, 0
	return err
}

// probe writes every probeEvery until a write (a probe or another)
// succeeds or the monitor is closed.
func (m *Monitor) probe() {
	defer m.probeDone.Done()
	t := time.NewTicker(m.probeEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		if m.lastWrite.Load() == nil {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), m.probeEvery)
		m.record(OpProbe, m.Store.(Prober).Probe(ctx))
		cancel()
		if m.lastWrite.Load() == nil {
			break
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probing = false
	// A write may have failed between the last check and here, and found
	// probing still set: look once more.
	if m.lastWrite.Load() != nil {
		m.startProbeLocked()
	}
}

// startProbeLocked starts the prober unless it runs, is off or the monitor
// is closed. m.mu is held.
func (m *Monitor) startProbeLocked() {
	if m.probing || m.closed || m.probeEvery < 0 {
		return
	}
	if _, ok := m.Store.(Prober); !ok {
		return
	}
	m.probing = true
	m.probeDone.Add(1)
	go m.probe()
}

func (m *Monitor) Claim(ctx context.Context, l Lease) (Lease, bool, error) {
	held, existing, err := m.Store.Claim(ctx, l)
	return held, existing, m.record(OpClaim, err)
}

func (m *Monitor) Release(ctx context.Context, addr netip.Addr, owner Owner, at time.Time) (bool, error) {
	ok, err := m.Store.Release(ctx, addr, owner, at)
	return ok, m.record(OpRelease, err)
}

func (m *Monitor) ReleaseMany(ctx context.Context, rs []Release, at time.Time) ([]bool, error) {
	done, err := m.Store.ReleaseMany(ctx, rs, at)
	return done, m.record(OpReleaseMany, err)
}

func (m *Monitor) Lease(ctx context.Context, addr netip.Addr) (Lease, bool, error) {
	l, ok, err := m.Store.Lease(ctx, addr)
	return l, ok, m.record(OpLease, err)
}

func (m *Monitor) Load(ctx context.Context) (State, error) {
	st, err := m.Store.Load(ctx)
	return st, m.record(OpLoad, err)
}

func (m *Monitor) PutReservation(ctx context.Context, r Reservation) (bool, error) {
	changed, err := m.Store.PutReservation(ctx, r)
	return changed, m.record(OpPutReservation, err)
}

func (m *Monitor) DeleteReservation(ctx context.Context, client netip.Prefix) (bool, error) {
	deleted, err := m.Store.DeleteReservation(ctx, client)
	return deleted, m.record(OpDeleteReservation, err)
}

func (m *Monitor) PutSettings(ctx context.Context, s Settings) error {
	return m.record(OpPutSettings, m.Store.PutSettings(ctx, s))
}

func (m *Monitor) PutDataplane(ctx context.Context, d Dataplane) error {
	return m.record(OpPutDataplane, m.Store.PutDataplane(ctx, d))
}

func (m *Monitor) DeleteDataplane(ctx context.Context, id string) (bool, error) {
	deleted, err := m.Store.DeleteDataplane(ctx, id)
	return deleted, m.record(OpDeleteDataplane, err)
}

// Backup passes to the wrapped store if it writes backups.
func (m *Monitor) Backup(ctx context.Context, w io.Writer) (int64, error) {
	b, ok := m.Store.(Backuper)
	if !ok {
		return 0, fmt.Errorf("the store %s cannot be backed up", m.Store)
	}
	n, err := b.Backup(ctx, w)
	return n, m.record(OpBackup, err)
}

// Restore passes to the wrapped store if it can be restored into.
func (m *Monitor) Restore(ctx context.Context, snap Snapshot) error {
	r, ok := m.Store.(Restorer)
	if !ok {
		return fmt.Errorf("the store %s cannot be restored into", m.Store)
	}
	return m.record(OpRestore, r.Restore(ctx, snap))
}

func (m *Monitor) RestoreStatus(ctx context.Context) (RestoreStatus, error) {
	r, ok := m.Store.(Restorer)
	if !ok {
		return RestoreStatus{}, fmt.Errorf("the store %s cannot be restored into", m.Store)
	}
	return r.RestoreStatus(ctx)
}

// Probe passes to the wrapped store (a no-op if it has no probe).
func (m *Monitor) Probe(ctx context.Context) error {
	p, ok := m.Store.(Prober)
	if !ok {
		return nil
	}
	return m.record(OpProbe, p.Probe(ctx))
}

// Unwrap returns the wrapped store.
func (m *Monitor) Unwrap() Store { return m.Store }

// Close stops the prober and closes the wrapped store.
func (m *Monitor) Close() error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		close(m.stop)
	}
	m.mu.Unlock()
	m.probeDone.Wait()
	return m.Store.Close()
}
