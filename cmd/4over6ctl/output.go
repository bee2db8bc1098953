package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type format int

const (
	formatTable format = iota
	formatJSON
	formatYAML
)

var formatNames = []string{"table", "json", "yaml"}

func parseFormat(s string) (format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "table", "":
		return formatTable, nil
	case "json":
		return formatJSON, nil
	case "yaml", "yml":
		return formatYAML, nil
	}
	return formatTable, usageErrorf("invalid -o/--output %q: want one of %s", s, strings.Join(formatNames, ", "))
}

// emit writes v as JSON or YAML, or calls table with a tabwriter.
func (a *app) emit(v any, table func(w io.Writer)) error {
	return writeFormatted(a.stdout, a.format, v, table)
}

func writeFormatted(w io.Writer, f format, v any, table func(w io.Writer)) error {
	switch f {
	case formatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(v)
	case formatYAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// errorOutput is how an error looks with -o json / -o yaml (on stderr).
type errorOutput struct {
	Error string `json:"error" yaml:"error"`
	Code  int    `json:"code" yaml:"code"`
}

// printError writes err to stderr in the output format chosen by -o: JSON on
// one line, YAML, or "4over6ctl: message" for table. When -o itself is
// invalid, it falls back to plain text.
func (a *app) printError(cmd *cobra.Command, args []string, err *cliError) {
	if err.silent {
		return
	}
	f := formatTable
	if ff, perr := parseFormat(outputArg(args, a.output)); perr == nil {
		f = ff
	}
	switch f {
	case formatJSON:
		b, _ := json.Marshal(errorOutput{Error: err.msg, Code: err.code})
		fmt.Fprintf(a.stderr, "%s\n", b)
		return
	case formatYAML:
		_ = writeFormatted(a.stderr, f, errorOutput{Error: err.msg, Code: err.code}, nil)
		return
	}
	fmt.Fprintf(a.stderr, "4over6ctl: %s\n", err.msg)
	if err.usage && cmd != nil {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
}

// outputArg finds the value of -o/--output in args the way pflag would (the
// last one wins), so that an error found while parsing the flags (say an
// unknown flag before -o json) is still printed in the format asked for.
// Without -o in args it returns def.
func outputArg(args []string, def string) string {
	v := def
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			return v
		case arg == "-o" || arg == "--output":
			if i+1 < len(args) {
				v = args[i+1]
				i++
			}
		case strings.HasPrefix(arg, "--output="):
			v = strings.TrimPrefix(arg, "--output=")
		case strings.HasPrefix(arg, "-o="):
			v = strings.TrimPrefix(arg, "-o=")
		case strings.HasPrefix(arg, "-o") && !strings.HasPrefix(arg, "--"):
			v = strings.TrimPrefix(arg, "-o")
		}
	}
	return v
}

// ---- conversions shared by the commands ----

// timestamp formats a protobuf timestamp as RFC 3339 in UTC, or "" when unset.
func timestamp(ts *timestamppb.Timestamp) string {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// ---- table helpers ----

// ago renders an RFC 3339 time as "5m12s ago" ("-" when unknown).
func (a *app) ago(rfc string) string {
	t, err := time.Parse(time.RFC3339, rfc)
	if err != nil {
		return "-"
	}
	return shortDuration(a.now().Sub(t)) + " ago"
}

// when renders an RFC 3339 time as "2006-01-02 15:04:05 UTC (5m ago)".
func (a *app) when(rfc string) string {
	t, err := time.Parse(time.RFC3339, rfc)
	if err != nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + a.ago(rfc) + ")"
}

// shortDuration is a compact, human duration: 42s, 5m12s, 3h4m, 2d3h.
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

// humanBytes renders a byte count with IEC units: 0 B, 512 B, 1.5 KiB, 3.2 GiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// traffic renders bytes and packets in one direction: "1.5 KiB (12 pkts)".
func traffic(bytes, packets uint64) string {
	return fmt.Sprintf("%s (%d pkts)", humanBytes(bytes), packets)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// rate renders bytes and packets per second in one direction:
// "1.5 KiB/s (12 pkt/s)".
func rate(bytes, packets float64) string {
	b := humanBytes(uint64(bytes + 0.5))
	return fmt.Sprintf("%s/s (%s pkt/s)", b, strconv.FormatFloat(packets, 'f', precision(packets), 64))
}

// precision keeps small rates readable ("0.2") and large ones whole.
func precision(v float64) int {
	if v != 0 && v < 10 {
		return 1
	}
	return 0
}
