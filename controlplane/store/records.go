package store

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// A loader builds a State from the records of one store (bbolt or etcd),
// checks every record as it comes, then the owner index against the leases.
//
// What a damaged record does, by kind:
//
//   - leases, the owner index, reservations, settings: fatal (Load fails
//     with a *StateError naming the record). A lease skipped would leave its
//     address free while its client uses it, and the owner index is what
//     makes a repeated allocation return the same lease; a reservation or
//     a setting skipped would silently undo an operator's change. None of
//     these can be guessed, so the controller refuses to start rather than
//     run on a state it does not have.
//   - release times, last holders, data-plane registry entries: skipped,
//     each with an ERROR log line naming it and what it costs. A release
//     time only orders the reuse of free addresses (the address may be
//     reused before its cooldown); a last holder only lets a returning
//     client have its address back (without it, the client gets another
//     one); a data plane's entry is written again when it registers (a
//     drained data plane must be drained again). Refusing to start over
//     one of these would cost every client its service for what costs one
//     client its address.
type loader struct {
	where    string
	st       State
	ownerKey func(Owner) string // the owner index's key, as the store writes it
	owners   map[string]netip.Addr
	log      *slog.Logger // skipped records; nil: not logged (a check before the real load)
}

func newLoader(where string, ownerKey func(Owner) string, log *slog.Logger) *loader {
	return &loader{
		where:    where,
		st:       State{Released: make(map[netip.Addr]time.Time), Holders: make(map[netip.Addr]netip.Addr)},
		ownerKey: ownerKey,
		owners:   make(map[string]netip.Addr),
		log:      log,
	}
}

func (l *loader) fatal(format string, args ...any) error { return corrupt(l.where, format, args...) }

// skip logs a record left out of the state.
func (l *loader) skip(kind, key string, err error, effect string) {
	if l.log != nil {
		l.log.Error("skipping a damaged record of the state", "store", l.where, "record", kind, "key", key,
			"error", err, "effect", effect)
	}
}

// lease adds the lease stored under addr (key names it in messages).
func (l *loader) lease(addr netip.Addr, key string, val []byte) error {
	if val == nil {
		return l.fatal("lease %s: a nested bucket where a lease belongs", key)
	}
	le, err := decodeLease(val)
	if err != nil {
		return l.fatal("lease %s: %v", key, err)
	}
	if le.Addr != addr {
		return l.fatal("lease %s: the record is for address %s", key, le.Addr)
	}
	l.st.Leases = append(l.st.Leases, le)
	return nil
}

// owner adds an owner index entry: key (as stored) names the address a
// session holds.
func (l *loader) owner(key string, addr netip.Addr) {
	l.owners[key] = addr
}

func (l *loader) released(addr netip.Addr, t time.Time, key string, err error) {
	if err != nil {
		l.skip("release time", key, err, "the address may be reused before its cooldown")
		return
	}
	l.st.Released[addr] = t
}

// holder adds the last holder stored for addr (val nil: a nested bucket).
func (l *loader) holder(addr netip.Addr, key string, val []byte, err error) {
	if err == nil && val == nil {
		err = fmt.Errorf("a nested bucket where a last holder belongs")
	}
	var c netip.Addr
	if err == nil {
		c, err = decodeHolder(val)
	}
	if err != nil {
		l.skip("last holder", key, err, "the address's last holder is forgotten: that client gets another address when it returns")
		return
	}
	l.st.Holders[addr] = c
}

func (l *loader) reservation(key, val []byte) error {
	if val == nil {
		return l.fatal("reservation %q: a nested bucket where a reservation belongs", clipKey(key))
	}
	r, err := decodeReservation(key, val)
	if err != nil {
		return l.fatal("reservation %q: %v", clipKey(key), err)
	}
	l.st.Reservations = append(l.st.Reservations, r)
	return nil
}

func (l *loader) settings(val []byte) error {
	s, err := decodeSettings(val)
	if err != nil {
		return l.fatal("settings: %v", err)
	}
	l.st.Settings = s
	return nil
}

func (l *loader) dataplane(id string, val []byte) {
	const effect = "the data plane is unknown until it registers again (drain it again if it was drained)"
	if val == nil {
		l.skip("data plane", id, fmt.Errorf("a nested bucket where a data plane belongs"), effect)
		return
	}
	d, err := decodeDataplane(val)
	if err == nil && d.ID != id {
		err = fmt.Errorf("the record is for data plane %q", d.ID)
	}
	if err != nil {
		l.skip("data plane", id, err, effect)
		return
	}
	l.st.Dataplanes = append(l.st.Dataplanes, d)
}

// finish checks that the owner index and the leases are one relation and
// returns the state.
func (l *loader) finish() (State, error) {
	for _, le := range l.st.Leases {
		k := l.ownerKey(le.Owner)
		a, ok := l.owners[k]
		switch {
		case !ok:
			return State{}, l.fatal("lease %s of %s has no entry in the owner index", le.Addr, le.Owner)
		case a != le.Addr:
			return State{}, l.fatal("the owner index maps %s to %s, but its lease is on %s", le.Owner, a, le.Addr)
		}
		delete(l.owners, k)
	}
	for k, a := range l.owners {
		return State{}, l.fatal("the owner index entry %q points to %s, which holds no lease of that owner", clipKey([]byte(k)), a)
	}
	sortState(&l.st)
	return l.st, nil
}
