// Package config lets every flag of a daemon also come from a YAML file
// (--config FILE). The file is a mapping whose keys are flag names:
//
//	# /etc/fourover6/dataplane.yaml
//	id: dp1
//	keepalive-interval: 20s
//	send-queue: 256
//	dns: [8.8.8.8, 1.1.1.1]      # a list: the flag's comma-separated form
//	nat: true
//
// Flags given on the command line win over the file. A key that is not a
// flag is an error naming the key, the file and line, and the closest flag
// name; so is a value the flag does not accept. A key with no value
// ("dns:") is treated as absent, so example files can list every flag.
//
// Call Apply after the command line is parsed and before the flags are
// validated (with cobra: first thing in RunE or PreRunE). Apply remembers
// which values came from the file (OriginOf), for --print-config.
package config

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Flag is the name of the flag that names the file.
const Flag = "config"

// AddFlag registers --config on fs with the given default path ("" for
// none) and returns where its value lands.
func AddFlag(fs *pflag.FlagSet, defaultPath string) *string {
	return fs.String(Flag, defaultPath,
		"YAML `FILE` of flag values: keys are flag names (lists for list flags); flags on the command line override it")
}

// notSettable are flags that make no sense in a file.
var notSettable = []string{Flag, "help", "version", CheckFlag, PrintFlag}

func isNotSettable(name string) bool { return slices.Contains(notSettable, name) }

// Setting is one key of the file.
type Setting struct {
	Name   string
	Values []string // one for a scalar, each item for a list
	List   bool     // written as a YAML list
	Line   int
}

// Error is a problem in the file, with where it is.
type Error struct {
	Path string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	where := e.Path
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.Path, e.Line)
	}
	if e.Key == "" {
		return fmt.Sprintf("config %s: %s", where, e.Msg)
	}
	return fmt.Sprintf("config %s: key %q: %s", where, e.Key, e.Msg)
}

// ApplyFlag applies the file named by fs's --config flag, if it is set.
func ApplyFlag(fs *pflag.FlagSet) error {
	f := fs.Lookup(Flag)
	if f == nil {
		return nil
	}
	return Apply(fs, f.Value.String())
}

// Apply sets every flag named in the YAML file at path that was not given
// on the command line (fs.Changed). An empty path does nothing. All the
// file's problems are reported at once (errors.Join of *Error); keys,
// shapes and YAML syntax are checked before any flag is set.
func Apply(fs *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	settings, err := Read(fs, path)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range settings {
		if fs.Changed(s.Name) {
			continue // the command line wins
		}
		if err := set(fs, s); err != nil {
			errs = append(errs, &Error{Path: path, Line: s.Line, Key: s.Name, Msg: err.Error()})
			continue
		}
		markFromFile(fs, s.Name, path, s.Line)
	}
	return errors.Join(errs...)
}

// Read parses the file at path and checks its keys and their shape
// against fs, without setting anything. Values are checked by Apply.
func Read(fs *pflag.FlagSet, path string) ([]Setting, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(fs, path, data)
}

func parse(fs *pflag.FlagSet, path string, data []byte) ([]Setting, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty file
		}
		return nil, &Error{Path: path, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ") +
			` (quote values with [ ] { } : # or a leading *, e.g. listen: "[::]:5678")`}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{Path: path, Line: extra.Line, Msg: "more than one YAML document; want one mapping of flag names to values"}
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = *doc.Content[0]
	}
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return nil, nil // only comments
	}
	if doc.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: doc.Line, Msg: "want a mapping of flag names to values, e.g. \"keepalive-interval: 20s\""}
	}

	var out []Setting
	var errs []error
	seen := map[string]int{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		bad := func(msg string, args ...any) {
			errs = append(errs, &Error{Path: path, Line: k.Line, Key: k.Value, Msg: fmt.Sprintf(msg, args...)})
		}
		if k.Kind != yaml.ScalarNode {
			errs = append(errs, &Error{Path: path, Line: k.Line, Msg: "keys must be flag names"})
			continue
		}
		name := k.Value
		if prev, dup := seen[name]; dup {
			bad("given twice (first on line %d)", prev)
			continue
		}
		seen[name] = k.Line
		if isNotSettable(name) {
			bad("cannot be set from a config file")
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			msg := "unknown key: not a flag"
			if s := closest(fs, name); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			bad("%s", msg)
			continue
		}
		s := Setting{Name: name, Line: k.Line}
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				continue // "key:" with no value: absent
			}
			s.Values = []string{v.Value}
		case yaml.SequenceNode:
			if !isList(f) {
				bad("a list, but --%s takes one value", name)
				continue
			}
			s.List = true
			ok := true
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
					bad("list items must be plain values")
					ok = false
					break
				}
				s.Values = append(s.Values, item.Value)
			}
			if !ok {
				continue
			}
		case yaml.AliasNode:
			bad("YAML aliases are not supported here")
			continue
		default:
			bad("a mapping, but --%s takes %s", name, want(f))
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

func isList(f *pflag.Flag) bool {
	_, ok := f.Value.(pflag.SliceValue)
	return ok || strings.HasSuffix(f.Value.Type(), "Slice") || strings.HasSuffix(f.Value.Type(), "Array")
}

func want(f *pflag.Flag) string {
	if isList(f) {
		return "a list or a comma-separated value"
	}
	return "a single " + f.Value.Type()
}

// set applies one setting through the flag's own parser, as the command
// line would.
func set(fs *pflag.FlagSet, s Setting) error {
	f := fs.Lookup(s.Name)
	err := setValue(f, s, func(v string) error { return fs.Set(s.Name, v) })
	if err == nil && s.List && len(s.Values) == 0 {
		f.Changed = true // an explicit empty list
	}
	return err
}

func setValue(f *pflag.Flag, s Setting, setFn func(string) error) error {
	typ := f.Value.Type()
	var err error
	switch {
	case s.List && len(s.Values) == 0:
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = sv.Replace(nil)
		} else {
			err = setFn("")
		}
	case s.List && strings.HasSuffix(typ, "Array"):
		for _, v := range s.Values {
			if err = setFn(v); err != nil {
				break
			}
		}
	case s.List && typ == "stringSlice":
		err = setFn(csvLine(s.Values))
	case s.List:
		err = setFn(strings.Join(s.Values, ","))
	default:
		err = setFn(s.Values[0])
	}
	if err != nil {
		return explain(f, s, err)
	}
	return nil
}

// explain turns pflag's parse error into a message about the file.
func explain(f *pflag.Flag, s Setting, err error) error {
	val := strings.Join(s.Values, ",")
	if s.List {
		val = "[" + strings.Join(s.Values, ", ") + "]"
	}
	msg := fmt.Sprintf("%q is not a valid value for --%s (want %s): %v", val, f.Name, want(f), unwrapParse(err))
	if f.Value.Type() == "duration" || f.Value.Type() == "durationSlice" {
		msg += " (durations need a unit, e.g. 20s, 1m30s)"
	}
	return errors.New(msg)
}

// unwrapParse is the value parser's own error: pflag's InvalidValueError
// repeats the value and the flag, which the message names already.
func unwrapParse(err error) error {
	var iv *pflag.InvalidValueError
	if errors.As(err, &iv) && iv.Unwrap() != nil {
		return iv.Unwrap()
	}
	return err
}

func csvLine(vals []string) string {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write(vals)
	w.Flush()
	return strings.TrimRight(b.String(), "\r\n")
}

// closest returns the flag name nearest to name (edit distance), if it is
// near enough to be a likely typo.
func closest(fs *pflag.FlagSet, name string) string {
	norm := strings.ReplaceAll(strings.ToLower(name), "_", "-")
	best, bestD := "", 1<<30
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || isNotSettable(f.Name) {
			return
		}
		d := distance(norm, f.Name)
		if d < bestD || (d == bestD && f.Name < best) {
			best, bestD = f.Name, d
		}
	})
	if best == "" || bestD > max(2, len(name)/3) {
		return ""
	}
	return best
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
