package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/cmd/internal/sdnotify"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/api"
	"github.com/fourover6/fourover6/dataplane/handoff"
	"github.com/fourover6/fourover6/dataplane/tun"
)

// The hand-off as the daemon sees it: what goes to the successor besides
// the sessions, and the two sides of the conversation (package handoff).

// hello is the successor's first message.
type hello struct {
	PID     int
	Version string
}

// inheritedFiles describes KindFiles' descriptors: the client listener,
// the API listener, the TUN, then the metrics listener when Metrics.
type inheritedFiles struct {
	TUNName    string
	TUNBackend string
	Metrics    bool
	Pool       string // for the successor's log
}

// bgpHandoff is the BGP speaker's (package dataplane/bgp) part in a
// hand-off. commit runs once the commit is sent, when the successor owns
// the sessions: it calls Speaker.Handoff (sessions closed without
// NOTIFICATION and without withdrawing, so the routers keep the routes,
// stale, for the restart time, until the successor's speaker, started with
// bgp.Config.Restarting and every taken-over client announced, sends them
// again). Nothing touches the speaker before that point, so a hand-off
// abandoned earlier leaves it serving as it was: rollback only says so.
// Both nil: no speaker.
type bgpHandoff struct {
	commit   func() error
	rollback func()
}

// upgradeResult is what a hand-off did, for the log and the API.
type upgradeResult = api.UpgradeResult

// upgrader runs one hand-off at a time, on SIGUSR2 or an API request.
type upgrader struct {
	d    *daemon
	sig  chan os.Signal
	mu   sync.Mutex // one hand-off at a time
	done chan struct{}
	once sync.Once
}

// newUpgrader catches SIGUSR2 at once, before anything is opened: its
// default action would kill the process (a signal sent as soon as the
// pid file names a new process, say), and one that comes early waits for
// watch.
func newUpgrader(d *daemon) *upgrader {
	u := &upgrader{d: d, sig: make(chan os.Signal, 1), done: make(chan struct{})}
	signal.Notify(u.sig, syscall.SIGUSR2)
	return u
}

// HandedOver is closed once a successor took over: the daemon exits.
func (u *upgrader) HandedOver() <-chan struct{} { return u.done }

// watch hands over on every SIGUSR2 until ctx ends.
func (u *upgrader) watch(ctx context.Context) {
	defer signal.Stop(u.sig)
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.sig:
		}
		u.d.log.Info("SIGUSR2: handing over to a new process")
		u.Upgrade(ctx)
	}
}

// Upgrade hands the data plane over to a new process; on failure this one
// serves on and the error says why.
func (u *upgrader) Upgrade(ctx context.Context) (upgradeResult, error) {
	if !u.mu.TryLock() {
		return upgradeResult{}, errors.New("a hand-off is already under way")
	}
	defer u.mu.Unlock()
	select {
	case <-u.done:
		return upgradeResult{}, errors.New("this process has handed over already")
	default:
	}
	d := u.d
	r, err := d.handOff(ctx)
	if err != nil {
		d.dp.HandoffFailed()
		d.log.Error("hand-off failed: this process serves on", "err", err, "pid", os.Getpid())
		return r, err
	}
	d.log.Info("hand-off done: the new process serves; this one exits",
		"old_pid", r.OldPID, "new_pid", r.NewPID, "sessions", r.Sessions,
		"took", r.Took.Round(time.Millisecond), "paused", r.Paused.Round(time.Microsecond))
	u.once.Do(func() { close(u.done) })
	return r, nil
}

// handOff is the predecessor's side of the conversation.
func (d *daemon) handOff(ctx context.Context) (upgradeResult, error) {
	r := upgradeResult{OldPID: os.Getpid(), OldVersion: version.String()}
	start := time.Now()
	path, err := os.Executable()
	if err != nil {
		return r, fmt.Errorf("cannot find this binary's path: %w", err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, d.o.handoffTimeout,
		fmt.Errorf("the new process was not ready within --handoff-timeout %s", d.o.handoffTimeout))
	defer cancel()
	child, err := handoff.Start(path, append([]string{os.Args[0]}, d.o.args...), sdnotify.ChildEnv(os.Environ()))
	if err != nil {
		return r, err
	}
	r.NewPID = child.PID()
	d.log.Info("hand-off: new process started", "pid", r.NewPID, "binary", path)
	committed := false
	var frozen *dataplane.Frozen
	defer func() {
		if committed {
			child.Close()
			return
		}
		if frozen != nil {
			frozen.Thaw(true)
		}
		child.Kill()
	}()
	fail := func(stage string, err error) error {
		// A process that went away: say how it ended (it has, or is about to).
		select {
		case <-child.Exited():
		case <-time.After(200 * time.Millisecond):
		}
		select {
		case <-child.Exited():
			return fmt.Errorf("%s: %w (the new process exited: %s)", stage, err, child.ExitStatus())
		default:
		}
		child.Fail(err)
		return fmt.Errorf("%s: %w", stage, err)
	}
	var h hello
	if _, err := child.Recv(ctx, handoff.KindHello, &h); err != nil {
		return r, fail("waiting for the new process", err)
	}
	d.log.Info("hand-off: new process is up", "pid", h.PID, "version", h.Version)
	files, meta, err := d.handOffFiles()
	if err != nil {
		return r, fail("listeners and TUN", err)
	}
	err = child.Send(handoff.KindFiles, meta, files)
	for _, f := range files[:len(files)-1] { // the TUN's (last) is the device's own
		f.Close()
	}
	if err != nil {
		return r, fail("passing listeners and TUN", err)
	}
	if _, err := child.Recv(ctx, handoff.KindPrepared, nil); err != nil {
		return r, fail("new process preparing", err)
	}
	pause := time.Now()
	frozen, err = d.dp.Freeze(ctx)
	if err != nil {
		return r, fail("freezing the sessions", err)
	}
	r.Sessions = len(frozen.State.Sessions)
	if err := child.SendEach(handoff.KindState, frozen.State, len(frozen.State.Sessions), frozen.File); err != nil {
		return r, fail("passing the sessions", err)
	}
	if _, err := child.Recv(ctx, handoff.KindReady, nil); err != nil {
		return r, fail("new process taking the sessions", err)
	}
	bh := d.bgpHandoff
	if bh.rollback != nil {
		defer func() {
			if !committed {
				bh.rollback()
			}
		}()
	}
	if err := child.Send(handoff.KindCommit, struct{}{}, nil); err != nil {
		return r, fail("commit", err)
	}
	committed = true
	frozen.Thaw(false)
	r.Paused = time.Since(pause)
	d.handedOver.Store(true)
	// The service manager follows the new process from now on; this one
	// tells it nothing more (no STOPPING=1, no watchdog pings).
	d.notify.HandedOver(r.NewPID)
	if bh.commit != nil {
		// The successor serves the clients now; it announces them itself.
		if err := bh.commit(); err != nil {
			d.log.Error("BGP: handing the sessions over failed; the new process announces the clients again", "err", err)
		}
	}
	r.Took = time.Since(start)
	return r, nil
}

// handOffFiles returns the descriptors of KindFiles, the TUN's last.
func (d *daemon) handOffFiles() ([]*os.File, inheritedFiles, error) {
	meta := inheritedFiles{TUNName: d.dev.Name(), TUNBackend: d.tunBackend, Pool: d.dp.Assignment().Pool.String()}
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	lns := []net.Listener{d.ln, d.apiLn}
	if d.ms != nil {
		lns = append(lns, d.ms.Listener())
		meta.Metrics = true
	}
	for _, ln := range lns {
		fl, ok := ln.(interface{ File() (*os.File, error) })
		if !ok {
			closeAll()
			return nil, meta, fmt.Errorf("listener %s (%T) cannot be handed over", ln.Addr(), ln)
		}
		f, err := fl.File()
		if err != nil {
			closeAll()
			return nil, meta, fmt.Errorf("listener %s: %w", ln.Addr(), err)
		}
		files = append(files, f)
	}
	tf, ok := d.dev.(tun.Filer)
	if !ok || tf.File() == nil {
		closeAll()
		return nil, meta, fmt.Errorf("the TUN (%T) cannot be handed over", d.dev)
	}
	files = append(files, tf.File())
	return files, meta, nil
}

// takeOver is the successor's side of the conversation up to the commit:
// it opens what open opens, from its predecessor's descriptors, and builds
// the data plane from its sessions. It returns once this process owns
// everything (the predecessor committed); then run serves.
func (d *daemon) takeOver(c *handoff.Conn) (err error) {
	o := d.o
	defer func() {
		if err != nil {
			c.Fail(err)
		}
		c.Close()
	}()
	// Every step's deadline: the predecessor gives up on its own
	// --handoff-timeout; a successor that outlives it must not serve.
	step := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), o.handoffTimeout)
	}
	if err := d.dial(); err != nil {
		return err
	}
	if err := c.Send(handoff.KindHello, hello{PID: os.Getpid(), Version: version.String()}, nil); err != nil {
		return err
	}
	ctx, cancel := step()
	var meta inheritedFiles
	files, err := c.Recv(ctx, handoff.KindFiles, &meta)
	cancel()
	if err != nil {
		return err
	}
	want := 3
	if meta.Metrics {
		want++
	}
	if len(files) != want {
		for _, f := range files {
			f.Close()
		}
		return fmt.Errorf("hand-off: %d descriptors for the listeners and TUN, want %d", len(files), want)
	}
	take := func(f *os.File, what string) (net.Listener, error) {
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("hand-off: %s: %w", what, err)
		}
		return ln, nil
	}
	if d.ln, err = take(files[0], "--listen"); err != nil {
		return err
	}
	d.onClose(func() { d.ln.Close() })
	if d.apiLn, err = take(files[1], "--api"); err != nil {
		return err
	}
	d.apiEP, _ = parseAPI(o.api)
	committed := false
	d.onClose(func() {
		d.apiLn.Close()
		// Before the commit the socket is the predecessor's, which serves
		// on when this process gives up.
		if committed && d.apiEP.Network == "unix" && !d.handedOver.Load() {
			os.Remove(d.apiEP.Address)
		}
	})
	if d.dev, err = tun.FromFile(files[2], meta.TUNName, tun.Backend(meta.TUNBackend), o.mtu); err != nil {
		return err
	}
	d.tunBackend = meta.TUNBackend
	d.onClose(func() { d.dev.Close() })
	if meta.Metrics {
		if d.metricsLn, err = take(files[3], "--metrics"); err != nil {
			return err
		}
	}
	if meta.TUNName != o.tunName || (meta.TUNBackend != o.tunBackend && o.tunBackend != string(tun.BackendAuto)) {
		d.log.Warn("hand-off: the TUN goes on as the predecessor opened it; --tun and --tun-backend take effect on a restart",
			"tun", meta.TUNName, "tun_backend", meta.TUNBackend)
	}
	if err := d.newPolicy(); err != nil {
		return err
	}
	// Not started before the commit: until then the predecessor's speaker
	// holds the sessions to the routers.
	if err := d.newSpeaker(true); err != nil {
		return err
	}
	if err := c.Send(handoff.KindPrepared, struct{}{}, nil); err != nil {
		return err
	}
	ctx, cancel = step()
	var st dataplane.HandoffState
	var conns []net.Conn
	err = c.RecvEach(ctx, handoff.KindState, &st, func(f *os.File) error {
		// Each file becomes a connection at once (and is closed): ten
		// thousand of them must not hold twice the descriptors.
		defer f.Close()
		cn, err := net.FileConn(f)
		if err != nil {
			return fmt.Errorf("hand-off: connection %d: %w", len(conns), err)
		}
		conns = append(conns, cn)
		return nil
	})
	cancel()
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return err
	}
	if d.dp, err = dataplane.Restore(d.config(d.ln), &st, conns); err != nil {
		return err
	}
	if err := d.buildAPI(); err != nil {
		return err
	}
	if err := c.Send(handoff.KindReady, struct{}{}, nil); err != nil {
		return err
	}
	ctx, cancel = step()
	_, err = c.Recv(ctx, handoff.KindCommit, nil)
	cancel()
	if err != nil {
		return fmt.Errorf("the predecessor did not commit; not serving: %w", err)
	}
	committed = true
	d.tookOver = true
	d.log.Info("hand-off: took over from the predecessor", "predecessor_version", st.Version,
		"sessions", len(st.Sessions), "pool", meta.Pool, "handoffs", st.Handoffs)
	return d.openMetrics()
}

// notifyReady tells a service manager (systemd, Type=notify) this process
// serves, and writes --pid-file.
func (d *daemon) notifyReady() {
	if d.o.pidFile != "" {
		if err := writePIDFile(d.o.pidFile); err != nil {
			d.log.Error("--pid-file", "err", err)
		}
	}
	if d.tookOver {
		d.notify.ReadyAfterHandoff(d.statusLine())
		return
	}
	d.notify.Ready(d.statusLine())
}

// writePIDFile writes the pid atomically (a rename), so a reader never
// sees half a number.
func writePIDFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
