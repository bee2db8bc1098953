package store

import (
	"context"
	"maps"
	"net/netip"
	"sync"
	"time"
)

// Memory is a volatile Store for tests: same semantics, nothing on disk.
type Memory struct {
	mu           sync.Mutex
	closed       bool
	leases       map[netip.Addr]Lease
	owners       map[Owner]netip.Addr
	released     map[netip.Addr]time.Time
	holders      map[netip.Addr]netip.Addr
	reservations map[netip.Prefix]netip.Addr
	settings     Settings
	dataplanes   map[string]Dataplane
	restoredFrom string
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		leases:       make(map[netip.Addr]Lease),
		owners:       make(map[Owner]netip.Addr),
		released:     make(map[netip.Addr]time.Time),
		holders:      make(map[netip.Addr]netip.Addr),
		reservations: make(map[netip.Prefix]netip.Addr),
		dataplanes:   make(map[string]Dataplane),
	}
}

var _ Store = (*Memory)(nil)

func (m *Memory) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func (m *Memory) Claim(ctx context.Context, l Lease) (Lease, bool, error) {
	if err := CheckLease(l); err != nil {
		return Lease{}, false, err
	}
	if err := m.lock(ctx); err != nil {
		return Lease{}, false, err
	}
	defer m.mu.Unlock()
	if a, ok := m.owners[l.Owner]; ok {
		return m.leases[a], true, nil
	}
	if _, ok := m.leases[l.Addr]; ok {
		return Lease{}, false, ErrTaken
	}
	l.LeasedAt = l.LeasedAt.UTC()
	m.leases[l.Addr] = l
	m.owners[l.Owner] = l.Addr
	delete(m.released, l.Addr)
	delete(m.holders, l.Addr)
	return l, false, nil
}

func (m *Memory) Release(ctx context.Context, addr netip.Addr, owner Owner, at time.Time) (bool, error) {
	if err := m.lock(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	l, ok := m.leases[addr]
	if !ok || l.Owner != owner {
		return false, nil
	}
	delete(m.leases, addr)
	delete(m.owners, owner)
	m.released[addr] = at.UTC()
	m.putHolder(l)
	return true, nil
}

func (m *Memory) ReleaseMany(ctx context.Context, rs []Release, at time.Time) ([]bool, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([]bool, len(rs))
	for i, r := range rs {
		l, ok := m.leases[r.Addr]
		if !ok || l.Owner != r.Owner {
			continue
		}
		delete(m.leases, r.Addr)
		delete(m.owners, r.Owner)
		m.released[r.Addr] = at.UTC()
		m.putHolder(l)
		out[i] = true
	}
	return out, nil
}

// putHolder records l's client as its address's last holder (or forgets
// the holder when l has none).
func (m *Memory) putHolder(l Lease) {
	if c, ok := holderOf(l); ok {
		m.holders[l.Addr] = c
	} else {
		delete(m.holders, l.Addr)
	}
}

func (m *Memory) Lease(ctx context.Context, addr netip.Addr) (Lease, bool, error) {
	if err := m.lock(ctx); err != nil {
		return Lease{}, false, err
	}
	defer m.mu.Unlock()
	l, ok := m.leases[addr]
	return l, ok, nil
}

func (m *Memory) Load(ctx context.Context) (State, error) {
	if err := m.lock(ctx); err != nil {
		return State{}, err
	}
	defer m.mu.Unlock()
	st := State{Released: maps.Clone(m.released), Holders: maps.Clone(m.holders), Settings: m.settings}
	st.Settings.DNS = append([]netip.Addr(nil), m.settings.DNS...)
	for _, l := range m.leases {
		st.Leases = append(st.Leases, l)
	}
	for p, a := range m.reservations {
		st.Reservations = append(st.Reservations, Reservation{Client: p, Addr: a})
	}
	for _, d := range m.dataplanes {
		st.Dataplanes = append(st.Dataplanes, d)
	}
	sortState(&st)
	return st, nil
}

func (m *Memory) PutReservation(ctx context.Context, r Reservation) (bool, error) {
	if err := m.lock(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	if a, ok := m.reservations[r.Client]; ok && a == r.Addr {
		return false, nil
	}
	m.reservations[r.Client] = r.Addr
	return true, nil
}

func (m *Memory) DeleteReservation(ctx context.Context, client netip.Prefix) (bool, error) {
	if err := m.lock(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	_, ok := m.reservations[client]
	delete(m.reservations, client)
	return ok, nil
}

func (m *Memory) PutSettings(ctx context.Context, s Settings) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	s.DNS = append([]netip.Addr(nil), s.DNS...)
	m.settings = s
	return nil
}

func (m *Memory) PutDataplane(ctx context.Context, d Dataplane) error {
	if d.ID == "" {
		return invalid("data plane without id")
	}
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	d.RegisteredAt = d.RegisteredAt.UTC()
	if !d.StoppedAt.IsZero() {
		d.StoppedAt = d.StoppedAt.UTC()
	}
	m.dataplanes[d.ID] = d
	return nil
}

func (m *Memory) DeleteDataplane(ctx context.Context, id string) (bool, error) {
	if err := m.lock(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	_, ok := m.dataplanes[id]
	delete(m.dataplanes, id)
	return ok, nil
}

func (m *Memory) String() string { return "memory" }

func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
