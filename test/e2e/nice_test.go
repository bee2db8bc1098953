package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNiceDefault: on default flags the data plane and the client run every
// thread at nice -10 and under SCHED_RR at real-time priority 1 (threads
// made after the start take both from their creators), and say so; the
// controller keeps the scheduling it was given.
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
		wantPolicy, wantRT := schedRR, 1
		if p.name == "4over6-controller" {
			wantPolicy, wantRT = schedOther, 0
		}
		threads := threadScheds(t, p.cmd.Process.Pid)
		if len(threads) == 0 {
			t.Fatalf("%s: no threads read", p.name)
		}
		for tid, s := range threads {
			if s.nice != want {
				t.Errorf("%s thread %d: nice %d, want %d", p.name, tid, s.nice, want)
			}
			if s.policy != wantPolicy || s.rtPriority != wantRT {
				t.Errorf("%s thread %d: policy %d at real-time priority %d, want %d at %d", p.name, tid, s.policy, s.rtPriority, wantPolicy, wantRT)
			}
		}
	}
	for _, want := range []string{`msg="scheduling priority set" nice=-10`, `msg="real-time scheduling set" policy=SCHED_RR rt_priority=1`} {
		if !strings.Contains(e.logOf(client), want) {
			t.Errorf("the client does not log %s:\n%s", want, e.logOf(client))
		}
	}
}

// Scheduling policies as /proc/PID/stat gives them.
const (
	schedOther = 0
	schedRR    = 2
)

// sched is how one thread is scheduled.
type sched struct{ nice, rtPriority, policy int }

// threadScheds reads each thread's nice value, real-time priority and
// policy (fields 19, 40 and 41 of its stat).
func threadScheds(t *testing.T, pid int) map[int]sched {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]sched{}
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		// The command name (field 2) is in parentheses and may hold
		// spaces: count from after its closing one.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		var v [3]int
		for i, f := range []int{19, 40, 41} {
			n, err := strconv.Atoi(fields[f-3]) // fields counts from field 3
			if err != nil {
				t.Fatalf("%s field %d: %v", ent.Name(), f, err)
			}
			v[i] = n
		}
		tid, _ := strconv.Atoi(ent.Name())
		out[tid] = sched{nice: v[0], rtPriority: v[1], policy: v[2]}
	}
	return out
}
