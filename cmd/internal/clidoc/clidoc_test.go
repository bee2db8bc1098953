package clidoc_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/fourover6/fourover6/cmd/internal/clidoc"
	"github.com/fourover6/fourover6/cmd/internal/version"
)

func tree() *cobra.Command {
	host, _ := os.Hostname()
	root := &cobra.Command{Use: "tool", Short: "A tool", Version: "v1"}
	root.PersistentFlags().String("server", "unix:///run/x.sock", "where the server is")
	list := &cobra.Command{Use: "list", Short: "List things", Run: func(*cobra.Command, []string) {}}
	list.Flags().StringP("output", "o", "table", "table, json or yaml")
	things := &cobra.Command{Use: "things", Short: "Things"}
	things.AddCommand(list)
	secret := &cobra.Command{Use: "secret", Hidden: true, Run: func(*cobra.Command, []string) {}}
	get := &cobra.Command{Use: "get NAME", Short: "Get one", Run: func(*cobra.Command, []string) {}}
	get.Flags().String("id", host, "name of this machine")
	root.AddCommand(things, secret, get)
	return root
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

func TestGenerateAndCheck(t *testing.T) {
	dir := t.TempDir()
	other := filepath.Join(dir, "README.md")
	os.WriteFile(other, []byte("not ours\n"), 0o644)
	stale := filepath.Join(dir, "tool_removed.md")
	os.WriteFile(stale, []byte("old\n"), 0o644)

	root := tree()
	if err := clidoc.Check(root, dir); err == nil || !strings.Contains(err.Error(), "tool_removed.md: no such command") || !strings.Contains(err.Error(), "tool.md: missing") {
		t.Fatalf("Check before Generate: %v", err)
	}
	if err := clidoc.Generate(root, dir); err != nil {
		t.Fatal(err)
	}
	want := []string{"README.md", "tool.md", "tool_completion.md", "tool_completion_bash.md", "tool_completion_fish.md",
		"tool_completion_powershell.md", "tool_completion_zsh.md", "tool_get.md", "tool_things.md", "tool_things_list.md"}
	if got := names(t, dir); !slices.Equal(got, want) {
		t.Fatalf("pages = %q\nwant %q", got, want)
	}
	if err := clidoc.Check(tree(), dir); err != nil {
		t.Fatalf("Check right after Generate: %v", err)
	}

	get, _ := os.ReadFile(filepath.Join(dir, "tool_get.md"))
	if !bytes.Contains(get, []byte(`--id string   name of this machine (default "HOSTNAME")`)) {
		t.Errorf("host name not replaced:\n%s", get)
	}
	rootPage, _ := os.ReadFile(filepath.Join(dir, "tool.md"))
	for _, s := range []string{"Auto generated", "secret"} {
		if bytes.Contains(rootPage, []byte(s)) {
			t.Errorf("root page contains %q:\n%s", s, rootPage)
		}
	}
	if !bytes.Contains(rootPage, []byte("[tool things](tool_things.md)")) {
		t.Errorf("root page does not link its subcommands:\n%s", rootPage)
	}
	// The tree itself is as it was (defaults restored).
	get2, _, err := root.Find([]string{"get"})
	if err != nil {
		t.Fatal(err)
	}
	if host, _ := os.Hostname(); get2.Flags().Lookup("id").DefValue != host {
		t.Errorf("--id default left as %q", get2.Flags().Lookup("id").DefValue)
	}

	// A changed command makes Check fail, naming the page.
	changed := tree()
	changed.Commands()[0].Short = "Something else"
	for _, c := range changed.Commands() {
		if c.Name() == "get" {
			c.Short = "Fetch one"
		}
	}
	err = clidoc.Check(changed, dir)
	if err == nil || !strings.Contains(err.Error(), "tool_get.md: out of date") || !strings.Contains(err.Error(), "make docs") {
		t.Errorf("Check after a change: %v", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "not ours\n" {
		t.Error("Generate touched a file that is not a page of the tree")
	}
}

func TestDocsCommandOnADaemon(t *testing.T) {
	// A daemon: one command with flags and no subcommands.
	ran := false
	root := &cobra.Command{Use: "daemon", Short: "A daemon", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { ran = true; return nil }}
	root.Flags().Duration("keepalive-interval", 0, "how often")
	clidoc.AddTo(root, "8")

	dir := t.TempDir()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"docs", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if ran {
		t.Error("docs ran the daemon")
	}
	if got := names(t, dir); !slices.Equal(got, []string{"daemon.md"}) {
		t.Errorf("pages = %q (no docs or completion page for a daemon)", got)
	}
	if err := clidoc.Check(root, dir); err != nil {
		t.Errorf("Check of the daemon's pages: %v", err)
	}
	// The daemon still runs without arguments, and --help lists no commands.
	root.SetArgs(nil)
	if err := root.Execute(); err != nil || !ran {
		t.Errorf("daemon run: %v ran=%v", err, ran)
	}
	out.Reset()
	root.SetArgs([]string{"--help"})
	root.Execute()
	if strings.Contains(out.String(), "Available Commands") || strings.Contains(out.String(), "completion") {
		t.Errorf("daemon help shows commands:\n%s", out.String())
	}
}

func TestGenerateMan(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	root := tree()
	dir := t.TempDir()
	if err := clidoc.GenerateMan(root, "1", dir); err != nil {
		t.Fatal(err)
	}
	got := names(t, filepath.Join(dir, "man1"))
	want := []string{"tool-completion-bash.1", "tool-completion-fish.1", "tool-completion-powershell.1", "tool-completion-zsh.1",
		"tool-completion.1", "tool-get.1", "tool-things-list.1", "tool-things.1", "tool.1"}
	if !slices.Equal(got, want) {
		t.Errorf("man pages = %q, want %q (hidden commands left out)", got, want)
	}
	page, _ := os.ReadFile(filepath.Join(dir, "man1", "tool-get.1"))
	for _, s := range []string{`.TH "TOOL" "1" "Nov 2023" "fourover6 ` + version.String() + `" "fourover6 manual"`, "Get one", "HOSTNAME"} {
		if !strings.Contains(string(page), s) {
			t.Errorf("tool-get.1 lacks %q:\n%s", s, page)
		}
	}
	if host, _ := os.Hostname(); host != "" && strings.Contains(string(page), host) {
		t.Error("the man page shows this machine's host name")
	}
	if err := clidoc.GenerateMan(root, "../1", dir); err == nil {
		t.Error("a section with a slash was accepted")
	}
}

func TestManAndCompletionOnADaemon(t *testing.T) {
	root := &cobra.Command{Use: "daemon", Short: "A daemon", Args: cobra.NoArgs, Version: "v2",
		RunE: func(*cobra.Command, []string) error { return nil }}
	root.Flags().String("tun", "4o6", "the TUN")
	clidoc.AddTo(root, "8")
	dir := t.TempDir()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"man", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got := names(t, filepath.Join(dir, "man8")); !slices.Equal(got, []string{"daemon.8"}) {
		t.Errorf("man pages = %q (one page: docs, man and completion are hidden)", got)
	}
	page, _ := os.ReadFile(filepath.Join(dir, "man8", "daemon.8"))
	if !strings.Contains(string(page), `.TH "DAEMON" "8"`) || !strings.Contains(string(page), "tun") {
		t.Errorf("daemon.8:\n%s", page)
	}
	// The completion command is there for packaging, though hidden.
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out.Reset()
		root.SetArgs([]string{"completion", shell})
		if err := root.Execute(); err != nil || !strings.Contains(out.String(), "daemon") {
			t.Errorf("completion %s: %v\n%.200s", shell, err, out.String())
		}
	}
}
