package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

// TestConfigFile: a daemon takes its flags from --config FILE, flags on the
// command line win, and an unknown key stops it with a message naming it.
func TestConfigFile(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	ns, err := topo.NewNS(topo.UniqueName("f"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("pool: 10.99.0.0/24\npool_range: 10.99.0.10-10.99.0.20\n"), 0o644)
	out, err := ns.Command(t.Context(), filepath.Join(binDir, "4over6-controller"), "--config", bad,
		"--listen", "unix://"+sock, "--state", filepath.Join(dir, "s.db")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `"pool_range"`) || !strings.Contains(string(out), "pool-range") {
		t.Fatalf("unknown key: %v\n%s", err, out)
	}

	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("pool: 10.99.0.0/24\npool-range: 10.99.0.10-10.99.0.20\ndns: [192.0.2.7, 192.0.2.8, 192.0.2.9]\nlisten: unix:///nonexistent/ignored.sock\n"), 0o644)
	cmd := ns.Command(t.Context(), filepath.Join(binDir, "4over6-controller"), "--config", good,
		"--listen", "unix://"+sock, "--state", filepath.Join(dir, "s.db")) // the flag beats the file's listen
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var pool struct {
		Prefix     string   `json:"prefix"`
		RangeFirst string   `json:"range_first"`
		DNS        []string `json:"dns"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", "unix://"+sock, "pool", "show", "-o", "json").Output()
		if err == nil && json.Unmarshal(b, &pool) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller with --config never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pool.Prefix != "10.99.0.0/24" || pool.RangeFirst != "10.99.0.10" || strings.Join(pool.DNS, ",") != "192.0.2.7,192.0.2.8,192.0.2.9" {
		t.Fatalf("settings from the file not applied: %+v", pool)
	}
}
