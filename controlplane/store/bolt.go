package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket layout of the bbolt file (format 1):
//
//	meta          "format" -> "1"
//	leases        addr (4 bytes, big endian) -> lease (JSON)
//	owners        dataplane 0x00 session -> addr (4 bytes)
//	released      addr (4 bytes) -> release time (time.MarshalBinary)
//	holders       addr (4 bytes) -> last holder: client IPv6 address (text)
//	reservations  client prefix ("fd00::/64", "fd00::2/128") -> IPv4 address (text)
//	settings      "settings" -> settings (JSON)
//	dataplanes    id -> data plane (JSON)
var (
	bktMeta         = []byte("meta")
	bktLeases       = []byte("leases")
	bktOwners       = []byte("owners")
	bktReleased     = []byte("released")
	bktHolders      = []byte("holders")
	bktReservations = []byte("reservations")
	bktSettings     = []byte("settings")
	bktDataplanes   = []byte("dataplanes")
	keyFormat       = []byte("format")
	keySettings     = []byte("settings")
)

const boltFormat = "1"

// maxBatch bounds how many writes share one bbolt transaction.
const maxBatch = 512

// Bolt is the embedded store: one bbolt file. Writes go through a group
// commit: a single committer goroutine takes every write waiting at that
// moment, applies them in one transaction and fsyncs once; each caller
// returns after the commit that holds its write. A lone write waits for no
// timer (unlike bbolt's Batch), and under load one fsync serves many.
type Bolt struct {
	db   *bolt.DB
	path string
	log  *slog.Logger

	// broken is set when bbolt panicked or faulted on the file while
	// running: the file changed under the controller or its disk returns
	// garbage. Every later call fails with it rather than trust the file.
	broken atomic.Pointer[StateError]

	ops     chan *boltOp
	stop    chan struct{}
	stopped chan struct{}

	mu     sync.RWMutex // held for reading while queueing a write
	closed bool
}

type boltOp struct {
	// fn runs inside the shared write transaction. It must validate
	// before it writes: an error from fn is returned to its caller only
	// and must leave the transaction unchanged.
	fn   func(tx *bolt.Tx) error
	done chan error
}

var _ Store = (*Bolt)(nil)

func (b *Bolt) commitLoop() {
	defer close(b.stopped)
	batch := make([]*boltOp, 0, maxBatch)
	for {
		select {
		case op := <-b.ops:
			batch = append(batch[:0], op)
		case <-b.stop:
			// Finish what was queued before Close, then stop.
			for {
				select {
				case op := <-b.ops:
					b.commit([]*boltOp{op})
				default:
					return
				}
			}
		}
	more:
		for len(batch) < maxBatch {
			select {
			case op := <-b.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		b.commit(batch)
	}
}

// commit applies a batch in one transaction. Errors of single operations
// go to their callers; a failed commit goes to all.
func (b *Bolt) commit(batch []*boltOp) {
	errs := make([]error, len(batch))
	err := b.guarded(func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			for i, op := range batch {
				errs[i] = op.fn(tx)
			}
			return nil
		})
	})
	var se *StateError
	for i, op := range batch {
		switch {
		case errors.As(err, &se):
			op.done <- err
		case err != nil:
			op.done <- fmt.Errorf("commit to %s: %w", b.path, err)
		default:
			op.done <- errs[i]
		}
	}
}

// write queues fn for the next commit and waits until it is committed.
// Once queued, the write is waited for even if ctx ends, so that a caller
// never returns while its write may still land.
func (b *Bolt) write(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if se := b.broken.Load(); se != nil {
		return se
	}
	op := &boltOp{fn: fn, done: make(chan error, 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return ErrClosed
	}
	select {
	case b.ops <- op:
	case <-ctx.Done():
		b.mu.RUnlock()
		return ctx.Err()
	}
	b.mu.RUnlock()
	return <-op.done
}

func (b *Bolt) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	return b.guarded(func() error { return b.db.View(fn) })
}

// guarded runs a bbolt call (see guard). A panic or fault marks the store
// broken: this call and every later one fail with a *StateError.
func (b *Bolt) guarded(fn func() error) error {
	if se := b.broken.Load(); se != nil {
		return se
	}
	err := guard(fn)
	var pe *panicError
	if !errors.As(err, &pe) {
		return err
	}
	se := &StateError{Where: b.path, Kind: ErrCorrupt, Detail: fmt.Sprintf(
		"bbolt failed on it while running (%v): the file was changed or damaged under the controller; every later store call fails until it is restarted", pe.value)}
	if b.broken.CompareAndSwap(nil, se) {
		b.log.Error("the state file is damaged: refusing every further store call", "path", b.path,
			"panic", fmt.Sprint(pe.value), "stack", pe.stack)
	}
	return b.broken.Load()
}

func addrKey(a netip.Addr) []byte {
	k := a.As4()
	return k[:]
}

func keyAddr(k []byte) netip.Addr {
	if len(k) != 4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(k))
}

func ownerKey(o Owner) []byte {
	k := make([]byte, 0, len(o.Dataplane)+1+len(o.Session))
	k = append(k, o.Dataplane...)
	k = append(k, 0)
	return append(k, o.Session...)
}

func (b *Bolt) Claim(ctx context.Context, l Lease) (Lease, bool, error) {
	if err := CheckLease(l); err != nil {
		return Lease{}, false, err
	}
	l.LeasedAt = l.LeasedAt.UTC()
	var held Lease
	var existing bool
	err := b.write(ctx, func(tx *bolt.Tx) error {
		held, existing = Lease{}, false
		leases, owners := tx.Bucket(bktLeases), tx.Bucket(bktOwners)
		ok := ownerKey(l.Owner)
		if a := owners.Get(ok); a != nil {
			v := leases.Get(a)
			if v == nil {
				return fmt.Errorf("state is inconsistent: %s maps to %v, which holds no lease", l.Owner, keyAddr(a))
			}
			prev, err := decodeLease(v)
			if err != nil {
				return err
			}
			held, existing = prev, true
			return nil
		}
		ak := addrKey(l.Addr)
		if leases.Get(ak) != nil {
			return ErrTaken
		}
		if err := leases.Put(ak, encodeLease(l)); err != nil {
			return err
		}
		if err := owners.Put(ok, ak); err != nil {
			return err
		}
		if err := tx.Bucket(bktReleased).Delete(ak); err != nil {
			return err
		}
		if err := tx.Bucket(bktHolders).Delete(ak); err != nil {
			return err
		}
		held = l
		return nil
	})
	if err != nil {
		return Lease{}, false, err
	}
	return held, existing, nil
}

func (b *Bolt) Release(ctx context.Context, addr netip.Addr, owner Owner, at time.Time) (bool, error) {
	if !addr.Is4() {
		return false, nil
	}
	var released bool
	err := b.write(ctx, func(tx *bolt.Tx) error {
		released = false
		leases := tx.Bucket(bktLeases)
		ak := addrKey(addr)
		v := leases.Get(ak)
		if v == nil {
			return nil
		}
		l, err := decodeLease(v)
		if err != nil {
			return err
		}
		if l.Owner != owner {
			return nil
		}
		if err := leases.Delete(ak); err != nil {
			return err
		}
		if err := tx.Bucket(bktOwners).Delete(ownerKey(owner)); err != nil {
			return err
		}
		if err := tx.Bucket(bktReleased).Put(ak, encodeTime(at)); err != nil {
			return err
		}
		if err := putHolder(tx.Bucket(bktHolders), ak, l); err != nil {
			return err
		}
		released = true
		return nil
	})
	return released, err
}

// ReleaseMany frees every lease of rs that its owner holds in one write
// of the group commit: it reads and checks them all, then writes, so a
// lease that cannot be decoded fails the batch with nothing written.
func (b *Bolt) ReleaseMany(ctx context.Context, rs []Release, at time.Time) ([]bool, error) {
	out := make([]bool, len(rs))
	if len(rs) == 0 {
		return out, nil
	}
	tv := encodeTime(at)
	err := b.write(ctx, func(tx *bolt.Tx) error {
		clear(out)
		leases := tx.Bucket(bktLeases)
		seen := make(map[netip.Addr]bool, len(rs))
		held := make([]Lease, len(rs))
		for i, r := range rs {
			if !r.Addr.Is4() || seen[r.Addr] {
				continue
			}
			v := leases.Get(addrKey(r.Addr))
			if v == nil {
				continue
			}
			l, err := decodeLease(v)
			if err != nil {
				return err
			}
			if l.Owner == r.Owner {
				out[i], seen[r.Addr], held[i] = true, true, l
			}
		}
		// Written in key order: bbolt inserts into a node by moving its
		// tail, so many keys in random order into one node (a batch into
		// a fresh "released" bucket) would cost the square of their number.
		order := make([]int, 0, len(rs))
		for i := range rs {
			if out[i] {
				order = append(order, i)
			}
		}
		slices.SortFunc(order, func(a, b int) int { return rs[a].Addr.Compare(rs[b].Addr) })
		owners, released, holders := tx.Bucket(bktOwners), tx.Bucket(bktReleased), tx.Bucket(bktHolders)
		for _, i := range order {
			r := rs[i]
			ak := addrKey(r.Addr)
			if err := leases.Delete(ak); err != nil {
				return err
			}
			if err := owners.Delete(ownerKey(r.Owner)); err != nil {
				return err
			}
			if err := released.Put(ak, tv); err != nil {
				return err
			}
			if err := putHolder(holders, ak, held[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// putHolder records l's client as the last holder of its address ak, or
// forgets the address's holder when l has none.
func putHolder(bk *bolt.Bucket, ak []byte, l Lease) error {
	if c, ok := holderOf(l); ok {
		return bk.Put(ak, encodeHolder(c))
	}
	return bk.Delete(ak)
}

func (b *Bolt) Lease(ctx context.Context, addr netip.Addr) (Lease, bool, error) {
	if !addr.Is4() {
		return Lease{}, false, nil
	}
	var l Lease
	var found bool
	err := b.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bktLeases).Get(addrKey(addr))
		if v == nil {
			return nil
		}
		var err error
		l, err = decodeLease(v)
		found = err == nil
		return err
	})
	return l, found, err
}

// Load reads the whole state in one read transaction, checking every record
// (see loader for what is fatal and what is skipped).
func (b *Bolt) Load(ctx context.Context) (State, error) {
	var st State
	err := b.view(ctx, func(tx *bolt.Tx) error {
		var err error
		st, err = loadTx(tx, b.path, b.log)
		return err
	})
	if err != nil {
		return State{}, err
	}
	return st, nil
}

func (b *Bolt) PutReservation(ctx context.Context, r Reservation) (bool, error) {
	var changed bool
	err := b.write(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bktReservations)
		k := []byte(r.Client.String())
		v := []byte(r.Addr.String())
		changed = string(bk.Get(k)) != string(v)
		if !changed {
			return nil
		}
		return bk.Put(k, v)
	})
	return changed, err
}

func (b *Bolt) DeleteReservation(ctx context.Context, client netip.Prefix) (bool, error) {
	var deleted bool
	err := b.write(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bktReservations)
		k := []byte(client.String())
		deleted = bk.Get(k) != nil
		if !deleted {
			return nil
		}
		return bk.Delete(k)
	})
	return deleted, err
}

func (b *Bolt) PutSettings(ctx context.Context, s Settings) error {
	v := encodeSettings(s)
	return b.write(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bktSettings).Put(keySettings, v)
	})
}

func (b *Bolt) PutDataplane(ctx context.Context, d Dataplane) error {
	if d.ID == "" {
		return invalid("data plane without id")
	}
	v := encodeDataplane(d)
	return b.write(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bktDataplanes).Put([]byte(d.ID), v)
	})
}

func (b *Bolt) DeleteDataplane(ctx context.Context, id string) (bool, error) {
	var deleted bool
	err := b.write(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bktDataplanes)
		deleted = bk.Get([]byte(id)) != nil
		if !deleted {
			return nil
		}
		return bk.Delete([]byte(id))
	})
	return deleted, err
}

func (b *Bolt) String() string { return "bbolt:" + b.path }

// Close commits what is queued and closes the file.
func (b *Bolt) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	<-b.stopped
	return b.db.Close()
}
