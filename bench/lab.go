package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// Addresses of the bench topology:
//
//	client ns (IPv6 only)  v6s fd00:46::2 ── veth ── v6c fd00:46::1  server ns
//	4over6-client, TUN 4o6c                          controller, data plane (TUN 4o6, 13.8.0.1)
const (
	serverV6   = "fd00:46::1"
	clientV6   = "fd00:46::2"
	gateway    = "13.8.0.1"
	benchPool  = "13.8.0.0/18" // room for 10,000 scale clients
	clientPort = "5678"
	nsPrefix   = "fo6bench-"
	// controllerStore is how the bench runs the controller: its defaults,
	// with the state file in the run's temporary directory.
	controllerStore = "default (--state in a temporary directory)"
)

// lab is the namespaces and the processes of one run.
type lab struct {
	log      *slog.Logger
	o        *options
	dir      string // sockets, state, logs
	srv, cli *topo.NS
	procs    []*proc
	ctl      *proc
	ctlSock  string
	loadgen  string // path of the 4over6-loadgen binary
}

// newLab creates the two namespaces joined by an IPv6-only veth.
func newLab(log *slog.Logger, o *options) (*lab, error) {
	sweepStale(log)
	dir, err := os.MkdirTemp("", "fo6bench-")
	if err != nil {
		return nil, err
	}
	l := &lab{log: log, o: o, dir: dir, ctlSock: filepath.Join(dir, "controller.sock")}
	pid := os.Getpid()
	if l.srv, err = topo.NewNS(fmt.Sprintf("%ssrv-%d", nsPrefix, pid)); err != nil {
		l.close()
		return nil, err
	}
	if l.cli, err = topo.NewNS(fmt.Sprintf("%scli-%d", nsPrefix, pid)); err != nil {
		l.close()
		return nil, err
	}
	steps := []func() error{
		func() error { return topo.Veth(l.srv, "v6c", l.cli, "v6s") },
		func() error { return l.srv.AddAddr("v6c", serverV6+"/64") },
		func() error { return l.cli.AddAddr("v6s", clientV6+"/64") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			l.close()
			return nil, err
		}
	}
	log.Info("namespaces ready", "server", l.srv.Name, "client", l.cli.Name, "dir", dir)
	return l, nil
}

// close stops every process (newest first) and deletes the namespaces and
// the temporary directory. It runs on every exit path, Ctrl-C included.
func (l *lab) close() {
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop(10 * time.Second)
	}
	for _, ns := range []*topo.NS{l.cli, l.srv} {
		if ns != nil {
			ns.Delete()
		}
	}
	if l.o.keepLogs {
		l.log.Info("logs kept", "dir", l.dir)
	} else {
		os.RemoveAll(l.dir)
	}
}

// sweepStale deletes namespaces left by a bench run that was killed
// outright (SIGKILL leaves no chance to clean up): their names carry the
// pid of a process that no longer exists.
func sweepStale(log *slog.Logger) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		i := strings.LastIndexByte(name, '-')
		pid, err := strconv.Atoi(name[i+1:])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			log.Info("removing namespace of an earlier, killed run", "ns", name)
			topo.Run("ip", "netns", "del", name)
		}
	}
}

func (l *lab) bin(name string) string { return filepath.Join(l.o.bin, name) }

// startController (re)starts the controller with a pool big enough for
// the scale runs. Every benchmark client connects from one IPv6 address,
// so the controller's fair-share lease limits are off.
func (l *lab) startController(ctx context.Context) error {
	l.stopController()
	os.Remove(l.ctlSock)
	p, err := l.start(l.srv, "controller", l.bin("4over6-controller"),
		"--listen", "unix://"+l.ctlSock, "--pool", benchPool,
		"--max-leases-per-ip", "0", "--max-leases-per-prefix", "0",
		"--dns", "192.0.2.53,192.0.2.54,192.0.2.55",
		"--state", filepath.Join(l.dir, fmt.Sprintf("controller-%d.db", len(l.procs))))
	if err != nil {
		return err
	}
	l.ctl = p
	if err := waitFor(ctx, 20*time.Second, "controller socket", func() bool { return fileExists(l.ctlSock) || p.exited() }); err != nil {
		return p.failure(err)
	}
	if p.exited() {
		return p.failure(fmt.Errorf("controller exited"))
	}
	return nil
}

func (l *lab) stopController() {
	if l.ctl != nil {
		l.ctl.stop(10 * time.Second)
		l.ctl = nil
	}
}

// backendFlag is the --tun-backend flag for a backend; none for "default",
// so that row measures whatever the binaries default to.
func backendFlag(backend string) []string {
	if backend == backendDefault {
		return nil
	}
	return []string{"--tun-backend", backend}
}

// startDataplane starts a data plane with the given TUN backend and waits
// until its TUN carries the gateway address.
func (l *lab) startDataplane(ctx context.Context, id, backend string, extra ...string) (*proc, error) {
	return l.startDataplaneBin(ctx, l.o.bin, id, backend, extra...)
}

// startDataplaneBin is startDataplane with the binary from the directory
// bin.
func (l *lab) startDataplaneBin(ctx context.Context, bin, id, backend string, extra ...string) (*proc, error) {
	api := filepath.Join(l.dir, id+".sock")
	os.Remove(api)
	// The measured iperf3 server listens on the gateway, on the data
	// plane's own host, which the destination policy keeps clients from
	// reaching by default: this lab opens it.
	args := append([]string{"--id", id, "--controller", "unix://" + l.ctlSock, "--api", "unix://" + api,
		"--listen", "[::]:" + clientPort, "--tun", "4o6", "--allow", gateway + "/32"}, backendFlag(backend)...)
	args = append(args, extra...)
	p, err := l.start(l.srv, "dataplane-"+id, filepath.Join(bin, "4over6-dataplane"), args...)
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, 20*time.Second, "data plane TUN address and API", func() bool {
		if p.exited() || !fileExists(api) {
			return p.exited()
		}
		out, _ := output(ctx, l.srv, 5*time.Second, "ip", "-4", "-o", "addr", "show", "dev", "4o6")
		return strings.Contains(out, gateway+"/")
	})
	if err == nil && p.exited() {
		err = fmt.Errorf("data plane exited")
	}
	if err != nil {
		p.stop(5 * time.Second)
		return nil, p.failure(err)
	}
	return p, nil
}

// startClientIn starts 4over6-client from the directory bin in ns,
// connecting to server (an IPv6 address of the server namespace), and waits
// until the gateway answers a ping through the tunnel.
func (l *lab) startClientIn(ctx context.Context, bin string, ns *topo.NS, name, server, backend string) (*proc, error) {
	p, err := l.start(ns, name, filepath.Join(bin, "4over6-client"),
		append([]string{"--server", "[" + server + "]:" + clientPort, "--tun", "4o6c"}, backendFlag(backend)...)...)
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, 20*time.Second, "a ping through the tunnel", func() bool {
		if p.exited() {
			return true
		}
		_, err := output(ctx, ns, 3*time.Second, "ping", "-n", "-c", "1", "-W", "1", gateway)
		return err == nil
	})
	if err == nil && p.exited() {
		err = fmt.Errorf("client exited")
	}
	if err != nil {
		p.stop(5 * time.Second)
		return nil, p.failure(err)
	}
	return p, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
