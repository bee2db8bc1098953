package store

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The record decoders read what a file or etcd holds: they return errors,
// never panic, and what they accept encodes back to the same record.

func FuzzDecodeLease(f *testing.F) {
	f.Add(encodeLease(Lease{Addr: netip.MustParseAddr("13.8.0.2"), Owner: Owner{Dataplane: "dp1", Session: "s1"},
		InstanceID: "i", ClientIPv6: netip.MustParseAddr("fd00::2"), ClientPort: 4000, LeasedAt: time.Unix(1e9, 5)}))
	f.Add([]byte(`{"addr":"13.8.0.2","dataplane":"d","session":"s","leased_at":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"addr":"fd00::1","dataplane":"d","session":"s"}`))
	f.Add([]byte(`{"addr":"13.8.0.2","client_ipv6":"x"}`))
	f.Add([]byte(`{"addr":`))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLease(b)
		if err != nil {
			return
		}
		if !l.Addr.Is4() || l.Dataplane == "" || l.Session == "" {
			t.Fatalf("accepted %+v", l)
		}
		l2, err := decodeLease(encodeLease(l))
		if err != nil || l2.Addr != l.Addr || l2.Owner != l.Owner || l2.ClientIPv6 != l.ClientIPv6 || !l2.LeasedAt.Equal(l.LeasedAt) {
			t.Fatalf("round trip of %+v: %+v %v", l, l2, err)
		}
	})
}

func FuzzDecodeSettings(f *testing.F) {
	f.Add(encodeSettings(Settings{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, RangeFirst: netip.MustParseAddr("13.8.0.2"), RangeLast: netip.MustParseAddr("13.8.0.9")}))
	f.Add([]byte(`{"whole_prefix":true}`))
	f.Add([]byte(`{"dns":["::1"]}`))
	f.Add([]byte(`{"range_first":"x"}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSettings(b)
		if err != nil {
			return
		}
		for _, a := range append(append([]netip.Addr{}, s.DNS...), s.RangeFirst, s.RangeLast) {
			if a.IsValid() && !a.Is4() {
				t.Fatalf("accepted %+v", s)
			}
		}
		s2, err := decodeSettings(encodeSettings(s))
		if err != nil || fmt.Sprint(s2) != fmt.Sprint(s) {
			t.Fatalf("round trip of %+v: %+v %v", s, s2, err)
		}
	})
}

func FuzzDecodeDataplane(f *testing.F) {
	f.Add(encodeDataplane(Dataplane{ID: "dp1", InstanceID: "i", Draining: true, RegisteredAt: time.Unix(1e9, 0)}))
	f.Add([]byte(`{"id":""}`))
	f.Add([]byte(`{"id":5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeDataplane(b)
		if err != nil {
			return
		}
		if d.ID == "" {
			t.Fatalf("accepted %+v", d)
		}
		d2, err := decodeDataplane(encodeDataplane(d))
		if err != nil || d2.ID != d.ID || d2.Draining != d.Draining || !d2.RegisteredAt.Equal(d.RegisteredAt) {
			t.Fatalf("round trip of %+v: %+v %v", d, d2, err)
		}
	})
}

func FuzzDecodeReservation(f *testing.F) {
	f.Add([]byte("fd00:46::/64"), []byte("13.8.0.9"))
	f.Add([]byte("fd00:46::2/128"), []byte("13.8.0.9"))
	f.Add([]byte("13.8.0.0/24"), []byte("13.8.0.9"))
	f.Add([]byte("fd00:46::1/64"), []byte("fd00::"))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		r, err := decodeReservation(k, v)
		if err != nil {
			return
		}
		if !r.Client.Addr().Is6() || !r.Addr.Is4() || r.Client.Masked() != r.Client {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzDecodeTime(f *testing.F) {
	f.Add(encodeTime(time.Unix(1e9, 7)))
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if tm, err := decodeTime(b); err == nil {
			if tm2, err := decodeTime(encodeTime(tm)); err != nil || !tm2.Equal(tm) {
				t.Fatalf("round trip of %v: %v %v", tm, tm2, err)
			}
		}
	})
}

// seedStateFile is a small healthy state file.
func seedStateFile(f *testing.F) []byte {
	f.Helper()
	path := filepath.Join(f.TempDir(), "seed.db")
	s, err := OpenBolt(path)
	if err != nil {
		f.Fatal(err)
	}
	ctx := f.Context()
	for i := range 40 {
		l := Lease{Addr: netip.AddrFrom4([4]byte{13, 8, 0, byte(i + 2)}), Owner: Owner{Dataplane: "dp1", Session: fmt.Sprint(i)}}
		if _, _, err := s.Claim(ctx, l); err != nil {
			f.Fatal(err)
		}
	}
	s.PutReservation(ctx, Reservation{Client: netip.MustParsePrefix("fd00::/64"), Addr: netip.MustParseAddr("13.8.0.200")})
	s.PutSettings(ctx, Settings{DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	s.PutDataplane(ctx, Dataplane{ID: "dp1"})
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// applyEdits damages a copy of file by edits, read as 5-byte steps: a
// little-endian offset (modulo the file's length) and a byte to XOR there.
// A trailing 1 to 4 bytes cut the file to that fraction (in 256ths) of its
// length. Small inputs, so the fuzzer mutates fast.
func applyEdits(file, edits []byte) []byte {
	b := bytes.Clone(file)
	for len(edits) >= 5 && len(b) > 0 {
		off := int(uint32(edits[0]) | uint32(edits[1])<<8 | uint32(edits[2])<<16 | uint32(edits[3])<<24)
		b[off%len(b)] ^= edits[4]
		edits = edits[5:]
	}
	if len(edits) > 0 {
		b = b[:len(b)*int(edits[0])/256]
	}
	return b
}

func addEditSeeds(f *testing.F) {
	f.Add([]byte{})
	for _, off := range []uint32{20, 40, 56, 4096 + 60, 2*4096 + 10, 2*4096 + 17, 3*4096 + 8, 3*4096 + 30, 5*4096 + 40} {
		f.Add([]byte{byte(off), byte(off >> 8), byte(off >> 16), byte(off >> 24), 0xff})
	}
	f.Add([]byte{128})
	f.Add([]byte{0, 0x30, 0, 0, 0x01, 200})
}

// FuzzCheckBoltPages: the page walker reads any damage of a state file
// without panicking.
func FuzzCheckBoltPages(f *testing.F) {
	seed := seedStateFile(f)
	addEditSeeds(f)
	f.Fuzz(func(t *testing.T, edits []byte) {
		b := applyEdits(seed, edits)
		checkBoltPages(bytes.NewReader(b), int64(len(b)), "fuzz")
	})
}

// FuzzOpenBolt: any damage of a state file is refused with a StateError,
// or the file opens, loads and takes a write; bbolt never panics or faults
// on it.
func FuzzOpenBolt(f *testing.F) {
	seed := seedStateFile(f)
	addEditSeeds(f)
	f.Fuzz(func(t *testing.T, edits []byte) {
		path := filepath.Join(t.TempDir(), "state.db")
		if err := os.WriteFile(path, applyEdits(seed, edits), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenBolt(path)
		if err != nil {
			var se *StateError
			if !errors.As(err, &se) {
				t.Fatalf("not a StateError: %v", err)
			}
			return
		}
		defer s.Close()
		if _, err := s.Load(t.Context()); err != nil {
			return
		}
		s.Claim(t.Context(), Lease{Addr: netip.MustParseAddr("13.8.1.1"), Owner: Owner{Dataplane: "x", Session: "y"}})
	})
}
