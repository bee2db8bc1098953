package nice

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// backToTimeSharing undoes SetRealtime for the rest of the test binary.
func backToTimeSharing(t *testing.T) {
	t.Cleanup(func() {
		tids, _ := threads()
		for _, tid := range tids {
			unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0)
		}
	})
}

// TestRealtimeEveryThread: every thread is SCHED_RR at the priority
// afterwards, threads the runtime makes later too.
func TestRealtimeEveryThread(t *testing.T) {
	requireRoot(t)
	backToTimeSharing(t)
	if err := SetRealtime(3); err != nil {
		t.Fatal(err)
	}
	tids := newThreads(t, 4)
	for _, tid := range tids {
		policy, prio, err := policyOf(tid)
		if err != nil {
			t.Fatal(err)
		}
		if policy != unix.SCHED_RR || prio != 3 {
			t.Errorf("thread %d: policy %d priority %d, want SCHED_RR (%d) at 3", tid, policy, prio, unix.SCHED_RR)
		}
	}
}

// TestRealtimeRefusedSaysWhy: without CAP_SYS_NICE (and with no
// RLIMIT_RTPRIO) the kernel refuses, and the error names what would allow
// it and the flag that turns it off; nothing changes.
func TestRealtimeRefusedSaysWhy(t *testing.T) {
	requireRoot(t)
	backToTimeSharing(t)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_RTPRIO, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != 0 {
		saved := lim
		if err := unix.Setrlimit(unix.RLIMIT_RTPRIO, &unix.Rlimit{Cur: 0, Max: lim.Max}); err != nil {
			t.Fatal(err)
		}
		defer unix.Setrlimit(unix.RLIMIT_RTPRIO, &saved)
	}
	// Capabilities are per thread: drop CAP_SYS_NICE from this one's
	// effective set only, and take it back after (it stays permitted).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		t.Fatal(err)
	}
	saved := caps
	caps[0].Effective &^= 1 << unix.CAP_SYS_NICE
	if err := unix.Capset(&hdr, &caps[0]); err != nil {
		t.Fatal(err)
	}
	err := SetRealtime(1)
	if err := unix.Capset(&hdr, &saved[0]); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("SetRealtime without CAP_SYS_NICE: %v, want EPERM", err)
	}
	for _, want := range []string{"CAP_SYS_NICE", "RLIMIT_RTPRIO", "--rt-priority 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if policy, _, _ := policyOf(unix.Gettid()); policy != unix.SCHED_NORMAL {
		t.Errorf("policy %d after a refusal, want SCHED_NORMAL", policy)
	}
}

// policyOf is a thread's scheduling policy and real-time priority.
func policyOf(tid int) (policy, prio uint32, err error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, 0, err
	}
	return a.Policy, a.Priority, nil
}

func TestRealtimeZeroLeavesAlone(t *testing.T) {
	if err := SetRealtime(0); err != nil {
		t.Fatal(err)
	}
	if policy, _, _ := policyOf(unix.Gettid()); policy != unix.SCHED_NORMAL {
		t.Errorf("policy %d after SetRealtime(0), want SCHED_NORMAL", policy)
	}
}

func TestValidateRealtime(t *testing.T) {
	for _, p := range []int{0, 1, 50, 99} {
		if err := ValidateRealtime("--rt-priority", p); err != nil {
			t.Errorf("%d: %v", p, err)
		}
	}
	for _, p := range []int{-1, 100} {
		if err := ValidateRealtime("--rt-priority", p); err == nil || !strings.Contains(err.Error(), "--rt-priority") {
			t.Errorf("%d: %v", p, err)
		}
	}
}

func TestThrottled(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		content string
		want    bool
	}{{"950000\n", true}, {"-1\n", false}, {"0\n", true}} {
		p := dir + "/rt"
		if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := throttled(p); got != c.want {
			t.Errorf("%q: throttled %v, want %v", c.content, got, c.want)
		}
	}
	if !throttled(dir + "/missing") {
		t.Error("a missing file counts as throttled")
	}
}
