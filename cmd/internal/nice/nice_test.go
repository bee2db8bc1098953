package nice

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("FOUROVER6_REQUIRE_ROOT") != "" {
			t.Fatal("needs root (FOUROVER6_REQUIRE_ROOT is set)")
		}
		t.Skip("needs root")
	}
}

// TestSetEveryThread: every thread has the value afterwards, threads the
// runtime makes later too (they take their creator's).
func TestSetEveryThread(t *testing.T) {
	requireRoot(t)
	t.Cleanup(func() {
		tids, _ := threads()
		for _, tid := range tids {
			unix.Setpriority(unix.PRIO_PROCESS, tid, 0)
		}
	})
	if err := Set(-3); err != nil {
		t.Fatal(err)
	}
	tids := newThreads(t, 4)
	for _, tid := range tids {
		n, err := niceOf(tid)
		if err != nil {
			t.Fatal(err)
		}
		if n != -3 {
			t.Errorf("thread %d: nice %d, want -3", tid, n)
		}
	}
}

// TestZeroLeavesAlone: 0 changes nothing.
func TestZeroLeavesAlone(t *testing.T) {
	before, err := niceOf(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	if err := Set(0); err != nil {
		t.Fatal(err)
	}
	if after, _ := niceOf(unix.Gettid()); after != before {
		t.Errorf("nice %d after Set(0), was %d", after, before)
	}
}

func TestValidate(t *testing.T) {
	for _, n := range []int{-20, -10, 0, 19} {
		if err := Validate("--nice", n); err != nil {
			t.Errorf("%d: %v", n, err)
		}
	}
	for _, n := range []int{-21, 20, 100} {
		if err := Validate("--nice", n); err == nil || !strings.Contains(err.Error(), "--nice") {
			t.Errorf("%d: %v", n, err)
		}
	}
}

// newThreads makes the runtime start n more threads (goroutines that hold
// theirs until the test ends) and returns every thread of the process.
func newThreads(t *testing.T, n int) []int {
	t.Helper()
	var started, release sync.WaitGroup
	release.Add(1)
	t.Cleanup(release.Done)
	for range n {
		started.Add(1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			started.Done()
			release.Wait()
		}()
	}
	started.Wait()
	tids, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	if len(tids) <= n {
		t.Fatalf("%d threads, want more than the %d held", len(tids), n)
	}
	return tids
}

// niceOf is the nice value of thread tid.
func niceOf(tid int) (int, error) {
	// getpriority(2)'s raw system call returns 20-nice; x/sys/unix hands
	// that on as it is.
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, err
	}
	return 20 - p, nil
}
