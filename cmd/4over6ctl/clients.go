package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) clientsCommand() *cobra.Command {
	return groupCommand("clients", "Clients connected through the tunnel (the controller's client table)",
		a.clientsListCommand(),
		a.clientsGetCommand(),
		a.clientsKickCommand(),
		a.clientsWatchCommand(),
		a.clientsCaptureCommand(),
		a.clientsTopCommand(),
	)
}

// clientFilter is the filter of clients list and clients watch.
type clientFilter struct {
	dataplaneID string // --dataplane-id
	v6Prefix    string
}

const dataplaneFilterNote = `--dataplane-id ID keeps the clients of one data plane. --dataplane is the
data plane's address, as on every command (this one does not use it); an id
given to --dataplane is still taken as the filter, with a deprecation note on
standard error.`

func (f *clientFilter) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dataplaneID, "dataplane-id", "", "only clients on the data plane with this id")
	cmd.Flags().StringVar(&f.v6Prefix, "v6-prefix", "", "only clients whose IPv6 address is inside this prefix, e.g. fd00:46::/64 (an address means /128)")
}

// values checks the filter and returns the data plane id and the IPv6 prefix
// to send ("" when unset).
func (a *app) filterValues(cmd *cobra.Command, f *clientFilter) (string, string, error) {
	id := f.dataplaneID
	// --dataplane was this command's id filter once. An address there is
	// the data plane's address (scripts set both daemons' addresses up
	// front), which this command does not need; an id is the old filter.
	if fl := cmd.Flag("dataplane"); fl != nil && fl.Changed && !looksLikeAddress(a.dataplane.flagValue) {
		old := a.dataplane.flagValue
		if id != "" && id != old {
			return "", "", usageErrorf("--dataplane %q (the deprecated spelling of --dataplane-id) and --dataplane-id %q disagree: give --dataplane-id only", old, id)
		}
		id = old
		fmt.Fprintf(a.stderr, "4over6ctl: warning: --dataplane %s as a filter is deprecated: use --dataplane-id %s (--dataplane is the data plane's address)\n", old, old)
	}
	prefix := ""
	if cmd.Flags().Changed("v6-prefix") {
		p, err := parseIPv6Prefix(f.v6Prefix)
		if err != nil {
			return "", "", usageErrorf("invalid --v6-prefix %q: %v", f.v6Prefix, err)
		}
		prefix = p.String()
	}
	return id, prefix, nil
}

// looksLikeAddress tells a daemon address (unix:///x.sock, host:port) from
// a data plane id.
func looksLikeAddress(s string) bool {
	if strings.HasPrefix(s, "unix:") || strings.Contains(s, "/") {
		return true
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil || port == "" {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// parseIPv6Prefix accepts an IPv6 prefix (host bits are cleared) or an IPv6
// address (a /128).
func parseIPv6Prefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("not an IPv6 prefix")
		}
		return p.Masked(), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || !addr.Is6() || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("want an IPv6 prefix such as fd00:46::/64 or an IPv6 address")
	}
	return netip.PrefixFrom(addr, 128), nil
}

func (a *app) clientsListCommand() *cobra.Command {
	var f clientFilter
	var by string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the clients holding an address",
		Long: `List every client holding an address, sorted by IPv4 address, optionally only
those on one data plane (--dataplane-id ID) or from one IPv6 prefix
(--v6-prefix). --sort rate puts the busiest first (bytes per second, both
ways, over the data planes' last two reports). With -o json: a JSON array of
client objects ([] when there are none).

` + dataplaneFilterNote,
		Example: `  4over6ctl clients list
  4over6ctl clients list --dataplane-id dp1 --v6-prefix fd00:46::/64
  4over6ctl clients list -o json | jq -r '.[] | "\(.ipv4) \(.ipv6)"'
  4over6ctl clients list --sort rate`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, prefix, err := a.filterValues(cmd, &f)
			if err != nil {
				return err
			}
			sortBy, err := parseSort(by)
			if err != nil {
				return err
			}
			clients, err := a.listClients(cmd, &cpv1.ListClientsRequest{DataplaneId: id, Ipv6Prefix: prefix})
			if err != nil {
				return err
			}
			sortBy(clients)
			return a.emit(clients, func(w io.Writer) { a.clientsTable(w, clients) })
		},
	}
	f.addFlags(cmd)
	cmd.Flags().StringVar(&by, "sort", "address", "order: address (IPv4 address) or rate (bytes per second both ways, busiest first)")
	return needs(cmd, needController)
}

func (a *app) listClients(cmd *cobra.Command, req *cpv1.ListClientsRequest) ([]Client, error) {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	stream, err := a.ctrl().ListClients(ctx, req)
	if err != nil {
		return nil, a.rpcError(a.controller, err)
	}
	clients := []Client{} // never nil: an empty list is [] in JSON
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, a.rpcError(a.controller, err)
		}
		if m.GetClient() != nil {
			clients = append(clients, clientFromProto(m.GetClient()))
		}
	}
	sortClients(clients)
	return clients, nil
}

// parseSort checks --sort and returns the sort it names.
func parseSort(by string) (func([]Client), error) {
	switch strings.ToLower(strings.TrimSpace(by)) {
	case "address", "addr", "ipv4", "":
		return sortClients, nil
	case "rate":
		return sortByRate, nil
	}
	return nil, usageErrorf("invalid --sort %q: want address or rate", by)
}

// sortByRate puts the busiest clients first (bytes per second, both ways),
// then by address.
func sortByRate(clients []Client) {
	sortClients(clients)
	sort.SliceStable(clients, func(i, j int) bool { return clients[i].Rates.total() > clients[j].Rates.total() })
}

func (r Rates) total() float64 { return r.BytesFromClientPerSecond + r.BytesToClientPerSecond }

func sortClients(clients []Client) {
	sort.SliceStable(clients, func(i, j int) bool { return addrLess(clients[i].IPv4, clients[j].IPv4) })
}

func (a *app) clientsGetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get ADDR",
		Short: "Show the client holding an IPv4 address, or connected from an IPv6 address",
		Long: `Show the client holding the IPv4 address ADDR, or the one connected from the
IPv6 address ADDR (the client's outer address, as in "clients list").
Exits 4 when no client matches. An IPv6 address connected several times (it
holds several IPv4 addresses) is an error (exit 1) that lists them: give one
of their IPv4 addresses, or see them all with "clients list --v6-prefix ADDR".
With -o json: one client object.`,
		Example: `  4over6ctl clients get 13.8.0.2 -o json
  4over6ctl clients get fd00:46::2`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs("ADDR")(cmd, args); err != nil {
				return err
			}
			_, err := parseClientAddr(args[0])
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, _ := parseClientAddr(args[0])
			var cl Client
			if addr.Is6() {
				c, err := a.clientByIPv6(cmd, addr)
				if err != nil {
					return err
				}
				cl = c
			} else {
				ctx, cancel := a.callContext(cmd)
				defer cancel()
				resp, err := a.ctrl().GetClient(ctx, &cpv1.GetClientRequest{Address: addr.String()})
				if err != nil {
					return notFound(a.rpcError(a.controller, err), "no client holds %s", addr)
				}
				if resp.GetClient() == nil {
					return &cliError{code: exitNotFound, msg: fmt.Sprintf("no client holds %s", addr)}
				}
				cl = clientFromProto(resp.GetClient())
			}
			return a.emit(cl, func(w io.Writer) { a.clientDetail(w, cl) })
		},
	}
	return needs(cmd, needController)
}

// clientByIPv6 finds the one client connected from addr.
func (a *app) clientByIPv6(cmd *cobra.Command, addr netip.Addr) (Client, error) {
	clients, err := a.listClients(cmd, &cpv1.ListClientsRequest{Ipv6Prefix: netip.PrefixFrom(addr, 128).String()})
	if err != nil {
		return Client{}, err
	}
	switch len(clients) {
	case 0:
		return Client{}, &cliError{code: exitNotFound, msg: fmt.Sprintf("no client is connected from %s", addr)}
	case 1:
		return clients[0], nil
	}
	held := make([]string, len(clients))
	for i, c := range clients {
		held[i] = fmt.Sprintf("%s (port %d, data plane %s, session %s)", c.IPv4, c.Port, orDash(c.Dataplane), orDash(c.Session))
	}
	return Client{}, &cliError{code: exitError, msg: fmt.Sprintf("%s is connected %d times, holding %s: give one of these IPv4 addresses, or list them all with \"4over6ctl clients list --v6-prefix %s\"",
		addr, len(clients), strings.Join(held, ", "), addr)}
}

// parseClientAddr accepts a client's IPv4 address or its (outer) IPv6
// address.
func parseClientAddr(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(strings.TrimSpace(s))
	switch {
	case err == nil && addr.Is4():
		return addr, nil
	case err == nil && addr.Is6() && !addr.Is4In6() && addr.Zone() == "":
		return addr, nil
	}
	return netip.Addr{}, usageErrorf("invalid ADDR %q: want a client's IPv4 address such as 13.8.0.2 or its IPv6 address such as fd00:46::2", s)
}

// ipv4Arg checks a command's single IPv4 ADDR argument.
func ipv4Arg(cmd *cobra.Command, args []string) error {
	if err := exactArgs("ADDR")(cmd, args); err != nil {
		return err
	}
	_, err := parseIPv4(args[0])
	return err
}

// notFound rewrites the message of a NOT_FOUND error (exit 4).
func notFound(err error, format string, args ...any) error {
	var ce *cliError
	if errors.As(err, &ce) && ce.code == exitNotFound {
		ce.msg = fmt.Sprintf(format, args...)
	}
	return err
}

// parseIPv4 accepts a dotted-quad IPv4 address only.
func parseIPv4(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil || !addr.Is4() {
		return netip.Addr{}, usageErrorf("invalid ADDR %q: want an IPv4 address such as 13.8.0.2", s)
	}
	return addr, nil
}

// addrLess orders IP addresses numerically; unparsable (or empty) ones last.
func addrLess(x, y string) bool {
	ax, ex := netip.ParseAddr(x)
	ay, ey := netip.ParseAddr(y)
	switch {
	case ex != nil && ey != nil:
		return x < y
	case ex != nil:
		return false
	case ey != nil:
		return true
	}
	return ax.Less(ay)
}

func clientFromProto(c *cpv1.Client) Client {
	k := c.GetCounters()
	return Client{
		IPv4:           c.GetAddress(),
		IPv6:           c.GetClientIpv6(),
		Port:           c.GetClientPort(),
		Dataplane:      c.GetDataplaneId(),
		Session:        c.GetSessionId(),
		ConnectedSince: timestamp(c.GetConnectedAt()),
		LastHeard:      timestamp(c.GetLastHeard()),
		Counters: Counters{
			BytesFromClient:   k.GetBytesFromClient(),
			PacketsFromClient: k.GetPacketsFromClient(),
			BytesToClient:     k.GetBytesToClient(),
			PacketsToClient:   k.GetPacketsToClient(),
		},
		Sticky: c.GetSticky(),
		Rates: Rates{
			BytesFromClientPerSecond:   c.GetRates().GetBytesFromClient(),
			PacketsFromClientPerSecond: c.GetRates().GetPacketsFromClient(),
			BytesToClientPerSecond:     c.GetRates().GetBytesToClient(),
			PacketsToClientPerSecond:   c.GetRates().GetPacketsToClient(),
		},
	}
}

func (a *app) clientsTable(w io.Writer, clients []Client) {
	if len(clients) == 0 {
		fmt.Fprintln(w, "No clients connected.")
		return
	}
	fmt.Fprintln(w, "IPV4\tIPV6\tPORT\tDATAPLANE\tCONNECTED\tLAST HEARD\tFROM CLIENT\tTO CLIENT\tFROM CLIENT/S\tTO CLIENT/S")
	for _, c := range clients {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			c.IPv4, orDash(c.IPv6), c.Port, orDash(c.Dataplane),
			a.ago(c.ConnectedSince), a.ago(c.LastHeard),
			traffic(c.BytesFromClient, c.PacketsFromClient), traffic(c.BytesToClient, c.PacketsToClient),
			rate(c.BytesFromClientPerSecond, c.PacketsFromClientPerSecond), rate(c.BytesToClientPerSecond, c.PacketsToClientPerSecond))
	}
}

func (a *app) clientDetail(w io.Writer, c Client) {
	fmt.Fprintf(w, "IPv4:\t%s\n", c.IPv4)
	fmt.Fprintf(w, "IPv6:\t%s port %d\n", orDash(c.IPv6), c.Port)
	fmt.Fprintf(w, "Data plane:\t%s\n", orDash(c.Dataplane))
	fmt.Fprintf(w, "Session:\t%s\n", orDash(c.Session))
	sticky := "no"
	if c.Sticky {
		sticky = "yes (returning client: the address it held last)"
	}
	fmt.Fprintf(w, "Sticky:\t%s\n", sticky)
	fmt.Fprintf(w, "Connected since:\t%s\n", a.when(c.ConnectedSince))
	fmt.Fprintf(w, "Last heard:\t%s\n", a.when(c.LastHeard))
	fmt.Fprintf(w, "From client:\t%s\n", traffic(c.BytesFromClient, c.PacketsFromClient))
	fmt.Fprintf(w, "To client:\t%s\n", traffic(c.BytesToClient, c.PacketsToClient))
	fmt.Fprintf(w, "Rate from client:\t%s\n", rate(c.BytesFromClientPerSecond, c.PacketsFromClientPerSecond))
	fmt.Fprintf(w, "Rate to client:\t%s\n", rate(c.BytesToClientPerSecond, c.PacketsToClientPerSecond))
}

func (a *app) clientsKickCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "kick ADDR",
		Short: "Disconnect the client holding an IPv4 address",
		Long: `Ask the controller to have the data plane holding ADDR close that client. Its
address is released as for any disconnect; the client may connect again (use
"dataplane drain" to keep new clients away). Prints the data plane and session
that were closed. Exits 4 when no client holds ADDR.`,
		Example: `  4over6ctl clients kick 13.8.0.2
  4over6ctl clients kick 13.8.0.2 --reason "abuse report 1234" -o json`,
		Args: ipv4Arg,
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, _ := parseIPv4(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.ctrl().KickClient(ctx, &cpv1.KickClientRequest{Address: addr.String(), Reason: reason})
			if err != nil {
				return notFound(a.rpcError(a.controller, err), "no client holds %s", addr)
			}
			k := Kick{IPv4: addr.String(), Dataplane: resp.GetDataplaneId(), Session: resp.GetSessionId()}
			return a.emit(k, func(w io.Writer) {
				fmt.Fprintf(w, "Kicked %s: data plane %s closed session %s; the address is released.\n",
					k.IPv4, orDash(k.Dataplane), orDash(k.Session))
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the data plane's log (default: the controller's)")
	return needs(cmd, needController)
}
