package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) clientsCommand() *cobra.Command {
	return groupCommand("clients", "Clients connected through the tunnel (the controller's client table)",
		a.clientsListCommand(),
		a.clientsGetCommand(),
	)
}

func (a *app) clientsListCommand() *cobra.Command {
	var dataplaneID string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the clients holding an address",
		Long: `List every client holding an address, sorted by IPv4 address.
With -o json: a JSON array of client objects ([] when there are none).`,
		Example: `  4over6ctl clients list
  4over6ctl clients list -o json | jq -r '.[] | "\(.ipv4) \(.ipv6)"'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clients, err := a.listClients(cmd, dataplaneID)
			if err != nil {
				return err
			}
			return a.emit(clients, func(w io.Writer) { a.clientsTable(w, clients) })
		},
	}
	cmd.Flags().StringVar(&dataplaneID, "dataplane-id", "", "only clients on the data plane with this id")
	return needs(cmd, needController)
}

func (a *app) listClients(cmd *cobra.Command, dataplaneID string) ([]Client, error) {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	c := cpv1.NewControllerServiceClient(a.controller.conn)
	stream, err := c.ListClients(ctx, &cpv1.ListClientsRequest{DataplaneId: dataplaneID})
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
	sort.SliceStable(clients, func(i, j int) bool { return addrLess(clients[i].IPv4, clients[j].IPv4) })
	return clients, nil
}

func (a *app) clientsGetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get ADDR",
		Short: "Show the client holding one IPv4 address",
		Long: `Show the client holding the IPv4 address ADDR.
Exits 4 when no client holds it. With -o json: one client object.`,
		Example: `  4over6ctl clients get 13.8.0.2 -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs("ADDR")(cmd, args); err != nil {
				return err
			}
			_, err := parseIPv4(args[0])
			return err
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, _ := parseIPv4(args[0])
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			c := cpv1.NewControllerServiceClient(a.controller.conn)
			resp, err := c.GetClient(ctx, &cpv1.GetClientRequest{Address: addr.String()})
			if err != nil {
				err = a.rpcError(a.controller, err)
				if ce, ok := err.(*cliError); ok && ce.code == exitNotFound {
					ce.msg = fmt.Sprintf("no client holds %s", addr)
				}
				return err
			}
			if resp.GetClient() == nil {
				return &cliError{code: exitNotFound, msg: fmt.Sprintf("no client holds %s", addr)}
			}
			cl := clientFromProto(resp.GetClient())
			return a.emit(cl, func(w io.Writer) { a.clientDetail(w, cl) })
		},
	}
	return needs(cmd, needController)
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
	}
}

func (a *app) clientsTable(w io.Writer, clients []Client) {
	if len(clients) == 0 {
		fmt.Fprintln(w, "No clients connected.")
		return
	}
	fmt.Fprintln(w, "IPV4\tIPV6\tPORT\tDATAPLANE\tCONNECTED\tLAST HEARD\tFROM CLIENT\tTO CLIENT")
	for _, c := range clients {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n",
			c.IPv4, orDash(c.IPv6), c.Port, orDash(c.Dataplane),
			a.ago(c.ConnectedSince), a.ago(c.LastHeard),
			traffic(c.BytesFromClient, c.PacketsFromClient), traffic(c.BytesToClient, c.PacketsToClient))
	}
}

func (a *app) clientDetail(w io.Writer, c Client) {
	fmt.Fprintf(w, "IPv4:\t%s\n", c.IPv4)
	fmt.Fprintf(w, "IPv6:\t%s port %d\n", orDash(c.IPv6), c.Port)
	fmt.Fprintf(w, "Data plane:\t%s\n", orDash(c.Dataplane))
	fmt.Fprintf(w, "Session:\t%s\n", orDash(c.Session))
	fmt.Fprintf(w, "Connected since:\t%s\n", a.when(c.ConnectedSince))
	fmt.Fprintf(w, "Last heard:\t%s\n", a.when(c.LastHeard))
	fmt.Fprintf(w, "From client:\t%s\n", traffic(c.BytesFromClient, c.PacketsFromClient))
	fmt.Fprintf(w, "To client:\t%s\n", traffic(c.BytesToClient, c.PacketsToClient))
}
