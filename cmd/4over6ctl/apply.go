package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

const applyFileHelp = `The file is YAML; every key is optional and a missing key leaves that setting
alone. Unknown keys are an error (exit 2), as are invalid addresses.

  pool:
    range: 13.8.0.2-13.8.0.128   # the client range, FIRST-LAST or "all"
  dns: [1.1.1.1, 8.8.8.8, 9.9.9.9] # one to three IPv4 servers (or "a,b,c")
  reservations:                  # client IPv6 address or prefix -> IPv4
    - client: fd00:46::2
      ipv4: 13.8.0.50
    - client: fd00:47::/64
      ipv4: 13.8.0.51
  prune: true                    # delete reservations not listed above

The reservations list has the shape of "reservations list -o yaml".`

func (a *app) applyCommand() *cobra.Command {
	var (
		file   string
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make the pool range, DNS servers and reservations match a file",
		Long: `Compare the controller's pool range, DNS servers and reservations with FILE
(- for standard input) and change what differs, printing one line per change;
"no changes" when everything matches, so applying a file twice changes
nothing the second time. --dry-run prints the changes and makes none.

Changes are made in this order: reservations to delete (prune), the pool
range, reservations to create or update, DNS. On an error the changes before
it stay made; the message says how many.

` + applyFileHelp,
		Example: `  4over6ctl apply -f fourover6.yaml --dry-run
  4over6ctl apply -f fourover6.yaml
  generate-config | 4over6ctl apply -f - -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErrorf("%q needs -f FILE (- for standard input)", cmd.CommandPath())
			}
			data, err := readApplyFile(cmd, file)
			if err != nil {
				return err
			}
			spec, err := parseApplyFile(file, data)
			if err != nil {
				return err
			}
			return a.apply(cmd, file, spec, dryRun)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the YAML file to apply (- for standard input)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
	_ = cmd.MarkFlagFilename("filename", "yaml", "yml")
	return needs(cmd, needController)
}

func readApplyFile(cmd *cobra.Command, file string) ([]byte, error) {
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(cmd.InOrStdin())
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, usageErrorf("cannot read %s: %v", file, err)
	}
	return data, nil
}

// applySpec is a parsed apply file. A nil/false field means "leave alone".
type applySpec struct {
	rangeSet        bool
	rng             poolRange
	dns             []string
	reservationsSet bool
	reservations    []Reservation // canonical clients
	prune           bool
}

// ---- parsing ----

// specParser turns the YAML tree into an applySpec with errors that name
// the file, the line and the key.
type specParser struct{ file string }

func (p specParser) errorf(n *yaml.Node, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if n != nil && n.Line > 0 {
		return usageErrorf("%s: line %d: %s", p.file, n.Line, msg)
	}
	return usageErrorf("%s: %s", p.file, msg)
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// mapping walks a mapping node, rejecting duplicate and unknown keys; the
// ignored keys are skipped (f is not called for them).
func (p specParser) mapping(n *yaml.Node, where string, known []string, f func(key string, k, v *yaml.Node) error, ignored ...string) error {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		return p.errorf(n, "%s: want a mapping with the keys %s", where, strings.Join(known, ", "))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		key := k.Value
		if seen[key] {
			return p.errorf(k, "%s: key %q given twice", where, key)
		}
		seen[key] = true
		if slices.Contains(ignored, key) {
			continue
		}
		if !slices.Contains(known, key) {
			return p.errorf(k, "unknown key %q in %s (known keys: %s)", key, where, strings.Join(known, ", "))
		}
		if err := f(key, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (p specParser) scalar(n *yaml.Node, key string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.errorf(n, "%s: want a single value", key)
	}
	return n.Value, nil
}

func parseApplyFile(file string, data []byte) (*applySpec, error) {
	p := specParser{file: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, p.errorf(nil, "the file is empty")
		}
		return nil, p.errorf(nil, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, p.errorf(&more, "more than one YAML document: put everything in one")
	}
	if len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null") {
		return nil, p.errorf(nil, "the file is empty")
	}
	spec := &applySpec{}
	var pruneNode *yaml.Node
	err := p.mapping(doc.Content[0], "the file", []string{"pool", "dns", "reservations", "prune"}, func(key string, k, v *yaml.Node) error {
		switch key {
		case "pool":
			return p.mapping(v, "pool", []string{"range"}, func(_ string, _, v *yaml.Node) error {
				s, err := p.scalar(v, "pool.range")
				if err != nil {
					return err
				}
				r, err := parseRange(s)
				if err != nil {
					return p.errorf(v, "pool.range: %v", err)
				}
				spec.rangeSet, spec.rng = true, r
				return nil
			})
		case "dns":
			var args []string
			switch v.Kind {
			case yaml.SequenceNode:
				for _, item := range v.Content {
					s, err := p.scalar(deref(item), "dns")
					if err != nil {
						return err
					}
					args = append(args, s)
				}
			default:
				s, err := p.scalar(v, "dns")
				if err != nil {
					return p.errorf(v, "dns: want a list of one to three IPv4 addresses")
				}
				args = []string{s}
			}
			servers, err := parseDNS(args)
			if err != nil {
				return p.errorf(v, "dns: %v", err)
			}
			spec.dns = servers
		case "reservations":
			if v.Kind != yaml.SequenceNode {
				return p.errorf(v, "reservations: want a list of {client, ipv4} (use [] for none)")
			}
			spec.reservationsSet = true
			spec.reservations = []Reservation{}
			byClient, byAddr := map[string]int{}, map[string]int{}
			for _, item := range v.Content {
				item = deref(item)
				var r Reservation
				// in_use and holder are what "reservations list" adds: its
				// output applies as it is, and they are ignored.
				err := p.mapping(item, "a reservation", []string{"client", "ipv4"}, func(key string, _, v *yaml.Node) error {
					s, err := p.scalar(v, key)
					if err != nil {
						return err
					}
					if key == "client" {
						r.Client, err = parseReservationClient(s)
					} else {
						var addr netip.Addr
						addr, err = parseIPv4(s)
						r.IPv4 = addr.String()
					}
					if err != nil {
						return p.errorf(v, "%s: %v", key, err)
					}
					return nil
				}, "in_use", "holder")
				if err != nil {
					return err
				}
				if r.Client == "" || r.IPv4 == "" {
					return p.errorf(item, "a reservation needs both client and ipv4")
				}
				if line, dup := byClient[r.Client]; dup {
					return p.errorf(item, "reservation for %s given twice (also on line %d)", r.Client, line)
				}
				if line, dup := byAddr[r.IPv4]; dup {
					return p.errorf(item, "%s reserved twice (also on line %d)", r.IPv4, line)
				}
				byClient[r.Client], byAddr[r.IPv4] = item.Line, item.Line
				spec.reservations = append(spec.reservations, r)
			}
		case "prune":
			// Only true and false: YAML 1.1's yes/no/on/off are too easy to misread.
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || v.Decode(&spec.prune) != nil {
				return p.errorf(v, "prune: want true or false")
			}
			pruneNode = k
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if spec.prune && !spec.reservationsSet {
		return nil, p.errorf(pruneNode, "prune: true needs a reservations list (reservations: [] deletes them all)")
	}
	return spec, nil
}

// ---- planning and applying ----

type plannedChange struct {
	Change
	do func(ctx context.Context) error
}

func (a *app) plan(ctx context.Context, spec *applySpec) ([]plannedChange, error) {
	var deletes, pool, sets, dns []plannedChange
	if spec.rangeSet {
		p, err := a.getPool(ctx)
		if err != nil {
			return nil, err
		}
		want, to := spec.rng, spec.rng.String()
		if want.first == "" {
			if whole, ok := wholeRange(p.Prefix, p.Gateway); ok {
				want, to = whole, whole.String()+" (all)"
			}
		}
		if want.first != p.RangeFirst || want.last != p.RangeLast {
			r := spec.rng
			pool = append(pool, plannedChange{
				Change: Change{Kind: "pool", Key: "range", Action: "update", From: rangeText(p.RangeFirst, p.RangeLast), To: to},
				do: func(ctx context.Context) error {
					_, err := a.ctrl().UpdatePool(ctx, &cpv1.UpdatePoolRequest{RangeFirst: r.first, RangeLast: r.last})
					return a.rpcError(a.controller, err)
				},
			})
		}
	}
	if spec.dns != nil {
		have, err := a.getDNS(ctx)
		if err != nil {
			return nil, err
		}
		if !dnsSatisfied(have, spec.dns) {
			want := spec.dns
			dns = append(dns, plannedChange{
				Change: Change{Kind: "dns", Key: "servers", Action: "update", From: strings.Join(have, ","), To: strings.Join(want, ",")},
				do: func(ctx context.Context) error {
					_, err := a.ctrl().SetDNS(ctx, &cpv1.SetDNSRequest{Servers: want})
					return a.rpcError(a.controller, err)
				},
			})
		}
	}
	if spec.reservationsSet {
		current, err := a.listReservations(ctx)
		if err != nil {
			return nil, err
		}
		have := map[string]Reservation{} // canonical client -> as the controller has it
		for _, r := range current {
			have[canonicalClient(r.Client)] = r
		}
		wanted := map[string]bool{}
		for _, r := range spec.reservations {
			wanted[r.Client] = true
			old, ok := have[r.Client]
			if ok && old.IPv4 == r.IPv4 {
				continue
			}
			c := Change{Kind: "reservation", Key: r.Client, Action: "create", To: r.IPv4}
			if ok {
				c.Action, c.From = "update", old.IPv4
			}
			r := r
			sets = append(sets, plannedChange{Change: c, do: func(ctx context.Context) error {
				_, err := a.setReservation(ctx, r)
				return err
			}})
		}
		if spec.prune {
			for _, r := range current {
				if wanted[canonicalClient(r.Client)] {
					continue
				}
				client := r.Client
				deletes = append(deletes, plannedChange{
					Change: Change{Kind: "reservation", Key: canonicalClient(r.Client), Action: "delete", From: r.IPv4},
					do:     func(ctx context.Context) error { return a.deleteReservation(ctx, client) },
				})
			}
		}
	}
	sort.SliceStable(sets, func(i, j int) bool { return addrLess(sets[i].To, sets[j].To) })
	return append(append(append(deletes, pool...), sets...), dns...), nil
}

// changeLine is how a change reads in table mode.
func changeLine(c Change, dryRun bool) string {
	var s string
	switch c.Kind {
	case "pool":
		s = fmt.Sprintf("pool range: %s -> %s", c.From, c.To)
	case "dns":
		s = fmt.Sprintf("dns: %s -> %s", c.From, c.To)
	default:
		switch c.Action {
		case "create":
			s = fmt.Sprintf("reservation %s -> %s: created", c.Key, c.To)
		case "update":
			s = fmt.Sprintf("reservation %s -> %s: updated (was %s)", c.Key, c.To, c.From)
		default:
			s = fmt.Sprintf("reservation %s -> %s: deleted", c.Key, c.From)
		}
	}
	if dryRun {
		s += " (dry run)"
	}
	return s
}

func (a *app) apply(cmd *cobra.Command, file string, spec *applySpec, dryRun bool) error {
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	planned, err := a.plan(ctx, spec)
	if err != nil {
		return err
	}
	res := ApplyResult{File: file, DryRun: dryRun, Changes: []Change{}}
	table := a.format == formatTable
	for i, pc := range planned {
		if !dryRun {
			if err := pc.do(ctx); err != nil {
				ce := asCLIError(err)
				return &cliError{code: ce.code, msg: fmt.Sprintf("%s: %s: %s (%d of %d changes made before this one)",
					file, changeLine(pc.Change, false), ce.msg, i, len(planned))}
			}
		}
		res.Changes = append(res.Changes, pc.Change)
		if table {
			fmt.Fprintln(a.stdout, changeLine(pc.Change, dryRun))
		}
	}
	if !table {
		return a.emit(res, nil)
	}
	switch {
	case len(planned) == 0:
		fmt.Fprintln(a.stdout, "no changes")
	case dryRun:
		fmt.Fprintf(a.stdout, "dry run: %d change%s planned, nothing changed\n", len(planned), plural(len(planned)))
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
