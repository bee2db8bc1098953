// Package sdnotify speaks systemd's notification protocol for the daemons
// (units with Type=notify): READY=1 once the listeners are open, STATUS=
// lines an operator sees in `systemctl status`, STOPPING=1 when shutting
// down, and WATCHDOG=1 pings at half of WATCHDOG_USEC, sent only while
// the daemon's health check passes, so that systemd restarts a daemon
// whose main loops are stuck (WatchdogSec=). Outside systemd (no
// NOTIFY_SOCKET) every call does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends the notifications of one daemon. Its methods may be
// called from any goroutine.
type Notifier struct {
	log      *slog.Logger
	enabled  bool          // NOTIFY_SOCKET is set
	watchdog time.Duration // WATCHDOG_USEC; 0: no watchdog

	mu      sync.Mutex
	status  string
	warned  bool // a failed send was logged
	stopped bool // STOPPING=1 sent: no more pings
	gone    bool // MainPID named a successor: this process says nothing more
}

// New reads the environment systemd gives the service. A malformed
// WATCHDOG_USEC is logged and the watchdog left off.
func New(log *slog.Logger) *Notifier {
	n := &Notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("ignoring the systemd watchdog setting", "error", err)
	}
	n.watchdog = wd
	return n
}

// Enabled reports whether systemd listens (NOTIFY_SOCKET is set).
func (n *Notifier) Enabled() bool { return n.enabled }

// WatchdogInterval is the watchdog timeout systemd set (WatchdogSec=), 0
// when there is none.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog }

// Ready says the daemon is up: its listeners are open.
func (n *Notifier) Ready(status string) {
	n.mu.Lock()
	n.status = status
	n.mu.Unlock()
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// ReadyAfterHandoff is Ready from a process that took over from another
// (a live hand-off): it names itself the service's main process too.
func (n *Notifier) ReadyAfterHandoff(status string) {
	n.mu.Lock()
	n.status = status
	n.mu.Unlock()
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status + "\nMAINPID=" + strconv.Itoa(os.Getpid()))
}

// HandedOver names pid, a successor that took over this daemon's work,
// the service's main process. From then on this process sends nothing:
// no watchdog pings and no STOPPING=1 (systemd would take it for the
// service's), so its exit goes unnoticed.
func (n *Notifier) HandedOver(pid int) {
	n.send("MAINPID=" + strconv.Itoa(pid))
	n.mu.Lock()
	n.gone = true
	n.stopped = true
	n.mu.Unlock()
}

// ChildEnv is env (a copy of this process's environment) for a successor
// this process starts: without WATCHDOG_PID, which names this process and
// would keep the successor from pinging the watchdog once it is the
// service's main process.
func ChildEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "WATCHDOG_PID=") {
			out = append(out, kv)
		}
	}
	return out
}

// Status sets the one-line status `systemctl status` shows; an unchanged
// status is not sent again.
func (n *Notifier) Status(status string) {
	n.mu.Lock()
	same := status == n.status
	n.status = status
	n.mu.Unlock()
	if !same {
		n.send("STATUS=" + status)
	}
}

// Stopping says the daemon is shutting down; the watchdog pings stop.
func (n *Notifier) Stopping(status string) {
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
	n.send(daemon.SdNotifyStopping + "\nSTATUS=" + status)
}

// Watchdog pings the watchdog at half its interval while healthy returns
// nil, until ctx ends or Stopping is called. healthy runs on this
// goroutine: a check that blocks (a main loop's lock held forever) stops
// the pings as surely as one that fails. A change of health is logged
// once, not at every tick. Without a watchdog it returns at once.
func (n *Notifier) Watchdog(ctx context.Context, healthy func() error) {
	if n.watchdog <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog / 2)
	defer t.Stop()
	var failing error
	for {
		n.mu.Lock()
		stopped := n.stopped
		n.mu.Unlock()
		if stopped {
			return
		}
		err := healthy()
		switch {
		case err == nil:
			if failing != nil {
				n.log.Info("healthy again: pinging the systemd watchdog")
			}
			n.send(daemon.SdNotifyWatchdog)
		case failing == nil:
			n.log.Error("unhealthy: not pinging the systemd watchdog; systemd restarts the daemon unless this passes within WatchdogSec",
				"watchdog", n.watchdog, "error", err)
		}
		failing = err
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Notifier) send(state string) {
	n.mu.Lock()
	gone := n.gone
	n.mu.Unlock()
	if !n.enabled || gone {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.mu.Lock()
		warned := n.warned
		n.warned = true
		n.mu.Unlock()
		if !warned {
			n.log.Warn("cannot notify systemd", "socket", os.Getenv("NOTIFY_SOCKET"), "error", err)
		}
	}
}
