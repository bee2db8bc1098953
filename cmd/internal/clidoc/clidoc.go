// Package clidoc writes the Markdown reference of a cobra command tree
// (github.com/spf13/cobra/doc), and checks that a checked-in copy is up to
// date, so the CLI reference never drifts from the binaries. It also writes
// the tree's man pages, which the build generates for packaging.
//
// The pages are reproducible: no generation date in the Markdown (the man
// pages take theirs from SOURCE_DATE_EPOCH when it is set), and a flag whose
// default is this machine's host name (the daemons' --id, --controller-id)
// shows HOSTNAME instead.
//
//	clidoc.AddTo(root, "8")                  // hidden "docs DIR" and "man DIR" commands
//	err := clidoc.Generate(root, "docs/cli") // what docs runs
//	err := clidoc.Check(root, "docs/cli")    // in a test: nil when up to date
//	err := clidoc.GenerateMan(root, "1", "bin/man") // what man runs: bin/man/man1/*.1
package clidoc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/fourover6/fourover6/cmd/internal/version"
)

// HostnamePlaceholder replaces the host name in flag defaults.
const HostnamePlaceholder = "HOSTNAME"

// Generate writes one Markdown page per available command of root's tree
// into dir (created if needed), named like root_sub_subsub.md, and removes
// pages of root's tree that no longer correspond to a command. Other files
// in dir are left alone, so several binaries can share one directory.
func Generate(root *cobra.Command, dir string) error {
	pages, err := Render(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, err := existing(root, dir)
	if err != nil {
		return err
	}
	for name, body := range pages {
		p := filepath.Join(dir, name)
		if cur, err := os.ReadFile(p); err == nil && bytes.Equal(cur, body) {
			continue
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			return err
		}
	}
	for _, name := range old {
		if _, ok := pages[name]; !ok {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Check compares dir with what Generate would write and returns an error
// naming every page that is missing, different or stale, with the fix.
func Check(root *cobra.Command, dir string) error {
	pages, err := Render(root)
	if err != nil {
		return err
	}
	old, err := existing(root, dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var problems []string
	for _, name := range sortedKeys(pages) {
		cur, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			problems = append(problems, name+": missing")
		case err != nil:
			return err
		case !bytes.Equal(cur, pages[name]):
			problems = append(problems, name+": out of date")
		}
	}
	for _, name := range old {
		if _, ok := pages[name]; !ok {
			problems = append(problems, name+": no such command any more")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("the CLI reference in %s does not match %s (regenerate it: make docs):\n  %s",
			dir, root.Name(), strings.Join(problems, "\n  "))
	}
	return nil
}

// Render returns the pages Generate writes, by file name.
func Render(root *cobra.Command) (map[string][]byte, error) {
	restore := prepare(root)
	defer restore()
	pages := map[string][]byte{}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.IsAdditionalHelpTopicCommand() {
				continue
			}
			if err := walk(sub); err != nil {
				return err
			}
		}
		var buf bytes.Buffer
		if err := doc.GenMarkdown(c, &buf); err != nil {
			return fmt.Errorf("%s: %w", c.CommandPath(), err)
		}
		pages[pageName(c)] = buf.Bytes()
		return nil
	}
	if err := walk(root); err != nil {
		return nil, err
	}
	return pages, nil
}

// pageName is cobra/doc's file name for c (GenMarkdownTree's).
func pageName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "_") + ".md"
}

// prepare makes the output reproducible and returns what undoes it. It
// first completes the tree as Execute would (help command, completion
// command, --help and --version flags), so pages rendered in a test match
// pages rendered by the running binary.
func prepare(root *cobra.Command) func() {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var initFlags func(c *cobra.Command)
	initFlags = func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		c.InitDefaultVersionFlag()
		for _, sub := range c.Commands() {
			initFlags(sub)
		}
	}
	initFlags(root)

	var undo []func()
	host, _ := os.Hostname()
	var visit func(c *cobra.Command)
	visit = func(c *cobra.Command) {
		if !c.DisableAutoGenTag {
			c.DisableAutoGenTag = true
			undo = append(undo, func() { c.DisableAutoGenTag = false })
		}
		fix := func(f *pflag.Flag) {
			if host != "" && f.DefValue == host {
				old := f.DefValue
				f.DefValue = HostnamePlaceholder
				undo = append(undo, func() { f.DefValue = old })
			}
		}
		c.LocalFlags().VisitAll(fix)
		c.PersistentFlags().VisitAll(fix)
		for _, sub := range c.Commands() {
			visit(sub)
		}
	}
	visit(root)
	return func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

// existing lists the pages of root's tree in dir.
func existing(root *cobra.Command, dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(n, ".md") {
			continue
		}
		if n == root.Name()+".md" || strings.HasPrefix(n, root.Name()+"_") {
			out = append(out, n)
		}
	}
	return out, nil
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Command returns a hidden "docs DIR" command that runs Generate on root.
func Command(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "docs DIR",
		Short:  "Write the Markdown reference of every command to DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := Generate(root, args[0]); err != nil {
				return fmt.Errorf("docs: %w", err)
			}
			fmt.Fprintf(outOf(cmd), "wrote the command reference of %s to %s\n", root.Name(), args[0])
			return nil
		},
	}
}

// AddTo adds Command(root) and ManCommand(root, section) to root. A root
// without other subcommands (a daemon) would show cobra's default
// "completion" command with them; for such roots it is hidden, so that it
// stays there for packaging (the build writes shell completions with it)
// without appearing in --help or in the reference.
func AddTo(root *cobra.Command, section string) {
	if !root.HasSubCommands() {
		root.CompletionOptions.HiddenDefaultCmd = true
	}
	root.AddCommand(Command(root), ManCommand(root, section))
}

// GenerateMan writes a man page for root and for each available command of
// its tree (cobra/doc: root-sub-subsub.SECTION) into dir/manSECTION,
// created if needed.
func GenerateMan(root *cobra.Command, section, dir string) error {
	if section == "" || strings.ContainsAny(section, "/ ") {
		return fmt.Errorf("man section %q: want e.g. 1 or 8", section)
	}
	restore := prepare(root)
	defer restore()
	out := filepath.Join(dir, "man"+section)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	header := &doc.GenManHeader{
		Title:   strings.ToUpper(root.Name()),
		Section: section,
		Source:  "fourover6 " + version.String(),
		Manual:  "fourover6 manual",
	}
	return doc.GenManTree(root, header, out)
}

// ManCommand returns a hidden "man DIR" command that runs GenerateMan on
// root with the given section.
func ManCommand(root *cobra.Command, section string) *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write the man pages of every command to DIR/man" + section,
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := GenerateMan(root, section, args[0]); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			fmt.Fprintf(outOf(cmd), "wrote the man pages of %s to %s\n", root.Name(), filepath.Join(args[0], "man"+section))
			return nil
		},
	}
}

func outOf(cmd *cobra.Command) io.Writer { return cmd.OutOrStdout() }
