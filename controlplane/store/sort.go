package store

import (
	"slices"
	"strings"
)

// sortState orders a loaded state: leases by address, reservations by
// client, data planes by id, so every store loads the same way.
func sortState(st *State) {
	slices.SortFunc(st.Leases, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(st.Reservations, func(a, b Reservation) int {
		if c := a.Client.Addr().Compare(b.Client.Addr()); c != 0 {
			return c
		}
		return a.Client.Bits() - b.Client.Bits()
	})
	slices.SortFunc(st.Dataplanes, func(a, b Dataplane) int { return strings.Compare(a.ID, b.ID) })
}
