package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestCLIReferenceUpToDate: docs/cli is what the binaries generate, so the
// reference never drifts from the code (fix: make docs).
func TestCLIReferenceUpToDate(t *testing.T) {
	if binDir == "" {
		t.Skip("binaries not built (not root)")
	}
	_, self, _, _ := runtime.Caller(0)
	checkedIn := filepath.Join(filepath.Dir(self), "..", "..", "docs", "cli")
	gen := t.TempDir()
	for _, bin := range []string{"4over6ctl", "4over6-controller", "4over6-dataplane", "4over6-client"} {
		if out, err := exec.Command(filepath.Join(binDir, bin), "docs", gen).CombinedOutput(); err != nil {
			t.Fatalf("%s docs: %v: %s", bin, err, out)
		}
	}

	want, _ := os.ReadDir(gen)
	have, err := os.ReadDir(checkedIn)
	if err != nil {
		t.Fatalf("docs/cli: %v (run make docs)", err)
	}
	var problems []string
	names := map[string]bool{}
	for _, f := range want {
		names[f.Name()] = true
		a, _ := os.ReadFile(filepath.Join(gen, f.Name()))
		b, err := os.ReadFile(filepath.Join(checkedIn, f.Name()))
		if err != nil {
			problems = append(problems, f.Name()+": missing")
		} else if !bytes.Equal(a, b) {
			problems = append(problems, f.Name()+": out of date")
		}
	}
	for _, f := range have {
		if !names[f.Name()] {
			problems = append(problems, f.Name()+": no such command any more")
		}
	}
	if len(problems) > 0 {
		t.Fatalf("docs/cli does not match the binaries (run make docs):\n  %s", strings.Join(problems, "\n  "))
	}
}
