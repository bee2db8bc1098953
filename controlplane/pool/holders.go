package pool

import (
	"cmp"
	"net/netip"
	"slices"
)

// The index remembers the last holder of each free address: the client
// IPv6 address of the lease released last on it. A client that comes back
// from the same IPv6 address (a /128) gets that address again if it is
// still free, on any data plane (see Acquire), so the connections inside
// its tunnel survive a reconnect.
//
// "The same client" is the /128 and nothing coarser: a /64 is usually a
// whole LAN of hosts, and handing one host's address to its neighbour
// would take it from the host when it returns. A client whose IPv6 address
// changes (privacy addresses) gets a new address, as before.
//
// The memory is bounded by the pool: one entry per free address at most,
// dropped when the address is leased again (its holder is the lease's
// client then) and replaced when that lease is released. The store keeps
// the same records (store.State.Holders), written in the same transactions
// as the releases and claims, so the memory survives restarts and leader
// changes.

// holderKey is the form a client address is remembered under.
func holderKey(a netip.Addr) netip.Addr { return a.WithZone("") }

// remembered is one free address filed under its last holder, with its
// release time (its key in the free order when it was remembered;
// neverUsed if it had none).
type remembered struct {
	at int64
	v  uint32
}

func rememberedLess(a, b remembered) int {
	switch {
	case a.at != b.at:
		return cmp.Compare(a.at, b.at)
	default:
		return cmp.Compare(a.v, b.v)
	}
}

// rememberLocked records client as v's last holder; a client that is not
// an IPv6 address (unset, IPv4, IPv4-mapped) forgets v's, as the store
// does. A client's addresses are filed in release order, so that the one
// it gets back (the latest free one) is found from the end, not by a scan
// of all of them: one IPv6 address may have held thousands (a load
// generator, a big NAT), and a scan per allocation under the index lock
// made a reconnect storm quadratic.
func (x *Index) rememberLocked(v uint32, client netip.Addr) {
	x.forgetLocked(v)
	if !client.Is6() || client.Is4In6() {
		return
	}
	k := holderKey(client)
	r := remembered{at: neverUsed, v: v}
	if at, ok := x.free.at[v]; ok {
		r.at = at
	}
	x.holders[v] = k
	x.holderAt[v] = r.at
	vs := x.holdersOf[k]
	// Releases come in time order: the end is nearly always the place.
	if n := len(vs); n == 0 || rememberedLess(vs[n-1], r) < 0 {
		x.holdersOf[k] = append(vs, r)
	} else {
		i, _ := slices.BinarySearchFunc(vs, r, rememberedLess)
		x.holdersOf[k] = slices.Insert(vs, i, r)
	}
	if x.inRange(v) {
		x.holdersIn++
	}
}

// forgetLocked drops v's last holder.
func (x *Index) forgetLocked(v uint32) {
	k, ok := x.holders[v]
	if !ok {
		return
	}
	r := remembered{at: x.holderAt[v], v: v}
	delete(x.holders, v)
	delete(x.holderAt, v)
	vs := x.holdersOf[k]
	if i, found := slices.BinarySearchFunc(vs, r, rememberedLess); found {
		vs = slices.Delete(vs, i, i+1)
	}
	if len(vs) == 0 {
		delete(x.holdersOf, k)
	} else {
		x.holdersOf[k] = vs
	}
	if x.inRange(v) {
		x.holdersIn--
	}
}

// refileLocked files v again under its last holder after its release time
// in the free order changed (a claim aborted, a reservation dropped).
func (x *Index) refileLocked(v uint32) {
	c, ok := x.holders[v]
	if !ok {
		return
	}
	if at, slotted := x.free.at[v]; slotted && at == x.holderAt[v] {
		return
	}
	x.rememberLocked(v, c)
}

// recountHoldersLocked recounts holdersIn after a range change.
func (x *Index) recountHoldersLocked() {
	x.holdersIn = 0
	for v := range x.holders {
		if x.inRange(v) {
			x.holdersIn++
		}
	}
}

// stickyLocked finds client's remembered address that is free now (of
// several, the one released last: the address of its latest session) and
// takes it out of the free order. It returns the address, its key in the
// free order and whether it had one.
func (x *Index) stickyLocked(client netip.Addr) (v uint32, key int64, queued, ok bool) {
	if !client.IsValid() || len(x.holdersOf) == 0 {
		return 0, 0, false, false
	}
	vs := x.holdersOf[holderKey(client)]
	for i := len(vs) - 1; i >= 0; i-- {
		if x.isFreeLocked(vs[i].v) {
			v, ok = vs[i].v, true
			break
		}
	}
	if !ok {
		return 0, 0, false, false
	}
	key, queued = x.free.remove(v)
	return v, key, queued, true
}

// LastHolder returns the remembered last holder of a (free) address.
func (x *Index) LastHolder(a netip.Addr) (netip.Addr, bool) {
	if !a.Is4() {
		return netip.Addr{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	c, ok := x.holders[u32(a)]
	return c, ok
}

// Remember records the stored last holders of free addresses (at load,
// after the leases were adopted): an address leased meanwhile is skipped,
// its holder is the lease's client.
func (x *Index) Remember(holders map[netip.Addr]netip.Addr) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for a, c := range holders {
		if !a.Is4() || !x.prefix.Contains(a) {
			continue
		}
		v := u32(a)
		if _, held := x.byAddr[v]; held {
			continue
		}
		x.rememberLocked(v, c)
	}
}
