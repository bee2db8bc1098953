// Package nice sets how every thread of the process is scheduled: its
// nice value and, where allowed, a real-time policy. A tunnel end is its
// clients' network path, and on a host whose CPUs are busy (with the very
// applications whose traffic it carries) a packet waits mostly for the
// tunnel's threads to be scheduled, not in any queue. A negative nice
// value, and more so the real-time policy, lets those wake-ups come first,
// as the kernel's own network processing does.
package nice

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Default is the nice value the daemons take unless told otherwise.
const Default = -10

// Min and Max bound a nice value.
const (
	Min = -20
	Max = 19
)

// Validate says what is wrong with n as a nice value, naming flag.
func Validate(flag string, n int) error {
	if n < Min || n > Max {
		return fmt.Errorf("%s %d: want %d..%d (0 keeps the priority the process was started with)", flag, n, Min, Max)
	}
	return nil
}

// Set gives every thread of the process nice value n; 0 leaves them as
// they are. Linux keeps the value per thread, and a new thread takes its
// creator's: called early in main, before the Go runtime has made more
// than a few, it holds for the threads made later as well. Threads made
// while it runs are caught by a second pass. The error says what to do
// when the value was refused (raising a priority needs CAP_SYS_NICE).
func Set(n int) error {
	if n == 0 {
		return nil
	}
	err := eachThread(func(tid int) error {
		err := unix.Setpriority(unix.PRIO_PROCESS, tid, n)
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return fmt.Errorf("a priority above the inherited one needs root or CAP_SYS_NICE; --nice 0 keeps it: %w", err)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("nice %d: %w", n, err)
	}
	return nil
}

// eachThread calls set once for every thread of the process, twice over
// the thread list so that threads made while it runs are caught too. A
// thread that ended meanwhile is skipped.
func eachThread(set func(tid int) error) error {
	done := map[int]bool{}
	for pass := 0; pass < 2; pass++ {
		tids, err := threads()
		if err != nil {
			return err
		}
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			if err := set(tid); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue // the thread ended meanwhile
				}
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			done[tid] = true
		}
	}
	return nil
}

func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// Apply is Set and SetRealtime with their outcome logged: a refusal is a
// warning, never a failure, since the tunnel works at any priority. The
// nice value is set first so that it holds should the real-time policy be
// refused (and for the time-shared threads should it ever be dropped).
func Apply(log *slog.Logger, n, realtime int) {
	if n != 0 {
		if err := Set(n); err != nil {
			log.Warn("keeping the inherited nice value: packets wait longer for this process on a busy host", "err", err)
		} else {
			log.Info("scheduling priority set", "nice", n)
		}
	}
	if realtime != 0 {
		if err := SetRealtime(realtime); err != nil {
			log.Warn("keeping the time-sharing scheduler: packets wait longer for this process on a busy host", "err", err)
			return
		}
		log.Info("real-time scheduling set", "policy", "SCHED_RR", "rt_priority", realtime)
		if !throttled(rtRuntimeFile) {
			log.Warn("real-time throttling is off (kernel.sched_rt_runtime_us = -1): should a thread of this process ever spin, nothing keeps a share of its CPU for the rest of the host; --rt-priority 0 avoids that")
		}
	}
}
