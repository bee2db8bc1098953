package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) reservationsCommand() *cobra.Command {
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the reservations",
		Long: `List every reservation: a client IPv6 address or prefix, the IPv4 address
it always gets, and whether that address is in use now (by which client: IPv6
address, port, data plane), sorted by IPv4 address. With -o json: a JSON array
([] when there are none); in_use and holder are what "apply -f" ignores, so
the output can be applied as it is.`,
		Example: `  4over6ctl reservations list
  4over6ctl reservations list -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			rs, err := a.listReservations(ctx)
			if err != nil {
				return err
			}
			clients, err := a.listClients(cmd, &cpv1.ListClientsRequest{})
			if err != nil {
				return err
			}
			out := reservationsInUse(rs, clients)
			return a.emit(out, func(w io.Writer) { reservationsTable(w, out) })
		},
	}
	set := &cobra.Command{
		Use:   "set CLIENT ADDR",
		Short: "Give a client (IPv6 address or prefix) a fixed IPv4 address",
		Long: `Bind CLIENT, an IPv6 address (fd00:46::2) or prefix (fd00:47::/64), to the IPv4
address ADDR of the pool, replacing its previous binding if any. The client
gets ADDR the next time it connects. A prefix is stored without host bits.`,
		Example: `  4over6ctl reservations set fd00:46::2 13.8.0.50
  4over6ctl reservations set fd00:47::/64 13.8.0.51`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs("CLIENT", "ADDR")(cmd, args); err != nil {
				return err
			}
			if _, err := parseReservationClient(args[0]); err != nil {
				return err
			}
			_, err := parseIPv4(args[1])
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _ := parseReservationClient(args[0])
			addr, _ := parseIPv4(args[1])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			r := Reservation{Client: client, IPv4: addr.String()}
			changed, err := a.setReservation(ctx, r)
			if err != nil {
				return err
			}
			out := ReservationSet{Reservation: r, Changed: changed}
			return a.emit(out, func(w io.Writer) {
				what := "set"
				if !changed {
					what = "unchanged"
				}
				fmt.Fprintf(w, "reservation %s -> %s: %s\n", r.Client, r.IPv4, what)
			})
		},
	}
	del := &cobra.Command{
		Use:     "delete CLIENT",
		Aliases: []string{"rm", "del"},
		Short:   "Remove a client's reservation",
		Long: `Remove the reservation of CLIENT (the IPv6 address or prefix as it was set).
A connected client keeps its address until it disconnects. Exits 4 when CLIENT
has no reservation.`,
		Example: `  4over6ctl reservations delete fd00:46::2`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs("CLIENT")(cmd, args); err != nil {
				return err
			}
			_, err := parseReservationClient(args[0])
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _ := parseReservationClient(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			if err := a.deleteReservation(ctx, client); err != nil {
				return err
			}
			out := ReservationDelete{Client: client, Deleted: true}
			return a.emit(out, func(w io.Writer) { fmt.Fprintf(w, "reservation %s: deleted\n", client) })
		},
	}
	c := groupCommand("reservations", "Fixed IPv4 addresses for clients (IPv6 address or prefix -> IPv4)",
		needs(list, needController), needs(set, needController), needs(del, needController))
	c.Aliases = []string{"reservation"}
	return c
}

// parseReservationClient accepts an IPv6 address or prefix and returns its
// canonical form (a prefix without host bits).
func parseReservationClient(s string) (string, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			return p.Masked().String(), nil
		}
	} else if addr, err := netip.ParseAddr(s); err == nil && addr.Is6() && !addr.Is4In6() && addr.Zone() == "" {
		return addr.String(), nil
	}
	return "", usageErrorf("invalid CLIENT %q: want an IPv6 address (fd00:46::2) or prefix (fd00:47::/64)", s)
}

// canonicalClient is parseReservationClient for what the controller sends:
// unparsable text is kept as it is.
func canonicalClient(s string) string {
	if c, err := parseReservationClient(s); err == nil {
		return c
	}
	return s
}

func (a *app) listReservations(ctx context.Context) ([]Reservation, error) {
	stream, err := a.ctrl().ListReservations(ctx, &cpv1.ListReservationsRequest{})
	if err != nil {
		return nil, a.rpcError(a.controller, err)
	}
	rs := []Reservation{}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, a.rpcError(a.controller, err)
		}
		if r := m.GetReservation(); r != nil {
			rs = append(rs, Reservation{Client: r.GetClient(), IPv4: r.GetAddress()})
		}
	}
	sort.SliceStable(rs, func(i, j int) bool {
		if rs[i].IPv4 != rs[j].IPv4 {
			return addrLess(rs[i].IPv4, rs[j].IPv4)
		}
		return rs[i].Client < rs[j].Client
	})
	return rs, nil
}

func (a *app) setReservation(ctx context.Context, r Reservation) (bool, error) {
	resp, err := a.ctrl().SetReservation(ctx, &cpv1.SetReservationRequest{
		Reservation: &cpv1.Reservation{Client: r.Client, Address: r.IPv4}})
	if err != nil {
		return false, a.rpcError(a.controller, err)
	}
	return resp.GetChanged(), nil
}

func (a *app) deleteReservation(ctx context.Context, client string) error {
	resp, err := a.ctrl().DeleteReservation(ctx, &cpv1.DeleteReservationRequest{Client: client})
	if err != nil {
		return notFound(a.rpcError(a.controller, err), "no reservation for %s", client)
	}
	if !resp.GetDeleted() {
		return &cliError{code: exitNotFound, msg: fmt.Sprintf("no reservation for %s", client)}
	}
	return nil
}

// reservationsInUse says of each reservation whether a client holds its
// address now, and which.
func reservationsInUse(rs []Reservation, clients []Client) []ReservationStatus {
	byAddr := make(map[string]Client, len(clients))
	for _, c := range clients {
		byAddr[c.IPv4] = c
	}
	out := make([]ReservationStatus, len(rs))
	for i, r := range rs {
		out[i] = ReservationStatus{Reservation: r}
		if c, ok := byAddr[r.IPv4]; ok {
			out[i].InUse = true
			out[i].Holder = &ReservationHolder{IPv6: c.IPv6, Port: c.Port, Dataplane: c.Dataplane, Session: c.Session}
		}
	}
	return out
}

func reservationsTable(w io.Writer, rs []ReservationStatus) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "No reservations.")
		return
	}
	fmt.Fprintln(w, "CLIENT\tIPV4\tIN USE BY")
	for _, r := range rs {
		by := "- (idle)"
		if h := r.Holder; h != nil {
			by = fmt.Sprintf("%s port %d on %s", orDash(h.IPv6), h.Port, orDash(h.Dataplane))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.Client, r.IPv4, by)
	}
}
