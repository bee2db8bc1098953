package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNiceDefault: on default flags the data plane and the client run every
// thread at nice -10 (threads made after the start take it from their
// creators), and say so; the controller keeps the priority it was given.
func TestNiceDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	client := e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	e.waitFor("client lease", func() bool { return len(e.clients()) == 1 })
	// Traffic through both: the runtimes make the threads they need.
	if out, err := e.cli.Output("ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", internetV4); err != nil {
		t.Fatalf("ping through the tunnel: %v\n%s", err, out)
	}
	for _, p := range e.procs {
		want := -10
		if p.name == "4over6-controller" {
			want = 0
		}
		nices := threadNices(t, p.cmd.Process.Pid)
		if len(nices) == 0 {
			t.Fatalf("%s: no threads read", p.name)
		}
		for tid, n := range nices {
			if n != want {
				t.Errorf("%s thread %d: nice %d, want %d", p.name, tid, n, want)
			}
		}
	}
	if !strings.Contains(e.logOf(client), `msg="scheduling priority set" nice=-10`) {
		t.Errorf("the client does not log its priority:\n%s", e.logOf(client))
	}
}

// threadNices reads each thread's nice value (field 19 of its stat).
func threadNices(t *testing.T, pid int) map[int]int {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		// The command name (field 2) is in parentheses and may hold
		// spaces: count from after its closing one.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		n, err := strconv.Atoi(fields[16]) // field 19 overall
		if err != nil {
			t.Fatalf("%s: %v", ent.Name(), err)
		}
		tid, _ := strconv.Atoi(ent.Name())
		out[tid] = n
	}
	return out
}
