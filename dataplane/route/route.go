// Package route maps IPv4 destinations to the sessions that own them. It is
// read for every packet coming out of the TUN and written only when a client
// gets or gives up a lease, so reads take no lock: sync.Map is a concurrent
// hash-trie with lock-free loads.
package route

import "sync"

// Table maps IPv4 addresses (big-endian uint32, see packet.Dst4) to *V.
type Table[V any] struct {
	m sync.Map // uint32 -> *V
}

// Lookup returns the owner of addr, or nil.
func (t *Table[V]) Lookup(addr uint32) *V {
	v, ok := t.m.Load(addr)
	if !ok {
		return nil
	}
	return v.(*V)
}

// Insert makes v the owner of addr and returns the previous owner, if any,
// so the caller can notice (and log) a conflict.
func (t *Table[V]) Insert(addr uint32, v *V) (prev *V) {
	old, loaded := t.m.Swap(addr, v)
	if !loaded {
		return nil
	}
	return old.(*V)
}

// Remove deletes addr only while v still owns it: a session closing late
// must not remove the route of a newer session that got the same address.
func (t *Table[V]) Remove(addr uint32, v *V) bool {
	return t.m.CompareAndDelete(addr, v)
}

// Len counts the entries; it walks the table and is meant for status output.
func (t *Table[V]) Len() int {
	n := 0
	t.m.Range(func(any, any) bool { n++; return true })
	return n
}
