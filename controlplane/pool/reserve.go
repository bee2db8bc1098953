package pool

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Reservation binds a client IPv6 address (a /128) or prefix to an address.
type Reservation struct {
	Client netip.Prefix
	Addr   netip.Addr
}

// ReservationError explains why a reservation was refused.
type ReservationError struct{ Msg string }

func (e *ReservationError) Error() string { return e.Msg }

func (x *Index) matchLocked(client netip.Addr) (uint32, bool) {
	if len(x.byClient) == 0 || !client.IsValid() {
		return 0, false
	}
	client = client.Unmap()
	for bits := client.BitLen(); bits >= 0; bits-- {
		pf, err := client.Prefix(bits)
		if err != nil {
			continue
		}
		if v, ok := x.byClient[pf]; ok {
			return v, true
		}
	}
	return 0, false
}

// Match returns the reservation for client: the most specific one.
func (x *Index) Match(client netip.Addr) (Reservation, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v, ok := x.matchLocked(client)
	if !ok {
		return Reservation{}, false
	}
	return Reservation{Client: x.reserved[v], Addr: addr(v)}, true
}

// CheckReservation reports whether r could be set: the address must be a
// client address in the range, and not reserved for another client.
func (x *Index) CheckReservation(r Reservation) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.checkReservationLocked(r)
}

func (x *Index) checkReservationLocked(r Reservation) error {
	if !r.Client.IsValid() || r.Client.Addr().Is4() || r.Client.Masked() != r.Client {
		return &ReservationError{fmt.Sprintf("client %s: want an IPv6 address or prefix (host bits clear)", r.Client)}
	}
	if !r.Addr.Is4() || !x.prefix.Contains(r.Addr) {
		return &ReservationError{fmt.Sprintf("%s is not an address of the pool %s", r.Addr, x.prefix)}
	}
	v := u32(r.Addr)
	if !x.inRange(v) {
		return &ReservationError{fmt.Sprintf("%s is outside the client range %s-%s", r.Addr, addr(x.first), addr(x.last))}
	}
	if c, ok := x.reserved[v]; ok && c != r.Client {
		return &ReservationError{fmt.Sprintf("%s is reserved for %s already", r.Addr, c)}
	}
	return nil
}

// SetReservation creates or replaces the reservation of r.Client. The
// address it replaces, unless leased, is queued as released at now.
func (x *Index) SetReservation(r Reservation, now time.Time) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.checkReservationLocked(r); err != nil {
		return err
	}
	x.setReservationLocked(r, now)
	return nil
}

// RestoreReservation records a stored reservation without the range check
// (the range may have been narrowed by a flag since).
func (x *Index) RestoreReservation(r Reservation) error {
	if !r.Addr.Is4() || !x.prefix.Contains(r.Addr) {
		return fmt.Errorf("reservation %s -> %s: not an address of the pool %s", r.Client, r.Addr, x.prefix)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if c, ok := x.reserved[u32(r.Addr)]; ok && c != r.Client {
		return fmt.Errorf("reservation %s -> %s: reserved for %s already", r.Client, r.Addr, c)
	}
	x.setReservationLocked(r, time.Time{})
	return nil
}

func (x *Index) setReservationLocked(r Reservation, now time.Time) {
	if old, ok := x.byClient[r.Client]; ok {
		x.unreserveLocked(old, now)
	}
	v := u32(r.Addr)
	x.reserved[v] = r.Client
	x.byClient[r.Client] = v
}

func (x *Index) unreserveLocked(v uint32, now time.Time) {
	c := x.reserved[v]
	delete(x.reserved, v)
	delete(x.byClient, c)
	if _, h := x.byAddr[v]; !h {
		x.free.pushBack(v, now)
		x.refileLocked(v)
	}
}

// DeleteReservation removes the reservation of client; its address, unless
// leased, is queued as released at now.
func (x *Index) DeleteReservation(client netip.Prefix, now time.Time) (netip.Addr, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v, ok := x.byClient[client]
	if !ok {
		return netip.Addr{}, false
	}
	x.unreserveLocked(v, now)
	return addr(v), true
}

// Reservations lists the reservations by client.
func (x *Index) Reservations() []Reservation {
	x.mu.Lock()
	out := make([]Reservation, 0, len(x.byClient))
	for c, v := range x.byClient {
		out = append(out, Reservation{Client: c, Addr: addr(v)})
	}
	x.mu.Unlock()
	slices.SortFunc(out, func(a, b Reservation) int {
		if c := a.Client.Addr().Compare(b.Client.Addr()); c != 0 {
			return c
		}
		return a.Client.Bits() - b.Client.Bits()
	})
	return out
}
