package store_test

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fourover6/fourover6/controlplane/store"
)

// The corruption suite builds damaged state files from a healthy one. Page
// offsets are read here from the file itself (bbolt's on-disk layout:
// 16-byte page headers, the meta at offset 16 of pages 0 and 1), not
// through the code under test.

// baseLeases is how many leases writeState stores: enough that the leases
// bucket has its own pages (a branch and several leaves), not an inline one.
const baseLeases = 120

var baseT0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// writeState writes a healthy state file at path.
func writeState(t testing.TB, path string) {
	t.Helper()
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	for i := range baseLeases {
		l := store.Lease{
			Addr:       netip.AddrFrom4([4]byte{13, 8, byte((i + 2) >> 8), byte(i + 2)}),
			Owner:      store.Owner{Dataplane: "dp1", Session: fmt.Sprintf("session-%04d", i)},
			InstanceID: "inst-1",
			ClientIPv6: netip.MustParseAddr(fmt.Sprintf("fd00:46::%x", i+2)),
			ClientPort: uint16(40000 + i),
			LeasedAt:   baseT0.Add(time.Duration(i) * time.Second),
		}
		if _, _, err := s.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		a := netip.AddrFrom4([4]byte{13, 8, 0, byte(i + 2)})
		if ok, err := s.Release(ctx, a, store.Owner{Dataplane: "dp1", Session: fmt.Sprintf("session-%04d", i)}, baseT0.Add(time.Hour)); err != nil || !ok {
			t.Fatalf("release %s: %v %v", a, ok, err)
		}
	}
	for i, c := range []string{"fd00:46::99/128", "fd00:47::/64", "fd00:48::/56"} {
		if _, err := s.PutReservation(ctx, store.Reservation{Client: netip.MustParsePrefix(c), Addr: netip.AddrFrom4([4]byte{13, 8, 0, byte(200 + i)})}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutSettings(ctx, store.Settings{
		DNS:        []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54"), netip.MustParseAddr("192.0.2.55")},
		RangeFirst: netip.MustParseAddr("13.8.0.2"), RangeLast: netip.MustParseAddr("13.8.0.250"),
	}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []store.Dataplane{{ID: "dp1", InstanceID: "inst-1", RegisteredAt: baseT0}, {ID: "dp2", Draining: true, RegisteredAt: baseT0}} {
		if err := s.PutDataplane(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

// rawMeta is one meta page as stored.
type rawMeta struct {
	magic, version, pageSize uint32
	root, freelist, hwm      uint64
	txid                     uint64
}

const metaOff = 16 // the meta follows the page header

func readMeta(b []byte, off int) rawMeta {
	m := b[off+metaOff:]
	ne := binary.NativeEndian
	return rawMeta{
		magic: ne.Uint32(m[0:]), version: ne.Uint32(m[4:]), pageSize: ne.Uint32(m[8:]),
		root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]), hwm: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:]),
	}
}

// fixMetaChecksum recomputes the checksum of the meta page at off, so a
// crafted meta passes bbolt's own validation.
func fixMetaChecksum(b []byte, off int) {
	m := b[off+metaOff:]
	h := fnv.New64a()
	h.Write(m[:56])
	binary.NativeEndian.PutUint64(m[56:], h.Sum64())
}

// newestMeta returns the byte offset of the meta page bbolt uses (the valid
// one with the higher transaction id) and the meta.
func newestMeta(b []byte) (int, rawMeta) {
	m0 := readMeta(b, 0)
	m1 := readMeta(b, int(m0.pageSize))
	if m1.txid > m0.txid {
		return int(m0.pageSize), m1
	}
	return 0, m0
}

// bucketRoot returns the root page of a top-level bucket (0: inline).
func bucketRoot(t testing.TB, path, bucket string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root uint64
	db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket([]byte(bucket)).Root())
		return nil
	})
	return root
}

// Page header fields.
func pageFlags(b []byte, psz int, id uint64) uint16 {
	return binary.NativeEndian.Uint16(b[int(id)*psz+8:])
}

// leafOf returns a leaf page of the bucket whose root is a branch page, and
// that branch page.
func leafOf(t testing.TB, b []byte, psz int, root uint64) (branch, leaf uint64) {
	t.Helper()
	if pageFlags(b, psz, root) != 0x01 {
		t.Fatalf("root page %d of the bucket is not a branch page (flags %#x): grow baseLeases", root, pageFlags(b, psz, root))
	}
	// First branch element: pos u32, ksize u32, pgid u64.
	child := binary.NativeEndian.Uint64(b[int(root)*psz+16+8:])
	if pageFlags(b, psz, child) != 0x02 {
		t.Fatalf("page %d is not a leaf", child)
	}
	return root, child
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustWrite(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// editRaw writes a healthy state, then lets f change its bytes.
func editRaw(f func(t testing.TB, path string, b []byte) []byte) func(t testing.TB, path string) {
	return func(t testing.TB, path string) {
		writeState(t, path)
		mustWrite(t, path, f(t, path, mustRead(t, path)))
	}
}

// editBolt writes a healthy state, then changes it through bbolt itself
// (well-formed pages, bad records).
func editBolt(f func(tx *bolt.Tx) error) func(t testing.TB, path string) {
	return func(t testing.TB, path string) {
		writeState(t, path)
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(f); err != nil {
			t.Fatal(err)
		}
	}
}

func put(bucket, key, val string) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Put([]byte(key), []byte(val)) }
}

func a4(s string) string { a := netip.MustParseAddr(s).As4(); return string(a[:]) }

// How a damaged file must be handled.
type outcome int

const (
	refused  outcome = iota // OpenBolt fails with a *store.StateError
	skipped                 // opens; Load skips the bad record and logs it
	fallback                // opens on the previous transaction; logged
)

type corruption struct {
	name string
	make func(t testing.TB, path string)
	want outcome
	msg  string // in the error (refused) or the log
}

func truncateTo(n func(size int) int) func(t testing.TB, path string) {
	return func(t testing.TB, path string) {
		writeState(t, path)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, int64(n(int(fi.Size())))); err != nil {
			t.Fatal(err)
		}
	}
}

func corruptions() []corruption {
	return []corruption{
		{"zero-length file", func(t testing.TB, path string) { mustWrite(t, path, nil) }, refused, "is empty"},
		{"random bytes", func(t testing.TB, path string) {
			b := make([]byte, 64<<10)
			r := rand.NewChaCha8([32]byte{1})
			r.Read(b)
			mustWrite(t, path, b)
		}, refused, "not a bbolt database"},
		{"text file", func(t testing.TB, path string) {
			b := []byte{}
			for range 500 {
				b = append(b, "pool 13.8.0.0/24 dns 192.0.2.53\n"...)
			}
			mustWrite(t, path, b)
		}, refused, "not a bbolt database"},
		{"foreign bbolt file", func(t testing.TB, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.Update(func(tx *bolt.Tx) error {
				b, _ := tx.CreateBucket([]byte("accounts"))
				return b.Put([]byte("alice"), []byte("42"))
			})
		}, refused, "no meta bucket"},
		{"empty bbolt file", func(t testing.TB, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			db.Close()
		}, refused, "no meta bucket"},
		{"meta bucket without format", editBolt(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("meta")).Delete([]byte("format"))
		}), refused, "no format"},
		{"future format", editBolt(put("meta", "format", "2")), refused, "format \"2\""},
		{"truncated to 1 byte", truncateTo(func(int) int { return 1 }), refused, "not a bbolt database"},
		{"truncated to 100 bytes", truncateTo(func(int) int { return 100 }), refused, "truncated"},
		{"truncated after the first page", truncateTo(func(int) int { return 4096 }), refused, "truncated"},
		{"truncated after the meta pages", truncateTo(func(int) int { return 2*4096 + 123 }), refused, "truncated"},
		{"truncated in the middle", truncateTo(func(n int) int { return n/2 + 7 }), refused, "truncated"},
		{"truncated by one page", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			_, m := newestMeta(b)
			return b[:int(m.hwm-1)*int(m.pageSize)]
		}), refused, "truncated"},
		{"both meta pages damaged", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			psz := int(readMeta(b, 0).pageSize)
			b[metaOff+20] ^= 0xff
			b[psz+metaOff+20] ^= 0xff
			return b
		}), refused, "both meta pages"},
		{"newest meta page damaged", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			off, _ := newestMeta(b)
			b[off+metaOff+44] ^= 0x01 // the high water mark
			return b
		}), fallback, "meta page"},
		{"bbolt version mismatch", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			psz := int(readMeta(b, 0).pageSize)
			for _, off := range []int{0, psz} {
				binary.NativeEndian.PutUint32(b[off+metaOff+4:], 1)
				fixMetaChecksum(b, off)
			}
			return b
		}), refused, "file format version 1"},
		{"absurd page size", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			psz := int(readMeta(b, 0).pageSize)
			for _, off := range []int{0, psz} {
				binary.NativeEndian.PutUint32(b[off+metaOff+8:], 4097)
				fixMetaChecksum(b, off)
			}
			return b
		}), refused, "page size"},
		{"meta without freelist", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			psz := int(readMeta(b, 0).pageSize)
			for _, off := range []int{0, psz} {
				binary.NativeEndian.PutUint64(b[off+metaOff+32:], ^uint64(0))
				fixMetaChecksum(b, off)
			}
			return b
		}), refused, "freelist"},
		{"root page id mismatch", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			_, m := newestMeta(b)
			binary.NativeEndian.PutUint64(b[int(m.root)*int(m.pageSize):], m.root+1)
			return b
		}), refused, "page"},
		{"leaf page flags", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			_, leaf := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			binary.NativeEndian.PutUint16(b[int(leaf)*psz+8:], 0x40)
			return b
		}), refused, "page"},
		{"leaf page element count", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			_, leaf := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			binary.NativeEndian.PutUint16(b[int(leaf)*psz+10:], 0xfff0)
			return b
		}), refused, "page"},
		{"leaf element beyond its page", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			_, leaf := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			// Second element: flags u32, pos u32, ksize u32, vsize u32.
			binary.NativeEndian.PutUint32(b[int(leaf)*psz+16+16+4:], 1<<30)
			return b
		}), refused, "page"},
		{"leaf value bytes", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			_, leaf := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			p := b[int(leaf)*psz : int(leaf+1)*psz]
			// The first element's value starts with '{': make it a non-JSON byte.
			pos := binary.NativeEndian.Uint32(p[16+4:])
			ks := binary.NativeEndian.Uint32(p[16+8:])
			p[16+int(pos)+int(ks)] = 0x00
			return b
		}), refused, "lease"},
		{"branch child beyond the end", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			branch, _ := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			binary.NativeEndian.PutUint64(b[int(branch)*psz+16+8:], 1<<40)
			return b
		}), refused, "page"},
		{"freelist page count", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			p := b[int(m.freelist)*psz:]
			binary.NativeEndian.PutUint16(p[10:], 0xffff)
			binary.NativeEndian.PutUint64(p[16:], 1<<40)
			return b
		}), refused, "freelist"},
		{"freelist page id beyond the end", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			p := b[int(m.freelist)*psz:]
			if binary.NativeEndian.Uint16(p[10:]) == 0 {
				binary.NativeEndian.PutUint16(p[10:], 1)
			}
			binary.NativeEndian.PutUint64(p[16:], 1<<40)
			return b
		}), refused, "freelist"},
		{"freelist lists a page in use", editRaw(func(t testing.TB, path string, b []byte) []byte {
			_, m := newestMeta(b)
			psz := int(m.pageSize)
			_, leaf := leafOf(t, b, psz, bucketRoot(t, path, "leases"))
			p := b[int(m.freelist)*psz:]
			if binary.NativeEndian.Uint16(p[10:]) == 0 {
				binary.NativeEndian.PutUint16(p[10:], 1)
			}
			binary.NativeEndian.PutUint64(p[16:], leaf)
			return b
		}), refused, "freed"},
		{"freelist page flags", editRaw(func(t testing.TB, _ string, b []byte) []byte {
			_, m := newestMeta(b)
			binary.NativeEndian.PutUint16(b[int(m.freelist)*int(m.pageSize)+8:], 0x02)
			return b
		}), refused, "freelist"},
		{"lease: bad JSON", editBolt(put("leases", a4("13.8.0.9"), `{"addr":"13.8.0.9","dataplane":`)), refused, "13.8.0.9"},
		{"lease: key of 3 bytes", editBolt(put("leases", "\x0d\x08\x00", `{}`)), refused, "3 bytes"},
		{"lease: address differs from its key", editBolt(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("leases"))
			v := b.Get([]byte(a4("13.8.0.9")))
			return b.Put([]byte(a4("13.8.0.9")), []byte(string(v[:10])+"8"+string(v[11:])))
		}), refused, "13.8.0.9"},
		{"lease: IPv6 address", editBolt(put("leases", a4("13.8.0.250"), `{"addr":"fd00::1","dataplane":"dp9","session":"x"}`)), refused, "not an IPv4"},
		{"lease: no session", editBolt(put("leases", a4("13.8.0.250"), `{"addr":"13.8.0.250","dataplane":"dp9"}`)), refused, "session"},
		{"lease: missing from the owner index", editBolt(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("owners")).Delete([]byte("dp1\x00session-0010"))
		}), refused, "owner"},
		{"owner index: points to no lease", editBolt(put("owners", "dp7\x00ghost", a4("13.8.0.251"))), refused, "owner"},
		{"lease: a nested bucket", editBolt(func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte("leases")).CreateBucket([]byte(a4("13.8.0.252")))
			return err
		}), refused, "bucket"},
		{"settings: bad JSON", editBolt(put("settings", "settings", `{"dns":["192.0.2.53"`)), refused, "settings"},
		{"settings: DNS not IPv4", editBolt(put("settings", "settings", `{"dns":["2001:db8::53"]}`)), refused, "settings"},
		{"reservation: bad key", editBolt(put("reservations", "fd00:49::/999", "13.8.0.9")), refused, "reservation"},
		{"reservation: bad address", editBolt(put("reservations", "fd00:49::/64", "13.8.0")), refused, "reservation"},
		{"data plane: bad JSON", editBolt(put("dataplanes", "dp3", `{"id":`)), skipped, "dp3"},
		{"data plane: id differs from its key", editBolt(put("dataplanes", "dp3", `{"id":"dp4"}`)), skipped, "dp3"},
		{"release time: bad value", editBolt(put("released", a4("13.8.0.253"), "yesterday")), skipped, "13.8.0.253"},
		{"release time: key of 5 bytes", editBolt(put("released", "\x0d\x08\x00\x01\x02", "")), skipped, "release time"},
		{"last holder: not an address", editBolt(put("holders", a4("13.8.0.253"), "fd00:46::zz")), skipped, "13.8.0.253"},
		{"last holder: an IPv4 address", editBolt(put("holders", a4("13.8.0.253"), "192.0.2.7")), skipped, "not an IPv6 client address"},
		{"last holder: key of 5 bytes", editBolt(put("holders", "\x0d\x08\x00\x01\x02", "fd00:46::2")), skipped, "last holder"},
		{"last holder: a nested bucket", editBolt(func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte("holders")).CreateBucket([]byte(a4("13.8.0.252")))
			return err
		}), skipped, "nested bucket"},
	}
}
