package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) poolCommand() *cobra.Command {
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the address pool and how much of it is in use",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := cpv1.NewControllerServiceClient(a.controller.conn).GetPool(ctx, &cpv1.GetPoolRequest{})
			if err != nil {
				return a.rpcError(a.controller, err)
			}
			p := poolFromProto(resp.GetPool())
			return a.emit(p, func(w io.Writer) { poolTable(w, p) })
		},
	}
	return groupCommand("pool", "The controller's IPv4 address pool", needs(show, needController))
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
	}
}

func poolTable(w io.Writer, p Pool) {
	fmt.Fprintf(w, "Prefix:\t%s\n", orDash(p.Prefix))
	fmt.Fprintf(w, "Gateway:\t%s\n", orDash(p.Gateway))
	fmt.Fprintf(w, "Client range:\t%s - %s (%d addresses)\n", orDash(p.RangeFirst), orDash(p.RangeLast), p.Size)
	usage := ""
	if p.Size > 0 {
		usage = fmt.Sprintf(" (%.1f%% leased)", 100*float64(p.Leased)/float64(p.Size))
	}
	fmt.Fprintf(w, "In use:\t%d leased, %d reserved, %d free%s\n", p.Leased, p.Reserved, p.Free, usage)
	route := orDash(p.Route)
	if p.Route == "0.0.0.0" {
		route += " (default route through the tunnel)"
	}
	fmt.Fprintf(w, "Route:\t%s\n", route)
	fmt.Fprintf(w, "DNS:\t%s\n", orDash(strings.Join(p.DNS, ", ")))
}
