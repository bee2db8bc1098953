package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) poolCommand() *cobra.Command {
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the address pool and how much of it is in use",
		Long: `Show the pool prefix, the gateway, the client range, how many addresses are
leased, reserved and free, and the route and DNS servers every client gets.`,
		Example: `  4over6ctl pool show
  4over6ctl pool show -o json | jq .free`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			p, err := a.getPool(ctx)
			if err != nil {
				return err
			}
			return a.emit(p, func(w io.Writer) { poolTable(w, p) })
		},
	}
	setRange := &cobra.Command{
		Use:   "set-range A-B|all",
		Short: "Change the range of addresses handed to clients",
		Long: `Change the client range within the pool prefix to A-B (both included), or to
every host of the prefix but the gateway with "all". The controller refuses a
range that would leave a leased or reserved address outside it (exit 1).
New leases come from the new range; existing clients keep their address.`,
		Example: `  4over6ctl pool set-range 13.8.0.2-13.8.0.128
  4over6ctl pool set-range all`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs("A-B")(cmd, args); err != nil {
				return err
			}
			_, err := parseRange(args[0])
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _ := parseRange(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			before, err := a.getPool(ctx)
			if err != nil {
				return err
			}
			resp, err := a.ctrl().UpdatePool(ctx, &cpv1.UpdatePoolRequest{RangeFirst: r.first, RangeLast: r.last})
			if err != nil {
				return a.rpcError(a.controller, err)
			}
			out := PoolRangeChange{Changed: resp.GetChanged(), PreviousRange: rangeText(before.RangeFirst, before.RangeLast),
				Pool: poolFromProto(resp.GetPool())}
			return a.emit(out, func(w io.Writer) {
				now := rangeText(out.Pool.RangeFirst, out.Pool.RangeLast)
				if !out.Changed {
					fmt.Fprintf(w, "pool range: %s (unchanged)\n", now)
				} else {
					fmt.Fprintf(w, "pool range: %s -> %s\n", out.PreviousRange, now)
				}
				fmt.Fprintln(w)
				poolTable(w, out.Pool)
			})
		},
	}
	return groupCommand("pool", "The controller's IPv4 address pool",
		needs(show, needController), needs(setRange, needController))
}

func (a *app) getPool(ctx context.Context) (Pool, error) {
	resp, err := a.ctrl().GetPool(ctx, &cpv1.GetPoolRequest{})
	if err != nil {
		return Pool{}, a.rpcError(a.controller, err)
	}
	return poolFromProto(resp.GetPool()), nil
}

// poolRange is a client range as sent in UpdatePool: both empty = "all".
type poolRange struct{ first, last string }

func (r poolRange) String() string {
	if r.first == "" {
		return "all"
	}
	return rangeText(r.first, r.last)
}

func rangeText(first, last string) string { return first + "-" + last }

// parseRange accepts "A-B" (IPv4, A <= B) or "all".
func parseRange(s string) (poolRange, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "all") {
		return poolRange{}, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	first, err1 := netip.ParseAddr(strings.TrimSpace(lo))
	last, err2 := netip.ParseAddr(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || !first.Is4() || !last.Is4() {
		return poolRange{}, usageErrorf("invalid range %q: want FIRST-LAST, e.g. 13.8.0.2-13.8.0.128, or all", s)
	}
	if last.Less(first) {
		return poolRange{}, usageErrorf("invalid range %q: %s comes after %s", s, first, last)
	}
	return poolRange{first.String(), last.String()}, nil
}

// wholeRange is the range "all" stands for: the prefix's hosts without the
// network and broadcast addresses and the gateway, when that leaves one
// contiguous range (the gateway first or last, as by default).
func wholeRange(prefix, gateway string) (poolRange, bool) {
	p, err := netip.ParsePrefix(prefix)
	gw, err2 := netip.ParseAddr(gateway)
	if err != nil || err2 != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return poolRange{}, false
	}
	n := addrUint(p.Masked().Addr())
	size := uint32(1) << (32 - p.Bits())
	first, last := n+1, n+size-2
	switch g := addrUint(gw); g {
	case first:
		first++
	case last:
		last--
	default:
		if g > first && g < last {
			return poolRange{}, false
		}
	}
	return poolRange{uintAddr(first).String(), uintAddr(last).String()}, true
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintAddr(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func poolFromProto(p *cpv1.Pool) Pool {
	dns := append([]string{}, p.GetDns()...) // never nil: [] in JSON
	return Pool{
		Prefix:     p.GetPrefix(),
		Gateway:    p.GetGateway(),
		RangeFirst: p.GetRangeFirst(),
		RangeLast:  p.GetRangeLast(),
		Size:       p.GetSize(),
		Leased:     p.GetLeased(),
		Free:       p.GetFree(),
		Reserved:   p.GetReserved(),
		Route:      p.GetRoute(),
		DNS:        dns,

		ReservedInUse:    p.GetReservedInUse(),
		FreeRemembered:   p.GetFreeRemembered(),
		FreeUnremembered: p.GetFree() - min(p.GetFreeRemembered(), p.GetFree()),
	}
}

// reservedText is the reserved count as the tables print it: "3 reserved
// (1 in use)". One definition everywhere: every reservation in the range.
func reservedText(p Pool) string {
	return fmt.Sprintf("%d reserved (%d in use)", p.Reserved, p.ReservedInUse)
}

func poolTable(w io.Writer, p Pool) {
	fmt.Fprintf(w, "Prefix:\t%s\n", orDash(p.Prefix))
	fmt.Fprintf(w, "Gateway:\t%s\n", orDash(p.Gateway))
	fmt.Fprintf(w, "Client range:\t%s - %s (%d addresses)\n", orDash(p.RangeFirst), orDash(p.RangeLast), p.Size)
	usage := ""
	if p.Size > 0 {
		usage = fmt.Sprintf(" (%.1f%% leased)", 100*float64(p.Leased)/float64(p.Size))
	}
	fmt.Fprintf(w, "In use:\t%d leased, %s, %d free%s\n", p.Leased, reservedText(p), p.Free, usage)
	fmt.Fprintf(w, "Free:\t%d remembered for their last holder, %d never used or forgotten\n", p.FreeRemembered, p.FreeUnremembered)
	route := orDash(p.Route)
	if p.Route == "0.0.0.0" {
		route += " (default route through the tunnel)"
	}
	fmt.Fprintf(w, "Route:\t%s\n", route)
	fmt.Fprintf(w, "DNS:\t%s\n", orDash(strings.Join(p.DNS, ", ")))
}
