package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backups
//
// A backup is a bbolt state file of format 1, the same file --state holds:
// bbolt's own snapshot of a read transaction (Tx.WriteTo) for the bbolt
// store, and for etcd (and the memory store) the keys of one revision
// written into a new file of that format. So a backup of either store
// restores into either store, a backup can be checked like a state file
// (and is, before a restore), and a bbolt backup is a valid --state.

// Backuper is a store that writes backups.
type Backuper interface {
	// Backup writes a consistent snapshot of the whole state to w, in the
	// backup format, and returns the bytes written.
	Backup(ctx context.Context, w io.Writer) (int64, error)
}

// Restorer is a store whose whole state can be replaced by a snapshot.
type Restorer interface {
	// Restore replaces the whole state with snap's and remembers snap.ID.
	// Use the package function Restore, which refuses to replace state by
	// accident.
	Restore(ctx context.Context, snap Snapshot) error
	// RestoreStatus says which snapshot was restored last.
	RestoreStatus(ctx context.Context) (RestoreStatus, error)
}

// Prober is a store with a harmless write: it tells whether writes work
// again after a failure (see Monitor).
type Prober interface {
	Probe(ctx context.Context) error
}

// RestoreStatus is what a store remembers of restores.
type RestoreStatus struct {
	// From is the ID of the snapshot restored last ("" if none).
	From string
	// Interrupted is the ID of a snapshot whose restore began but did not
	// finish (etcd only: its restore takes several transactions).
	Interrupted string
}

// Snapshot is a backup read back (ReadSnapshot).
type Snapshot struct {
	State State
	// ID is the SHA-256 of the backup file, in hex: a restored store
	// remembers it, so starting again with the same --restore is
	// recognized and does nothing.
	ID string
}

// Meta keys besides the format.
var (
	keyRestoredFrom = []byte("restored_from")
	keyProbe        = []byte("probe")
)

const (
	metaRestoring    = "restoring"
	metaRestoredFrom = "restored_from"
	metaProbe        = "probe"
)

// ReadSnapshot reads and checks the backup file at path exactly as a state
// file is checked when the controller opens it (pages, bbolt's consistency
// check, meta bucket and format, every record), without writing to it.
// Records of the kinds that are skipped (see loader) are logged to log.
func ReadSnapshot(path string, log *slog.Logger) (Snapshot, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := os.Open(path)
	if err != nil {
		return Snapshot{}, err
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return Snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	var st State
	exists, err := inspectBolt(path, log, func(tx *bolt.Tx) error {
		var err error
		st, err = loadTx(tx, path, log)
		return err
	})
	if err == nil && !exists {
		err = fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return Snapshot{}, err
	}
	return Snapshot{State: st, ID: hex.EncodeToString(h.Sum(nil))}, nil
}

// StateSummary counts what a state holds.
type StateSummary struct {
	Leases, ReleaseTimes, Reservations, Dataplanes int
	Holders                                        int  // remembered last holders of free addresses
	Settings                                       bool // DNS servers or a pool range are set
}

// Summarize counts st.
func Summarize(st State) StateSummary {
	s := st.Settings
	return StateSummary{
		Leases: len(st.Leases), ReleaseTimes: len(st.Released), Reservations: len(st.Reservations),
		Holders:    len(st.Holders),
		Dataplanes: len(st.Dataplanes),
		Settings:   len(s.DNS) > 0 || s.RangeFirst.IsValid() || s.RangeLast.IsValid() || s.WholePrefix,
	}
}

// Empty is true when the state holds nothing.
func (s StateSummary) Empty() bool { return s == StateSummary{} }

func (s StateSummary) String() string {
	parts := []string{
		fmt.Sprintf("%d leases", s.Leases), fmt.Sprintf("%d reservations", s.Reservations),
		fmt.Sprintf("%d data planes", s.Dataplanes), fmt.Sprintf("%d release times", s.ReleaseTimes),
	}
	if s.Holders > 0 {
		parts = append(parts, fmt.Sprintf("%d remembered holders", s.Holders))
	}
	if s.Settings {
		parts = append(parts, "settings (DNS or pool range)")
	}
	return strings.Join(parts, ", ")
}

// ErrHoldsState: the store to restore into already holds state, and the
// restore was not asked to replace it.
var ErrHoldsState = errors.New("the store already holds state")

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Skipped: the store was restored from this very snapshot before;
	// nothing was written.
	Skipped bool
	// Replaced is what the store held before (empty if nothing).
	Replaced StateSummary
	// SavedTo is where the replaced state was saved as a backup ("" if
	// nothing was replaced).
	SavedTo string
	// ReplacedDamaged: the state replaced could not be loaded; SavedTo
	// holds its records as they were (etcd: one JSON object per key).
	ReplacedDamaged bool
	// Restored is what the store holds now.
	Restored StateSummary
}

// Restore writes snap into s, with these safeguards:
//
//   - s was restored from snap before (and has not finished another restore
//     since): nothing is done (Skipped), so a unit file that keeps --restore
//     on restart does not roll the state back;
//   - s holds state: refused with an error matching ErrHoldsState, unless
//     replace; then the state is first saved as a backup at saveTo (a new
//     file; an existing one is never overwritten);
//   - an interrupted restore (etcd) of snap is simply redone; of another
//     snapshot, it needs replace.
func Restore(ctx context.Context, s Store, snap Snapshot, replace bool, saveTo string) (RestoreResult, error) {
	rs, ok := s.(Restorer)
	if !ok {
		return RestoreResult{}, fmt.Errorf("the store %s cannot be restored into", s)
	}
	status, err := rs.RestoreStatus(ctx)
	if err != nil {
		return RestoreResult{}, err
	}
	res := RestoreResult{Restored: Summarize(snap.State)}
	switch {
	case status.Interrupted == "" && status.From == snap.ID:
		res.Skipped = true
		return res, nil
	case status.Interrupted != "" && status.Interrupted != snap.ID && !replace:
		return res, fmt.Errorf("%w: the store %s holds what an interrupted restore of another backup (sha256 %s) left", ErrHoldsState, s, status.Interrupted)
	case status.Interrupted == "":
		st, err := s.Load(ctx)
		if err != nil {
			// A damaged state is replaced only when asked, and only by a
			// store that can save it as it is first.
			rd, ok := unwrap(s).(rawDumper)
			if !errors.As(err, new(*StateError)) || !replace || !ok {
				return res, err
			}
			if err := saveFile(saveTo, func(w io.Writer) error { return rd.dumpRaw(ctx, w) }); err != nil {
				return res, fmt.Errorf("save the damaged state it replaces to %s first: %w", saveTo, err)
			}
			res.SavedTo, res.ReplacedDamaged = saveTo, true
			break
		}
		res.Replaced = Summarize(st)
		if !res.Replaced.Empty() && !replace {
			return res, fmt.Errorf("%w: %s holds %s; restoring would replace it", ErrHoldsState, s, res.Replaced)
		}
		if !res.Replaced.Empty() {
			if err := saveBackup(ctx, s, saveTo); err != nil {
				return res, fmt.Errorf("save the state it replaces to %s first: %w", saveTo, err)
			}
			res.SavedTo = saveTo
		}
	}
	if err := rs.Restore(ctx, snap); err != nil {
		return res, err
	}
	return res, nil
}

// saveBackup writes a backup of s to the new file path.
func saveBackup(ctx context.Context, s Store, path string) error {
	b, ok := s.(Backuper)
	if !ok {
		return fmt.Errorf("the store %s cannot be backed up", s)
	}
	return saveFile(path, func(w io.Writer) error { _, err := b.Backup(ctx, w); return err })
}

// saveFile writes the new file path (never replacing one) with write,
// durably.
func saveFile(path string, write func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// unwrap returns the store under wrappers such as Monitor.
func unwrap(s Store) Store {
	for {
		u, ok := s.(interface{ Unwrap() Store })
		if !ok {
			return s
		}
		s = u.Unwrap()
	}
}

// rawDumper writes the records of a store as they are, without decoding.
type rawDumper interface {
	dumpRaw(ctx context.Context, w io.Writer) error
}

// dumpRaw writes every key under the prefix as a JSON object per line:
// {"key": ..., "value": ...}, values as stored (strings).
func (e *Etcd) dumpRaw(ctx context.Context, w io.Writer) error {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	for _, kv := range resp.Kvs {
		if err := enc.Encode(struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		}{string(kv.Key), string(kv.Value)}); err != nil {
			return err
		}
	}
	return nil
}

// checkState validates a state before it is written: what the loader
// accepts, and no address or owner twice.
func checkState(st State) error {
	addrs := make(map[netip.Addr]bool, len(st.Leases))
	owners := make(map[Owner]bool, len(st.Leases))
	for _, l := range st.Leases {
		if err := CheckLease(l); err != nil {
			return err
		}
		if addrs[l.Addr] || owners[l.Owner] {
			return invalid("lease %s of %s: the address or the owner holds two leases", l.Addr, l.Owner)
		}
		addrs[l.Addr], owners[l.Owner] = true, true
	}
	for a := range st.Released {
		if !a.Is4() {
			return invalid("release time of %v: not an IPv4 address", a)
		}
	}
	for a, c := range st.Holders {
		if !a.Is4() {
			return invalid("last holder of %v: not an IPv4 address", a)
		}
		if _, err := decodeHolder(encodeHolder(c)); err != nil {
			return invalid("last holder of %s: %v", a, err)
		}
	}
	for _, r := range st.Reservations {
		if _, err := decodeReservation([]byte(r.Client.String()), []byte(r.Addr.String())); err != nil {
			return invalid("%v", err)
		}
	}
	for _, d := range st.Dataplanes {
		if d.ID == "" {
			return invalid("data plane without id")
		}
	}
	if _, err := decodeSettings(encodeSettings(st.Settings)); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// putState writes st into the empty data buckets of tx. Each bucket's
// records go in key order: bbolt appends them, where random order would
// move the node's elements at every insert (quadratic in a large state).
func putState(tx *bolt.Tx, st State) error {
	type kv struct{ k, v []byte }
	put := func(bucket []byte, kvs []kv) error {
		slices.SortFunc(kvs, func(a, b kv) int { return bytes.Compare(a.k, b.k) })
		b := tx.Bucket(bucket)
		for _, e := range kvs {
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
		}
		return nil
	}
	leases := make([]kv, 0, len(st.Leases))
	owners := make([]kv, 0, len(st.Leases))
	for _, l := range st.Leases {
		l.LeasedAt = l.LeasedAt.UTC()
		leases = append(leases, kv{addrKey(l.Addr), encodeLease(l)})
		owners = append(owners, kv{ownerKey(l.Owner), addrKey(l.Addr)})
	}
	released := make([]kv, 0, len(st.Released))
	for a, t := range st.Released {
		released = append(released, kv{addrKey(a), encodeTime(t)})
	}
	holders := make([]kv, 0, len(st.Holders))
	for a, c := range st.Holders {
		holders = append(holders, kv{addrKey(a), encodeHolder(c)})
	}
	reservations := make([]kv, 0, len(st.Reservations))
	for _, r := range st.Reservations {
		reservations = append(reservations, kv{[]byte(r.Client.String()), []byte(r.Addr.String())})
	}
	var settings []kv
	if Summarize(State{Settings: st.Settings}).Settings {
		settings = append(settings, kv{keySettings, encodeSettings(st.Settings)})
	}
	dataplanes := make([]kv, 0, len(st.Dataplanes))
	for _, d := range st.Dataplanes {
		dataplanes = append(dataplanes, kv{[]byte(d.ID), encodeDataplane(d)})
	}
	for _, b := range []struct {
		name []byte
		kvs  []kv
	}{{bktLeases, leases}, {bktOwners, owners}, {bktReleased, released}, {bktHolders, holders}, {bktReservations, reservations},
		{bktSettings, settings}, {bktDataplanes, dataplanes}} {
		if err := put(b.name, b.kvs); err != nil {
			return err
		}
	}
	return nil
}

// writeBackup writes st to w in the backup format: a new bbolt state file
// in a temporary directory, then copied.
func writeBackup(st State, w io.Writer) (int64, error) {
	if err := checkState(st); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "fourover6-backup-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "state.db")
	if err := createBolt(path); err != nil {
		return 0, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return 0, err
	}
	cw := &countingWriter{w: w}
	err = db.Update(func(tx *bolt.Tx) error { return putState(tx, st) })
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(cw); return err })
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return cw.n, err
}

// countingWriter counts what passes through.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Backup checks every record, snapshots the read transaction to a
// temporary file, and then streams the file: the transaction is not held
// while a slow reader takes the backup (a long read transaction would stall
// writes that grow the file).
func (b *Bolt) Backup(ctx context.Context, w io.Writer) (int64, error) {
	tmp, err := os.CreateTemp("", "fourover6-backup-")
	if err != nil {
		return 0, err
	}
	os.Remove(tmp.Name()) // gone when closed, even after a crash
	defer tmp.Close()
	err = b.view(ctx, func(tx *bolt.Tx) error {
		if _, err := loadTx(tx, b.path, nil); err != nil {
			return err
		}
		_, err := tx.WriteTo(tmp)
		return err
	})
	if err != nil {
		return 0, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	cw := &countingWriter{w: w}
	_, err = io.Copy(cw, tmp)
	return cw.n, err
}

// Restore replaces every data bucket in one transaction.
func (b *Bolt) Restore(ctx context.Context, snap Snapshot) error {
	if err := checkState(snap.State); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	return b.guarded(func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			for _, name := range dataBuckets {
				if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
					return err
				}
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			if err := putState(tx, snap.State); err != nil {
				return err
			}
			meta := tx.Bucket(bktMeta)
			if err := meta.Delete(keyProbe); err != nil {
				return err
			}
			return meta.Put(keyRestoredFrom, []byte(snap.ID))
		})
	})
}

func (b *Bolt) RestoreStatus(ctx context.Context) (RestoreStatus, error) {
	var rs RestoreStatus
	err := b.view(ctx, func(tx *bolt.Tx) error {
		rs.From = string(tx.Bucket(bktMeta).Get(keyRestoredFrom))
		return nil
	})
	return rs, err
}

// Probe writes the time into the meta bucket: a small real commit.
func (b *Bolt) Probe(ctx context.Context) error {
	v := encodeTime(time.Now())
	return b.write(ctx, func(tx *bolt.Tx) error { return tx.Bucket(bktMeta).Put(keyProbe, v) })
}

// Backup reads every key under the prefix at one revision and writes them
// as a backup file.
func (e *Etcd) Backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	st, err := e.decode(resp, e.log)
	if err != nil {
		return 0, err
	}
	return writeBackup(st, w)
}

// maxRestoreOps bounds the operations of one restore transaction (etcd
// refuses more than --max-txn-ops, 128 by default).
const maxRestoreOps = 100

// Restore writes in several transactions (a large state does not fit in
// one): meta/restoring first, then the old records are deleted and the new
// ones put, and meta/restoring is replaced by meta/restored_from last.
// While meta/restoring is there, Load refuses the state.
func (e *Etcd) Restore(ctx context.Context, snap Snapshot) error {
	if err := checkState(snap.State); err != nil {
		return err
	}
	run := func(ops ...clientv3.Op) error {
		_, fenced, err := e.txn(ctx, nil, ops, nil)
		if err == nil && fenced {
			err = ErrFenced
		}
		return err
	}
	if err := run(clientv3.OpPut(e.prefix+"meta/"+metaRestoring, snap.ID)); err != nil {
		return err
	}
	var dels []clientv3.Op
	for _, dir := range []string{"leases/", "owners/", "released/", "holders/", "reservations/", "dataplanes/"} {
		dels = append(dels, clientv3.OpDelete(e.prefix+dir, clientv3.WithPrefix()))
	}
	dels = append(dels, clientv3.OpDelete(e.settingsKey()), clientv3.OpDelete(e.prefix+"meta/"+metaProbe))
	if err := run(dels...); err != nil {
		return err
	}
	var ops []clientv3.Op
	st := snap.State
	for _, l := range st.Leases {
		l.LeasedAt = l.LeasedAt.UTC()
		ops = append(ops, clientv3.OpPut(e.leaseKey(l.Addr), string(encodeLease(l))), clientv3.OpPut(e.ownerKey(l.Owner), l.Addr.String()))
	}
	for a, t := range st.Released {
		ops = append(ops, clientv3.OpPut(e.releasedKey(a), t.UTC().Format(time.RFC3339Nano)))
	}
	for a, c := range st.Holders {
		ops = append(ops, clientv3.OpPut(e.holderKey(a), string(encodeHolder(c))))
	}
	for _, r := range st.Reservations {
		ops = append(ops, clientv3.OpPut(e.reservationKey(r.Client), r.Addr.String()))
	}
	if Summarize(State{Settings: st.Settings}).Settings {
		ops = append(ops, clientv3.OpPut(e.settingsKey(), string(encodeSettings(st.Settings))))
	}
	for _, d := range st.Dataplanes {
		ops = append(ops, clientv3.OpPut(e.dataplaneKey(d.ID), string(encodeDataplane(d))))
	}
	for len(ops) > 0 {
		n := min(len(ops), maxRestoreOps)
		if err := run(ops[:n]...); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return run(clientv3.OpDelete(e.prefix+"meta/"+metaRestoring), clientv3.OpPut(e.prefix+"meta/"+metaRestoredFrom, snap.ID))
}

func (e *Etcd) RestoreStatus(ctx context.Context) (RestoreStatus, error) {
	resp, err := e.cli.Get(ctx, e.prefix+"meta/", clientv3.WithPrefix())
	if err != nil {
		return RestoreStatus{}, err
	}
	var rs RestoreStatus
	for _, kv := range resp.Kvs {
		switch strings.TrimPrefix(string(kv.Key), e.prefix+"meta/") {
		case metaRestoring:
			rs.Interrupted = string(kv.Value)
		case metaRestoredFrom:
			rs.From = string(kv.Value)
		}
	}
	return rs, nil
}

// Probe writes the time to meta/probe (fenced like every write).
func (e *Etcd) Probe(ctx context.Context) error {
	return e.put(ctx, e.prefix+"meta/"+metaProbe, time.Now().UTC().Format(time.RFC3339Nano))
}

func (m *Memory) Backup(ctx context.Context, w io.Writer) (int64, error) {
	st, err := m.Load(ctx)
	if err != nil {
		return 0, err
	}
	return writeBackup(st, w)
}

func (m *Memory) Restore(ctx context.Context, snap Snapshot) error {
	if err := checkState(snap.State); err != nil {
		return err
	}
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	st := snap.State
	m.leases = make(map[netip.Addr]Lease)
	m.owners = make(map[Owner]netip.Addr)
	m.released = make(map[netip.Addr]time.Time)
	m.holders = make(map[netip.Addr]netip.Addr)
	m.reservations = make(map[netip.Prefix]netip.Addr)
	m.dataplanes = make(map[string]Dataplane)
	for _, l := range st.Leases {
		l.LeasedAt = l.LeasedAt.UTC()
		m.leases[l.Addr], m.owners[l.Owner] = l, l.Addr
	}
	for a, t := range st.Released {
		m.released[a] = t.UTC()
	}
	for a, c := range st.Holders {
		m.holders[a] = c
	}
	for _, r := range st.Reservations {
		m.reservations[r.Client] = r.Addr
	}
	for _, d := range st.Dataplanes {
		d.RegisteredAt = d.RegisteredAt.UTC()
		m.dataplanes[d.ID] = d
	}
	m.settings = st.Settings
	m.settings.DNS = append([]netip.Addr(nil), st.Settings.DNS...)
	m.restoredFrom = snap.ID
	return nil
}

func (m *Memory) RestoreStatus(ctx context.Context) (RestoreStatus, error) {
	if err := m.lock(ctx); err != nil {
		return RestoreStatus{}, err
	}
	defer m.mu.Unlock()
	return RestoreStatus{From: m.restoredFrom}, nil
}

// Probe always succeeds: memory takes every write.
func (m *Memory) Probe(context.Context) error { return nil }
