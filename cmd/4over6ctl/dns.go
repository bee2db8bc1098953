package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) dnsCommand() *cobra.Command {
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the DNS servers every client gets",
		Long:  `Show the three IPv4 DNS servers the controller puts in every 101 message.`,
		Example: `  4over6ctl dns show
  4over6ctl dns show -o json | jq -r '.servers[]'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			servers, err := a.getDNS(ctx)
			if err != nil {
				return err
			}
			out := DNS{Servers: servers}
			return a.emit(out, func(w io.Writer) { fmt.Fprintf(w, "DNS:\t%s\n", orDash(strings.Join(servers, ", "))) })
		},
	}
	set := &cobra.Command{
		Use:   "set SERVER[,SERVER...]",
		Short: "Change the DNS servers every client gets",
		Long: `Replace the DNS servers with one to three IPv4 addresses, given comma-separated
or as separate arguments. Fewer than three are padded by the controller as at
its start. The change is kept across restarts; clients get the new servers with
their next lease (when they reconnect).`,
		Example: `  4over6ctl dns set 1.1.1.1,8.8.8.8,9.9.9.9
  4over6ctl dns set 1.1.1.1 8.8.8.8`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("%q takes one to three IPv4 addresses (SERVER[,SERVER...])", cmd.CommandPath())
			}
			_, err := parseDNS(args)
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			servers, _ := parseDNS(args)
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			before, err := a.getDNS(ctx)
			if err != nil {
				return err
			}
			resp, err := a.ctrl().SetDNS(ctx, &cpv1.SetDNSRequest{Servers: servers})
			if err != nil {
				return a.rpcError(a.controller, err)
			}
			out := DNSSet{Servers: append([]string{}, resp.GetServers()...), Previous: before, Changed: resp.GetChanged()}
			return a.emit(out, func(w io.Writer) {
				if !out.Changed {
					fmt.Fprintf(w, "dns: %s (unchanged)\n", strings.Join(out.Servers, ","))
					return
				}
				fmt.Fprintf(w, "dns: %s -> %s\n", strings.Join(out.Previous, ","), strings.Join(out.Servers, ","))
			})
		},
	}
	return groupCommand("dns", "The DNS servers handed to clients",
		needs(show, needController), needs(set, needController))
}

func (a *app) getDNS(ctx context.Context) ([]string, error) {
	resp, err := a.ctrl().GetDNS(ctx, &cpv1.GetDNSRequest{})
	if err != nil {
		return nil, a.rpcError(a.controller, err)
	}
	return append([]string{}, resp.GetServers()...), nil
}

// parseDNS accepts "a,b,c", "a b c" or a mix: one to three IPv4 addresses.
func parseDNS(args []string) ([]string, error) {
	var servers []string
	for _, arg := range args {
		for _, f := range strings.FieldsFunc(arg, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			addr, err := netip.ParseAddr(f)
			if err != nil || !addr.Is4() {
				return nil, usageErrorf("invalid DNS server %q: want an IPv4 address", f)
			}
			servers = append(servers, addr.String())
		}
	}
	if len(servers) == 0 || len(servers) > 3 {
		return nil, usageErrorf("want one to three DNS servers, got %d", len(servers))
	}
	return servers, nil
}

// dnsSatisfied tells whether the controller's servers are the wanted ones:
// when fewer than three are wanted, the controller pads the rest.
func dnsSatisfied(have, want []string) bool {
	if len(want) >= len(have) {
		return slices.Equal(have, want)
	}
	return slices.Equal(have[:len(want)], want)
}
