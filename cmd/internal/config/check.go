package config

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Names of the flags that check the configuration instead of running.
const (
	CheckFlag = "check-config"
	PrintFlag = "print-config"
)

// Checks are the --check-config and --print-config flags of a command:
// like nginx -t and sshd -T, they validate the flags and the config file
// and exit (0 when good, 2 when not) without opening a socket, a device or
// a store. --print-config then prints the effective configuration as a
// file --config takes back, each value with where it came from.
//
// A command calls ApplyFlag, then its own validation, then, when Requested,
// Finish instead of starting.
type Checks struct {
	check, print bool
}

// AddCheckFlags registers --check-config and --print-config on fs.
func AddCheckFlags(fs *pflag.FlagSet) *Checks {
	c := new(Checks)
	fs.BoolVar(&c.check, CheckFlag, false, "validate the flags and the config file, print only problems, and exit: 0 when good, 2 when not (starts nothing)")
	fs.BoolVar(&c.print, PrintFlag, false, "validate like --check-config, then print the effective configuration as a YAML file for --config, each value commented with where it came from (default, flag, file)")
	return c
}

// Requested reports whether either flag was given: the command must stop
// after validation.
func (c *Checks) Requested() bool { return c != nil && (c.check || c.print) }

// Finish ends a check that validation passed: it prints the effective
// configuration to w when --print-config was given, and nothing otherwise.
func (c *Checks) Finish(w io.Writer, fs *pflag.FlagSet) error {
	if !c.print {
		return nil
	}
	return Print(w, fs)
}

// originKey is the flag annotation Apply leaves on a flag it set from the
// file: the path and the line. The flag set is where pflag keeps "changed"
// too, so the origin travels with the value.
const originKey = "fourover6.io/config-origin"

// Origin says where a flag's value came from.
type Origin struct {
	Kind OriginKind
	File string // Kind File: the config file and the key's line
	Line int
}

// OriginKind is the kind of an Origin.
type OriginKind int

const (
	FromDefault OriginKind = iota
	FromFlag               // the command line
	FromFile               // the --config file
)

func (o Origin) String() string {
	switch o.Kind {
	case FromFlag:
		return "flag"
	case FromFile:
		return fmt.Sprintf("file %s:%d", o.File, o.Line)
	default:
		return "default"
	}
}

// OriginOf returns where the value of fs's flag name came from.
func OriginOf(fs *pflag.FlagSet, name string) Origin {
	f := fs.Lookup(name)
	if f == nil || !f.Changed {
		return Origin{Kind: FromDefault}
	}
	if a := f.Annotations[originKey]; len(a) == 2 {
		line, _ := strconv.Atoi(a[1])
		return Origin{Kind: FromFile, File: a[0], Line: line}
	}
	return Origin{Kind: FromFlag}
}

func markFromFile(fs *pflag.FlagSet, name, path string, line int) {
	fs.SetAnnotation(name, originKey, []string{path, strconv.Itoa(line)})
}

// Print writes every setting of fs that a config file can hold as one YAML
// mapping, in the form Apply reads: scalars as the flag prints them, list
// flags as lists. Each line ends with a comment naming the value's Origin.
// Hidden flags (debugging aids) are listed only when they were set.
func Print(w io.Writer, fs *pflag.FlagSet) error {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	header := []string{
		"Effective configuration of " + fs.Name() + "; each value says where it came from.",
		"It is a file for --config: keys are flag names, flags on the command line win.",
	}
	if f := fs.Lookup(Flag); f != nil && f.Value.String() != "" {
		header = append(header, "Read from: "+f.Value.String())
	}
	doc.HeadComment = "# " + strings.Join(header, "\n# ")
	fs.VisitAll(func(f *pflag.Flag) {
		if isNotSettable(f.Name) || (f.Hidden && !f.Changed) {
			return
		}
		k := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Name}
		v := valueNode(f)
		v.LineComment = "# " + OriginOf(fs, f.Name).String()
		doc.Content = append(doc.Content, k, v)
	})
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	return enc.Close()
}

// valueNode renders a flag's value: a list flag as a flow list of its
// items, a string with the quotes YAML needs, other scalars plain.
func valueNode(f *pflag.Flag) *yaml.Node {
	if isList(f) {
		seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, item := range listItems(f) {
			seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: item})
		}
		return seq
	}
	n := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Value.String()}
	if f.Value.Type() == "string" {
		// !!str makes the encoder quote what would otherwise read as
		// something else ("", "true", "[::]:5678"); Apply takes the text.
		n.Tag = "!!str"
	}
	return n
}

func listItems(f *pflag.Flag) []string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	// A list flag without SliceValue prints as "[a,b]" or "a,b".
	s := strings.TrimSuffix(strings.TrimPrefix(f.Value.String(), "["), "]")
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
