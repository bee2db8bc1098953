package version

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestString(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = "v1.2.3"
	if String() != "v1.2.3" {
		t.Fatalf("String() = %q, want the -ldflags value", String())
	}
	Version = "dev"
	if String() == "" {
		t.Fatal("String() is empty without -ldflags")
	}
}

func TestInfo(t *testing.T) {
	oldV, oldC, oldD := Version, Commit, Date
	defer func() { Version, Commit, Date = oldV, oldC, oldD }()
	Version, Commit, Date = "v1.2.3", "0123456789abcdef", "2026-01-02T03:04:05Z"
	in := Get()
	if in.Version != "v1.2.3" || in.Commit != "0123456789abcdef" || in.BuildDate != "2026-01-02T03:04:05Z" || in.GoVersion == "" || in.Platform == "" {
		t.Fatalf("Get() = %+v", in)
	}
	text := in.Text("prog")
	for _, want := range []string{"prog v1.2.3\n", "commit:     0123456789abcdef", "built:      2026-01-02T03:04:05Z", "go version: go"} {
		if !strings.Contains(text, want) {
			t.Errorf("Text() lacks %q:\n%s", want, text)
		}
	}
	Commit, Date = "", ""
	if text := Get().Text("prog"); !strings.Contains(text, "commit:") {
		t.Errorf("Text() without a commit: %s", text)
	}
}

func TestSetCommand(t *testing.T) {
	oldV := Version
	defer func() { Version = oldV }()
	Version = "v9{{.Bad}}"
	cmd := &cobra.Command{Use: "prog", Run: func(*cobra.Command, []string) {}}
	SetCommand(cmd)
	var out strings.Builder
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--version"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "prog v9{{.Bad}}\n") || !strings.Contains(out.String(), "go version:") {
		t.Fatalf("--version printed %q", out.String())
	}
}
