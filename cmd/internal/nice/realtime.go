package nice

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultRealtime is the real-time priority the daemons take unless told
// otherwise: the lowest there is. It puts the tunnel's wake-ups ahead of
// every time-shared task (the applications whose traffic it carries, and
// their bulk transfers) while every real-time kernel thread, such as the
// threaded interrupt handlers at 50, still comes first.
//
// Why real time and not only a lower nice value: on a host with its CPUs
// busy, a packet crossing the tunnel waits for four wake-ups (reader and
// writer at each end), and the fair scheduler lets a woken thread wait
// for the running task's slice even at nice -10 (measured on 2 cores
// during a 1-stream iperf3: ping p50 1.4 ms, p99 5 ms at nice -10; 0.27 ms
// and 1.1 ms with this policy, at the same throughput). The threads block
// in the kernel whenever there is nothing to forward, so they take the
// CPU only for packets; the kernel's real-time throttling
// (kernel.sched_rt_runtime_us, 95% by default) keeps a share for the rest
// should they ever spin (Apply warns when that throttling is off).
const DefaultRealtime = 1

// MaxRealtime bounds a real-time priority (Linux's SCHED_RR range is 1..99).
const MaxRealtime = 99

// ValidateRealtime says what is wrong with p as a real-time priority,
// naming flag.
func ValidateRealtime(flag string, p int) error {
	if p < 0 || p > MaxRealtime {
		return fmt.Errorf("%s %d: want 1..%d, or 0 for the time-sharing scheduler (then only the nice value counts)", flag, p, MaxRealtime)
	}
	return nil
}

// SetRealtime puts every thread of the process under SCHED_RR at priority
// p; 0 leaves them as they are. Like Set it relies on new threads taking
// their creator's policy, so it must not use SCHED_RESET_ON_FORK (that
// would give the Go runtime's later threads the time-sharing policy back);
// the only child a daemon starts is its successor on a hand-off, which
// wants the same. Round robin rather than FIFO: at equal priority no
// thread of ours can hold a CPU from another for longer than a slice.
func SetRealtime(p int) error {
	if p == 0 {
		return nil
	}
	return eachThread(func(tid int) error {
		attr := unix.SchedAttr{Policy: unix.SCHED_RR, Priority: uint32(p)}
		err := unix.SchedSetAttr(tid, &attr, 0)
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("real-time priority %d: %w (needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least %d, e.g. systemd's CPUSchedulingPolicy=rr or LimitRTPRIO=; under cgroup v1 with real-time group scheduling the cgroup also needs cpu.rt_runtime_us; --rt-priority 0 keeps the time-sharing scheduler)", p, err, p)
		}
		return err
	})
}

// rtRuntimeFile holds the kernel's real-time throttling: the microseconds
// per period real-time tasks may take of a CPU, -1 for all of them.
const rtRuntimeFile = "/proc/sys/kernel/sched_rt_runtime_us"

// throttled says whether the kernel keeps a share of each CPU for
// time-shared tasks whatever real-time ones do. Unknown counts as yes: the
// file is missing only on kernels without real-time group accounting.
func throttled(path string) bool {
	b, err := os.ReadFile(path)
	return err != nil || strings.TrimSpace(string(b)) != "-1"
}
