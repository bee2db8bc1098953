package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/bits"
	"os"
)

// checkBoltPages reads a bbolt file the way bbolt will, page by page with
// bounds-checked reads, and fails if anything bbolt would touch lies outside
// the file or is not what bbolt expects there.
//
// Why our own walker: bbolt trusts its file. It reads pages through a memory
// map with unchecked pointer arithmetic, so a damaged page makes it panic
// (often in a goroutine of its own, where nothing can recover) or read past
// the map and die of a memory fault that recover cannot catch either; a
// damaged freelist can even make it allocate pages petabytes into the file.
// Its consistency check (Tx.Check) has the same problem, since it reads the
// same pages. Once this walk has passed, every page and element bbolt
// reaches is inside the file, so Tx.Check can look for the rest (key order,
// pages both free and in use, unreachable pages) without crashing.
//
// The layout is bbolt's file format version 2 (go.etcd.io/bbolt/internal/
// common): a 16-byte page header (id u64, flags u16, count u16, overflow
// u32), the meta at offset 16 of pages 0 and 1, 16-byte branch and leaf
// elements whose key and value positions are relative to the element, and
// bucket values of a 16-byte header (root page, sequence) followed by the
// bucket's inline page when the root is 0. Integers are in native byte
// order, as bbolt writes them.
func checkBoltPages(f io.ReaderAt, size int64, where string) (boltFile, error) {
	w := &pageWalker{f: f, size: size, where: where, seen: make(map[uint64]bool)}
	if err := w.readMetas(); err != nil {
		return boltFile{}, err
	}
	if err := w.freelist(); err != nil {
		return boltFile{}, err
	}
	if err := w.bucket(w.meta.root, nil, "the root bucket", 0); err != nil {
		return boltFile{}, err
	}
	return w.boltFile, nil
}

// boltFile is what the walk learned.
type boltFile struct {
	meta boltMeta // the meta page bbolt uses
	// damagedMeta is the index (0 or 1) of a meta page that failed
	// validation while the other passed, else -1. bbolt then opens the file
	// on the other one: the transaction before the damaged meta's.
	damagedMeta int
	// lostNewest: the damaged meta page claims a later transaction than
	// the one used, so the last committed write may be lost.
	lostNewest bool
}

const (
	pageHeaderSize = 16
	elementSize    = 16 // branch and leaf elements alike
	bucketHeader   = 16
	boltMagic      = 0xED0CDAED
	boltVersion    = 2

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10
	leafIsBucket = 0x01

	pgidNoFreelist = ^uint64(0)
	maxDepth       = 64 // of the tree and of nested buckets together
)

var ne = binary.NativeEndian

type boltMeta struct {
	magic, version, pageSize uint32
	root, freelist, hwm      uint64
	txid                     uint64
	err                      error // nil when the page passes bbolt's validation
}

// parseMeta reads the meta of the page in b (at least 80 bytes) and
// validates it as bbolt does: magic, version, then checksum.
func parseMeta(b []byte) boltMeta {
	m := b[pageHeaderSize:]
	bm := boltMeta{
		magic: ne.Uint32(m[0:]), version: ne.Uint32(m[4:]), pageSize: ne.Uint32(m[8:]),
		root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]), hwm: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:]),
	}
	h := fnv.New64a()
	h.Write(m[:56])
	switch {
	case bm.magic != boltMagic:
		bm.err = errors.New("no bbolt magic number")
	case bm.version != boltVersion:
		bm.err = fmt.Errorf("bbolt file format version %d", bm.version)
	case ne.Uint64(m[56:]) != h.Sum64():
		bm.err = errors.New("checksum mismatch")
	}
	return bm
}

type pageWalker struct {
	boltFile
	f     io.ReaderAt
	size  int64
	where string
	psz   uint64
	seen  map[uint64]bool // pages reached from the root
}

func (w *pageWalker) corrupt(format string, args ...any) error {
	return corrupt(w.where, format, args...)
}

// readAt reads n bytes at off, or reports whether the file is too short.
func (w *pageWalker) readAt(off, n int64) ([]byte, bool) {
	if off < 0 || n < 0 || off > w.size || n > w.size-off {
		return nil, false
	}
	b := make([]byte, n)
	if _, err := w.f.ReadAt(b, off); err != nil {
		return nil, false
	}
	return b, true
}

func (w *pageWalker) readMetas() error {
	const metaLen = pageHeaderSize + 64
	var metas [2]boltMeta
	var readable [2]bool
	b0, ok0 := w.readAt(0, metaLen)
	if ok0 {
		metas[0], readable[0] = parseMeta(b0), true
	}
	// bbolt finds the second meta one page further: the first meta's page
	// size when it is valid, else the OS page size.
	off1 := int64(os.Getpagesize())
	if readable[0] && metas[0].err == nil {
		off1 = int64(metas[0].pageSize)
	}
	if b1, ok := w.readAt(off1, metaLen); ok {
		metas[1], readable[1] = parseMeta(b1), true
	}
	switch {
	case !readable[0]:
		return notState(w.where, "not a bbolt database (%d bytes: too short for one)", w.size)
	case metas[0].err != nil && (!readable[1] || metas[1].err != nil):
		m1err := errors.New("missing")
		if readable[1] {
			m1err = metas[1].err
		}
		if metas[0].magic != boltMagic && (!readable[1] || metas[1].magic != boltMagic) {
			return notState(w.where, "not a bbolt database (no bbolt magic number)")
		}
		if metas[0].magic == boltMagic && metas[0].version != boltVersion {
			return &StateError{Where: w.where, Kind: ErrFormat, Detail: fmt.Sprintf(
				"is a bbolt database of file format version %d; this controller reads version %d", metas[0].version, boltVersion)}
		}
		return w.corrupt("both meta pages are damaged (page 0: %v; page 1: %v)", metas[0].err, m1err)
	}
	// As bbolt: the meta with the higher transaction id if valid, else the
	// other.
	newest, older := 0, 1
	if readable[1] && metas[1].txid > metas[0].txid {
		newest, older = 1, 0
	}
	w.damagedMeta = -1
	switch {
	case metas[newest].err == nil:
		w.meta = metas[newest]
		if !readable[older] || metas[older].err != nil {
			w.damagedMeta = older
		}
	default:
		w.meta, w.damagedMeta, w.lostNewest = metas[older], newest, true
	}
	if metas[0].err == nil && readable[1] && metas[1].err == nil && metas[0].pageSize != metas[1].pageSize {
		return w.corrupt("the meta pages disagree on the page size (%d, %d)", metas[0].pageSize, metas[1].pageSize)
	}
	m := w.meta
	w.psz = uint64(m.pageSize)
	switch {
	case m.pageSize < 1024 || m.pageSize > 64<<10 || bits.OnesCount32(m.pageSize) != 1:
		return w.corrupt("the meta page gives a page size of %d bytes", m.pageSize)
	case m.freelist == pgidNoFreelist:
		// Written with bbolt's NoFreelistSync, which the controller never
		// uses; bbolt would rebuild the freelist in a goroutine that
		// panics on any inconsistency.
		return notState(w.where, "the bbolt database keeps no freelist: it was not written by 4over6-controller")
	case m.hwm < 4 || m.hwm > uint64(w.size)/w.psz:
		if m.hwm >= 4 && m.hwm <= (1<<62)/w.psz {
			return w.corrupt("truncated: the meta page says %d pages of %d bytes (%d bytes), the file has %d bytes",
				m.hwm, w.psz, m.hwm*w.psz, w.size)
		}
		return w.corrupt("the meta page gives an impossible page count %d", m.hwm)
	case m.root < 2 || m.root >= m.hwm:
		return w.corrupt("the meta page's root page %d is outside pages 2..%d", m.root, m.hwm-1)
	case m.freelist < 2 || m.freelist >= m.hwm:
		return w.corrupt("the meta page's freelist page %d is outside pages 2..%d", m.freelist, m.hwm-1)
	}
	return nil
}

// page reads page id with its overflow pages.
func (w *pageWalker) page(id uint64, what string) ([]byte, uint16, uint16, error) {
	if id < 2 || id >= w.meta.hwm {
		return nil, 0, 0, w.corrupt("%s points to page %d, outside pages 2..%d", what, id, w.meta.hwm-1)
	}
	h, ok := w.readAt(int64(id*w.psz), pageHeaderSize)
	if !ok {
		return nil, 0, 0, w.corrupt("page %d (%s) is past the end of the file", id, what)
	}
	if got := ne.Uint64(h); got != id {
		return nil, 0, 0, w.corrupt("page %d (%s) is marked as page %d", id, what, got)
	}
	flags, count, overflow := ne.Uint16(h[8:]), ne.Uint16(h[10:]), uint64(ne.Uint32(h[12:]))
	if overflow >= w.meta.hwm-id {
		return nil, 0, 0, w.corrupt("page %d (%s) spans %d more pages, past the last page %d", id, what, overflow, w.meta.hwm-1)
	}
	b, ok := w.readAt(int64(id*w.psz), int64((overflow+1)*w.psz))
	if !ok {
		return nil, 0, 0, w.corrupt("page %d (%s) is past the end of the file", id, what)
	}
	return b, flags, count, nil
}

func (w *pageWalker) freelist() error {
	id := w.meta.freelist
	b, flags, count, err := w.page(id, "the freelist")
	if err != nil {
		return err
	}
	if flags != flagFreelist {
		return w.corrupt("the freelist page %d has page type %#x, not a freelist", id, flags)
	}
	n, first := uint64(count), uint64(0)
	if count == 0xFFFF { // the real count is the first element
		if len(b) < pageHeaderSize+8 {
			return w.corrupt("the freelist page %d is too short", id)
		}
		n, first = ne.Uint64(b[pageHeaderSize:]), 1
	}
	room := uint64(len(b)-pageHeaderSize) / 8
	if n > room || first+n > room {
		return w.corrupt("the freelist page %d lists %d pages, more than it can hold (%d)", id, n, room)
	}
	for i := range n {
		free := ne.Uint64(b[pageHeaderSize+(first+i)*8:])
		if free < 2 || free >= w.meta.hwm {
			return w.corrupt("the freelist page %d lists page %d, outside pages 2..%d", id, free, w.meta.hwm-1)
		}
	}
	return nil
}

// bucket walks a bucket: its root page, or its inline page when root is 0.
func (w *pageWalker) bucket(root uint64, inline []byte, name string, depth int) error {
	if depth > maxDepth {
		return w.corrupt("buckets nested deeper than %d levels (at %s)", maxDepth, name)
	}
	if root != 0 {
		return w.node(root, name, depth)
	}
	if len(inline) < pageHeaderSize {
		return w.corrupt("the inline page of %s is %d bytes, shorter than a page header", name, len(inline))
	}
	if flags := ne.Uint16(inline[8:]); flags != flagLeaf {
		return w.corrupt("the inline page of %s has page type %#x, not a leaf", name, flags)
	}
	return w.elements(inline, true, ne.Uint16(inline[10:]), name, depth)
}

// node walks one branch or leaf page and what hangs below it.
func (w *pageWalker) node(id uint64, name string, depth int) error {
	if depth > maxDepth {
		return w.corrupt("the tree of %s is deeper than %d levels", name, maxDepth)
	}
	if w.seen[id] {
		return w.corrupt("page %d is reached twice (in %s)", id, name)
	}
	w.seen[id] = true
	b, flags, count, err := w.page(id, "a page of "+name)
	if err != nil {
		return err
	}
	switch flags {
	case flagBranch:
		if count == 0 {
			return w.corrupt("branch page %d of %s has no elements", id, name)
		}
		if err := w.elements(b, false, count, name, depth); err != nil {
			return fmt.Errorf("%w (page %d)", err, id)
		}
		for i := range uint64(count) {
			child := ne.Uint64(b[pageHeaderSize+i*elementSize+8:])
			if err := w.node(child, name, depth+1); err != nil {
				return err
			}
		}
		return nil
	case flagLeaf:
		return w.elements(b, true, count, name, depth)
	}
	return w.corrupt("page %d of %s has page type %#x where a branch or leaf page belongs", id, name, flags)
}

// elements checks that every element of a page (b: the page with its
// overflow, or an inline page) and its key and value lie inside b, and
// walks the buckets a leaf holds.
func (w *pageWalker) elements(b []byte, leaf bool, count uint16, name string, depth int) error {
	n := uint64(count)
	if pageHeaderSize+n*elementSize > uint64(len(b)) {
		return w.corrupt("a page of %s has %d elements, more than fit in it", name, count)
	}
	for i := range n {
		off := pageHeaderSize + i*elementSize
		e := b[off : off+elementSize]
		if !leaf {
			pos, ksize := uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			if off+pos+ksize > uint64(len(b)) {
				return w.corrupt("element %d of a branch page of %s extends past the page", i, name)
			}
			continue
		}
		flags, pos := ne.Uint32(e[0:]), uint64(ne.Uint32(e[4:]))
		ksize, vsize := uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		end := off + pos + ksize + vsize
		if end > uint64(len(b)) {
			return w.corrupt("element %d of a leaf page of %s extends past the page", i, name)
		}
		if flags&leafIsBucket == 0 {
			continue
		}
		key := b[off+pos : off+pos+ksize]
		val := b[off+pos+ksize : end]
		sub := fmt.Sprintf("bucket %q", clipKey(key))
		if name != "the root bucket" {
			sub = name + "/" + fmt.Sprintf("%q", clipKey(key))
		}
		if len(val) < bucketHeader {
			return w.corrupt("%s: its header is %d bytes, not %d", sub, len(val), bucketHeader)
		}
		if err := w.bucket(ne.Uint64(val), val[bucketHeader:], sub, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func clipKey(k []byte) string {
	if len(k) > 40 {
		return string(k[:40]) + "..."
	}
	return string(k)
}
