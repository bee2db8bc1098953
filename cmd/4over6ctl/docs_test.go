package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDocs(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "cli")
	r := ctl(t, nil, "docs", dir).expect(t, 0)
	if !strings.Contains(r.stdout, dir) {
		t.Errorf("docs output %q", r.stdout)
	}
	for _, name := range []string{"4over6ctl.md", "4over6ctl_status.md", "4over6ctl_clients_watch.md", "4over6ctl_clients_kick.md",
		"4over6ctl_apply.md", "4over6ctl_reservations_set.md", "4over6ctl_dns_set.md", "4over6ctl_pool_set-range.md",
		"4over6ctl_dataplane_list.md", "4over6ctl_dataplane_drain.md", "4over6ctl_dataplane_remove.md", "4over6ctl_dataplane_status.md",
		"4over6ctl_log-level.md", "4over6ctl_completion_fish.md", "4over6ctl_version.md"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if bytes.Contains(b, []byte("Auto generated")) {
			t.Errorf("%s has a date tag", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "4over6ctl_docs.md")); err == nil {
		t.Error("the hidden docs command is documented")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "4over6ctl_apply.md"))
	if !strings.Contains(string(b), "prune: true") || !strings.Contains(string(b), "--dry-run") {
		t.Errorf("apply page:\n%s", b)
	}
	// The same tree twice gives the same pages (they are checked in).
	dir2 := filepath.Join(t.TempDir(), "cli")
	ctl(t, nil, "docs", dir2).expect(t, 0)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b1, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b2, _ := os.ReadFile(filepath.Join(dir2, e.Name()))
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s differs between runs", e.Name())
		}
	}
	if r := ctl(t, nil, "--help").expect(t, 0); strings.Contains(r.stdout, "docs") {
		t.Error("docs is listed in --help")
	}
	ctl(t, nil, "docs").expect(t, 2)
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for shell, want := range map[string]string{"bash": "__start_4over6ctl", "zsh": "#compdef 4over6ctl", "fish": "complete -c 4over6ctl"} {
		r := ctl(t, nil, "completion", shell).expect(t, 0)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("%s completion lacks %q", shell, want)
		}
	}
	ctl(t, nil, "completion", "tcsh").expect(t, 2)
	if r := ctl(t, nil, "completion", "bash", "extra").expect(t, 2); !strings.Contains(r.stderr, `"4over6ctl completion bash" takes no arguments`) {
		t.Errorf("completion bash extra: %q", r.stderr)
	}
}
