package store

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// Records are stored as JSON in both bbolt and etcd: readable with
// etcdctl and bbolt's CLI, and tolerant of added fields.

type leaseRecord struct {
	Addr       string    `json:"addr"`
	Dataplane  string    `json:"dataplane"`
	Session    string    `json:"session"`
	Instance   string    `json:"instance,omitempty"`
	ClientIPv6 string    `json:"client_ipv6,omitempty"`
	ClientPort uint16    `json:"client_port,omitempty"`
	LeasedAt   time.Time `json:"leased_at"`
	Sticky     bool      `json:"sticky,omitempty"`
}

func encodeLease(l Lease) []byte {
	r := leaseRecord{
		Addr: l.Addr.String(), Dataplane: l.Dataplane, Session: l.Session, Instance: l.InstanceID,
		ClientPort: l.ClientPort, LeasedAt: l.LeasedAt.UTC(), Sticky: l.Sticky,
	}
	if l.ClientIPv6.IsValid() {
		r.ClientIPv6 = l.ClientIPv6.String()
	}
	b, _ := json.Marshal(r)
	return b
}

// decodeLease decodes and checks a stored lease: an IPv4 address, an
// owner, a client address if any.
func decodeLease(b []byte) (Lease, error) {
	var r leaseRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Lease{}, fmt.Errorf("decode lease: %w", err)
	}
	a, err := netip.ParseAddr(r.Addr)
	if err != nil {
		return Lease{}, fmt.Errorf("decode lease: address %q: %w", r.Addr, err)
	}
	l := Lease{
		Addr: a, Owner: Owner{Dataplane: r.Dataplane, Session: r.Session}, InstanceID: r.Instance,
		ClientPort: r.ClientPort, LeasedAt: r.LeasedAt, Sticky: r.Sticky,
	}
	if r.ClientIPv6 != "" {
		if l.ClientIPv6, err = netip.ParseAddr(r.ClientIPv6); err != nil {
			return Lease{}, fmt.Errorf("decode lease %s: client %q: %w", a, r.ClientIPv6, err)
		}
	}
	if err := CheckLease(l); err != nil {
		return Lease{}, fmt.Errorf("decode lease: %w", err)
	}
	return l, nil
}

type settingsRecord struct {
	DNS         []string `json:"dns,omitempty"`
	RangeFirst  string   `json:"range_first,omitempty"`
	RangeLast   string   `json:"range_last,omitempty"`
	WholePrefix bool     `json:"whole_prefix,omitempty"`
}

func encodeSettings(s Settings) []byte {
	var r settingsRecord
	for _, d := range s.DNS {
		r.DNS = append(r.DNS, d.String())
	}
	if s.RangeFirst.IsValid() {
		r.RangeFirst = s.RangeFirst.String()
	}
	if s.RangeLast.IsValid() {
		r.RangeLast = s.RangeLast.String()
	}
	r.WholePrefix = s.WholePrefix
	b, _ := json.Marshal(r)
	return b
}

func decodeSettings(b []byte) (Settings, error) {
	var r settingsRecord
	var s Settings
	if len(b) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return s, fmt.Errorf("decode settings: %w", err)
	}
	for _, d := range r.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil || !a.Is4() {
			return s, fmt.Errorf("decode settings: DNS server %q is not an IPv4 address", d)
		}
		s.DNS = append(s.DNS, a)
	}
	for _, f := range []struct {
		dst *netip.Addr
		s   string
	}{{&s.RangeFirst, r.RangeFirst}, {&s.RangeLast, r.RangeLast}} {
		if f.s == "" {
			continue
		}
		a, err := netip.ParseAddr(f.s)
		if err != nil || !a.Is4() {
			return s, fmt.Errorf("decode settings: pool range bound %q is not an IPv4 address", f.s)
		}
		*f.dst = a
	}
	s.WholePrefix = r.WholePrefix
	return s, nil
}

type dataplaneRecord struct {
	ID           string    `json:"id"`
	InstanceID   string    `json:"instance,omitempty"`
	Version      string    `json:"version,omitempty"`
	ClientListen string    `json:"client_listen,omitempty"`
	APIAddress   string    `json:"api_address,omitempty"`
	Draining     bool      `json:"draining,omitempty"`
	RegisteredAt time.Time `json:"registered_at"`
	StoppedAt    time.Time `json:"stopped_at,omitzero"`
}

func encodeDataplane(d Dataplane) []byte {
	r := dataplaneRecord{
		ID: d.ID, InstanceID: d.InstanceID, Version: d.Version, ClientListen: d.ClientListen,
		APIAddress: d.APIAddress, Draining: d.Draining, RegisteredAt: d.RegisteredAt.UTC(),
	}
	if !d.StoppedAt.IsZero() {
		r.StoppedAt = d.StoppedAt.UTC()
	}
	b, _ := json.Marshal(r)
	return b
}

func decodeDataplane(b []byte) (Dataplane, error) {
	var r dataplaneRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Dataplane{}, fmt.Errorf("decode data plane: %w", err)
	}
	if r.ID == "" {
		return Dataplane{}, fmt.Errorf("decode data plane: no id")
	}
	return Dataplane(r), nil
}

func encodeTime(t time.Time) []byte {
	b, _ := t.UTC().MarshalBinary()
	return b
}

func decodeTime(b []byte) (time.Time, error) {
	var t time.Time
	err := t.UnmarshalBinary(b)
	return t, err
}

// decodeReservation decodes a reservation: an IPv6 client prefix (host bits
// clear) and an IPv4 address.
func decodeReservation(key, val []byte) (Reservation, error) {
	p, err := netip.ParsePrefix(string(key))
	if err != nil {
		return Reservation{}, fmt.Errorf("decode reservation key %q: %w", key, err)
	}
	if !p.Addr().Is6() || p.Addr().Is4In6() || p.Masked() != p {
		return Reservation{}, fmt.Errorf("decode reservation key %q: not an IPv6 prefix with its host bits clear", key)
	}
	a, err := netip.ParseAddr(string(val))
	if err != nil {
		return Reservation{}, fmt.Errorf("decode reservation %s: %w", p, err)
	}
	if !a.Is4() {
		return Reservation{}, fmt.Errorf("decode reservation %s: %s is not an IPv4 address", p, a)
	}
	return Reservation{Client: p, Addr: a}, nil
}

// holderOf is the last holder a released lease leaves on its address: its
// client's IPv6 address, if it has one (false: forget the address's).
func holderOf(l Lease) (netip.Addr, bool) {
	if !l.ClientIPv6.Is6() || l.ClientIPv6.Is4In6() {
		return netip.Addr{}, false
	}
	return l.ClientIPv6.WithZone(""), true
}

// encodeHolder is a last holder as stored: its IPv6 address as text.
func encodeHolder(a netip.Addr) []byte { return []byte(a.String()) }

// decodeHolder decodes and checks a stored last holder: an IPv6 address.
func decodeHolder(b []byte) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(b))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("decode last holder: %w", err)
	}
	if !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("decode last holder: %s is not an IPv6 client address", a)
	}
	return a, nil
}
