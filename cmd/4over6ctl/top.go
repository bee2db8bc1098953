package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// ANSI sequences of the refreshing view: home and clear the screen, bold.
const (
	ansiClear = "\x1b[H\x1b[2J"
	ansiBold  = "\x1b[1m"
	ansiReset = "\x1b[0m"
)

func (a *app) clientsTopCommand() *cobra.Command {
	var (
		f        clientFilter
		interval time.Duration
		once     bool
		limit    int
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show the busiest clients, refreshed, like top",
		Long: `Show the clients sorted by their current traffic (bytes per second, both ways),
busiest first, with a line of totals, refreshed every --interval until Ctrl-C.
Rates are what the controller computed from the data planes' last two
reports of each client (every --report-interval of the data plane, 5s by
default), so a view refreshed faster changes only that often.

On a terminal each refresh redraws the screen and the list is cut to fit its
height (-n to choose); the header is bold unless $NO_COLOR is set. Elsewhere
(a pipe, a file) screens follow one another, without control sequences.
--once prints one screen and exits, for scripts. -o json prints each screen
as one line holding the array of client objects of "clients list" (-o yaml:
one document per screen). The filters are those of "clients list".

` + dataplaneFilterNote,
		Example: `  4over6ctl clients top
  4over6ctl clients top --once -n 10
  4over6ctl clients top --once -o json | jq '.[0]'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, prefix, err := a.filterValues(cmd, &f)
			if err != nil {
				return err
			}
			if interval <= 0 {
				return usageErrorf("invalid --interval %v: must be positive", interval)
			}
			if limit < 0 {
				return usageErrorf("invalid -n %d: must not be negative", limit)
			}
			req := &cpv1.ListClientsRequest{DataplaneId: id, Ipv6Prefix: prefix}
			tty := isTerminal(a.stdout)
			color := tty && a.getenv("NO_COLOR") == ""
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				clients, err := a.listClients(cmd, req)
				if err != nil {
					return err
				}
				sortByRate(clients)
				if err := a.topScreen(clients, tty, color, limit); err != nil {
					return err
				}
				if once {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil // Ctrl-C: the way out of a refreshing view
				case <-t.C:
				}
			}
		},
	}
	f.addFlags(cmd)
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between refreshes")
	cmd.Flags().BoolVar(&once, "once", false, "print one screen and exit")
	cmd.Flags().IntVarP(&limit, "lines", "n", 0, "clients shown (0: as many as the terminal holds, all when not a terminal)")
	return needs(cmd, needController)
}

// topScreen prints one screen of "clients top".
func (a *app) topScreen(clients []Client, tty, color bool, limit int) error {
	switch a.format {
	case formatJSON:
		b, err := json.Marshal(clients)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	case formatYAML:
		if _, err := io.WriteString(a.stdout, "---\n"); err != nil {
			return err
		}
		return a.emit(clients, nil)
	}
	shown := clients
	if limit == 0 && tty {
		if rows := terminalRows(a.stdout); rows > 4 {
			limit = rows - 4 // the summary, a blank line, the header, the cursor's line
		}
	}
	if limit > 0 && len(shown) > limit {
		shown = shown[:limit]
	}
	var sum Rates
	for _, c := range clients {
		sum.BytesFromClientPerSecond += c.BytesFromClientPerSecond
		sum.PacketsFromClientPerSecond += c.PacketsFromClientPerSecond
		sum.BytesToClientPerSecond += c.BytesToClientPerSecond
		sum.PacketsToClientPerSecond += c.PacketsToClientPerSecond
	}
	w := a.stdout
	if tty {
		fmt.Fprint(w, ansiClear)
	}
	bold, reset := "", ""
	if color {
		bold, reset = ansiBold, ansiReset
	}
	fmt.Fprintf(w, "%s  %d clients  from clients %s  to clients %s\n\n",
		a.now().UTC().Format("15:04:05"), len(clients),
		rate(sum.BytesFromClientPerSecond, sum.PacketsFromClientPerSecond),
		rate(sum.BytesToClientPerSecond, sum.PacketsToClientPerSecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%sIPV4\tDATAPLANE\tFROM CLIENT/S\tTO CLIENT/S\tFROM CLIENT\tTO CLIENT\tIPV6%s\n", bold, reset)
	for _, c := range shown {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.IPv4, orDash(c.Dataplane),
			rate(c.BytesFromClientPerSecond, c.PacketsFromClientPerSecond),
			rate(c.BytesToClientPerSecond, c.PacketsToClientPerSecond),
			humanBytes(c.BytesFromClient), humanBytes(c.BytesToClient), orDash(c.IPv6))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := len(clients) - len(shown); n > 0 {
		fmt.Fprintf(w, "... and %d more\n", n)
	}
	if !tty {
		fmt.Fprintln(w)
	}
	return nil
}

// terminalRows is the height of the terminal w is, 0 when unknown.
func terminalRows(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Row)
}
