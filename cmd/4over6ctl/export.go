package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

func (a *app) exportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: `Print the current pool range, DNS servers and reservations as a file for "apply -f"`,
		Long: `Print what "apply -f" sets, as the controller has it now: the pool's client
range, the DNS servers and every reservation, with prune: true, so that
applying the output to this controller changes nothing and applying it to
another one makes it match. Settings that apply does not take (the pool
prefix, gateway and route, the daemons' flags and the data planes' limits)
are their configuration files' and are not printed.

The output is YAML (-o json: the same keys in JSON, which apply takes too).`,
		Example: `  4over6ctl export > fourover6.yaml
  4over6ctl export | 4over6ctl --controller 10.0.0.3:7000 apply -f - --dry-run`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			p, err := a.getPool(ctx)
			if err != nil {
				return err
			}
			dns, err := a.getDNS(ctx)
			if err != nil {
				return err
			}
			rs, err := a.listReservations(ctx)
			if err != nil {
				return err
			}
			ex := Export{Pool: ExportPool{Range: rangeText(p.RangeFirst, p.RangeLast)}, DNS: dns, Reservations: rs, Prune: true}
			if a.format != formatTable {
				return a.emit(ex, nil)
			}
			return writeExportYAML(a.stdout, ex, a.controller.addressText(), a.now().UTC().Format("2006-01-02T15:04:05Z"))
		},
	}
	return needs(cmd, needController)
}

// writeExportYAML is export's default output: the YAML document apply
// reads, under a comment saying where it came from.
func writeExportYAML(w io.Writer, ex Export, from, at string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# fourover6 settings exported from the controller at %s, %s.\n", from, at)
	b.WriteString("# Apply with: 4over6ctl apply -f FILE [--dry-run]\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(ex); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}
