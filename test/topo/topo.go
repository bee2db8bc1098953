// Package topo builds the network namespaces that end-to-end tests, the
// demo and the benchmarks run in: a server side, an IPv6-only client side
// and an "IPv4 internet" host on a TEST-NET address, joined by veths. Nothing
// it creates touches the host's own interfaces, routes or resolv.conf.
package topo

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace (ip netns).
type NS struct {
	Name string
	h    netns.NsHandle
}

var seq atomic.Int64

// UniqueName returns a namespace-name prefix unique to this process and
// call, so packages can run their tests in parallel.
func UniqueName(tag string) string {
	return fmt.Sprintf("fo6%s%d-%d", tag, os.Getpid()%100000, seq.Add(1))
}

// Run runs a command and returns its combined output as the error text.
func Run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NewNS creates a namespace with loopback up.
func NewNS(name string) (*NS, error) {
	_ = Run("ip", "netns", "del", name) // leftover of a killed run
	if err := Run("ip", "netns", "add", name); err != nil {
		return nil, err
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		Run("ip", "netns", "del", name)
		return nil, err
	}
	ns := &NS{Name: name, h: h}
	if err := ns.Exec("ip", "link", "set", "lo", "up"); err != nil {
		ns.Delete()
		return nil, err
	}
	return ns, nil
}

// Delete removes the namespace (its interfaces go with it).
func (ns *NS) Delete() {
	ns.h.Close()
	Run("ip", "netns", "del", ns.Name)
}

// Exec runs a command inside the namespace.
func (ns *NS) Exec(args ...string) error {
	return Run(append([]string{"ip", "netns", "exec", ns.Name}, args...)...)
}

// Output runs a command inside the namespace and returns its stdout.
func (ns *NS) Output(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// Command returns a command that will run inside the namespace.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on an OS thread inside the namespace: sockets fn opens belong
// to the namespace and stay usable from any goroutine afterwards.
func (ns *NS) Do(fn func() error) error { return RunIn(ns.h, fn) }

// RunIn runs fn on an OS thread moved into the namespace h and waits for
// it. The thread goes back to its own namespace afterwards; if it cannot,
// it is never reused (it exits with the goroutine).
func RunIn(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Dial opens a TCP connection from inside the namespace.
func (ns *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace.
func (ns *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Veth joins two namespaces with a veth pair named aName (in a) and bName
// (in b), both up.
func Veth(a *NS, aName string, b *NS, bName string) error {
	tmpA, tmpB := UniqueName("va"), UniqueName("vb")
	if len(tmpA) > 15 || len(tmpB) > 15 {
		tmpA, tmpB = fmt.Sprintf("fo6a%d", seq.Add(1)), fmt.Sprintf("fo6b%d", seq.Add(1))
	}
	// Create in a namespace of ours, never in the host's, then move.
	if err := a.Exec("ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "-n", a.Name, "link", "set", tmpB, "netns", b.Name},
		{"ip", "-n", a.Name, "link", "set", tmpA, "name", aName},
		{"ip", "-n", b.Name, "link", "set", tmpB, "name", bName},
		{"ip", "-n", a.Name, "link", "set", aName, "up"},
		{"ip", "-n", b.Name, "link", "set", bName, "up"},
	}
	for _, s := range steps {
		if err := Run(s...); err != nil {
			return err
		}
	}
	return nil
}

// AddAddr adds an address to an interface; IPv6 addresses skip duplicate
// address detection so they are usable at once.
func (ns *NS) AddAddr(dev, cidr string) error {
	args := []string{"ip", "addr", "add", cidr, "dev", dev}
	if strings.Contains(cidr, ":") {
		args = append(args, "nodad")
	}
	return ns.Exec(args...)
}

// Sysctl sets a sysctl inside the namespace.
func (ns *NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(value), 0o644)
	})
}
