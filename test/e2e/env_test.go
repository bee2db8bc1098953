package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/wire"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

// binDir holds the four binaries, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 && os.Getenv("FOUROVER6_REQUIRE_ROOT") == "" {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "fourover6-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/fourover6/fourover6/cmd/...")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Addresses of the test topology. The client side is IPv6-only; the
// "IPv4 internet" is a TEST-NET-2 host.
const (
	serverV6   = "fd00:46::1"
	clientV6   = "fd00:46::2"
	serverV4   = "198.51.100.1"
	internetV4 = "198.51.100.2"
	gateway    = "13.8.0.1"
)

var serverAddr = net.JoinHostPort(serverV6, "5678")

// env is one test's world: three namespaces and the daemons in them.
type env struct {
	t              *testing.T
	srv, cli, inet *topo.NS
	dir            string
	ctlSock        string
	dpSock         string
	procs          []*proc
}

type envOptions struct {
	controllerArgs []string
	dataplaneArgs  []string
	// dataplaneBin, when set, is the data plane binary to run (a test that
	// replaces it for a hand-off has its own copy).
	dataplaneBin string
	// noReturnRoute leaves the IPv4 host without a route to the pool, as
	// on the internet: only NAT on the data plane gets answers back.
	noReturnRoute bool
	// beforeDataplane runs once the namespaces and the controller are up,
	// before the data plane starts (to start what it talks to first).
	beforeDataplane func(e *env)
	// controllerEnv and dataplaneEnv are added to the daemons'
	// environment (KEY=VALUE).
	controllerEnv, dataplaneEnv []string
	// dir is the test's directory (sockets, state, logs); empty: a new
	// one. A test that must know the socket paths before the daemons
	// start gives its own.
	dir string
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	netnstest.RequireRoot(t)
	e := &env{t: t, dir: o.dir}
	if e.dir == "" {
		e.dir = t.TempDir()
	}
	e.ctlSock = filepath.Join(e.dir, "controller.sock")
	e.dpSock = filepath.Join(e.dir, "dataplane.sock")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var err error
	for _, p := range []struct {
		ns  **topo.NS
		tag string
	}{{&e.srv, "s"}, {&e.cli, "c"}, {&e.inet, "i"}} {
		*p.ns, err = topo.NewNS(topo.UniqueName(p.tag))
		must(err)
		ns := *p.ns
		t.Cleanup(ns.Delete)
	}
	must(topo.Veth(e.srv, "v6c", e.cli, "v6s"))
	must(e.srv.AddAddr("v6c", serverV6+"/64"))
	must(e.cli.AddAddr("v6s", clientV6+"/64"))
	must(topo.Veth(e.srv, "v4i", e.inet, "v4s"))
	must(e.srv.AddAddr("v4i", serverV4+"/24"))
	must(e.inet.AddAddr("v4s", internetV4+"/24"))
	// Without NAT the IPv4 host needs a route back to the pool.
	if !o.noReturnRoute {
		must(e.inet.Exec("ip", "route", "add", "13.8.0.0/16", "via", serverV4))
	}
	must(e.srv.Sysctl("net.ipv4.ip_forward", "1"))
	t.Cleanup(e.stopAll)

	e.startEnv(e.srv, o.controllerEnv, "4over6-controller", append(e.controllerArgs(), o.controllerArgs...)...)
	e.waitFor("controller socket", func() bool { _, err := os.Stat(e.ctlSock); return err == nil })
	if o.beforeDataplane != nil {
		o.beforeDataplane(e)
	}
	dpArgs := append([]string{"--id", "dp1", "--controller", "unix://" + e.ctlSock, "--api", "unix://" + e.dpSock}, o.dataplaneArgs...)
	if o.dataplaneBin != "" {
		cmd := exec.Command("ip", append([]string{"netns", "exec", e.srv.Name, o.dataplaneBin}, dpArgs...)...)
		if len(o.dataplaneEnv) > 0 {
			cmd.Env = append(os.Environ(), o.dataplaneEnv...)
		}
		e.launch("4over6-dataplane", cmd)
	} else {
		e.startEnv(e.srv, o.dataplaneEnv, "4over6-dataplane", dpArgs...)
	}
	e.waitFor("data plane API", func() bool {
		_, err := os.Stat(e.dpSock)
		return err == nil
	})
	return e
}

// controllerArgs are the controller's flags in newEnv: its state lives in
// the test's directory (a restart with the same flags finds its leases).
// The tests' clients connect from one or two IPv6 addresses, often
// hundreds of them: the fair-share lease limits are off (a test of the
// limits passes its own, later flags win).
func (e *env) controllerArgs() []string {
	return []string{"--listen", "unix://" + e.ctlSock, "--dns", "192.0.2.53,192.0.2.54,192.0.2.55",
		"--state", filepath.Join(e.dir, "controller.db"), "--max-leases-per-ip", "0", "--max-leases-per-prefix", "0"}
}

type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	done   chan error  // Wait's result, sent once
	exited atomic.Bool // set before done is sent
}

// start runs a binary in a namespace, logging to a file shown on failure.
func (e *env) start(ns *topo.NS, bin string, args ...string) *proc {
	e.t.Helper()
	return e.startEnv(ns, nil, bin, args...)
}

// startEnv is start with env added to the binary's environment.
func (e *env) startEnv(ns *topo.NS, env []string, bin string, args ...string) *proc {
	e.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, filepath.Join(binDir, bin)}, args...)...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	return e.launch(bin, cmd)
}

// launch starts cmd with its output in a log file shown on failure.
func (e *env) launch(bin string, cmd *exec.Cmd) *proc {
	e.t.Helper()
	logPath := filepath.Join(e.dir, fmt.Sprintf("%s-%d.log", bin, len(e.procs)))
	f, err := os.Create(logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	p := &proc{name: bin, cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		p.exited.Store(true)
		p.done <- err
	}()
	e.procs = append(e.procs, p)
	return p
}

// stop sends SIGTERM and waits; it fails the test if the process does not
// exit cleanly in time.
func (e *env) stop(p *proc) error {
	if p.exited.Load() {
		// Gone already (ProcessState is Wait's to write: not read here).
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 15s of SIGTERM", p.name)
	}
}

func (e *env) stopAll() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		p := e.procs[i]
		if err := e.stop(p); err != nil && !strings.Contains(err.Error(), "signal") {
			e.t.Errorf("%s: %v", p.name, err)
		}
	}
	if e.t.Failed() {
		for _, p := range e.procs {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			e.t.Logf("---- %s log (last %d lines) ----\n%s", p.name, len(lines), strings.Join(lines, "\n"))
		}
	}
}

func (e *env) waitFor(what string, f func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ctl runs 4over6ctl against this env's daemons.
func (e *env) ctl(args ...string) (stdout, stderr string, code int) {
	full := append([]string{"--controller", "unix://" + e.ctlSock, "--dataplane", "unix://" + e.dpSock}, args...)
	cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), full...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return o.String(), er.String(), code
}

// ctlJSON runs a 4over6ctl command with -o json and decodes its output.
func (e *env) ctlJSON(v any, args ...string) {
	e.t.Helper()
	out, errOut, code := e.ctl(append(args, "-o", "json")...)
	if code != 0 {
		e.t.Fatalf("4over6ctl %v: exit %d: %s", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("4over6ctl %v: output is not JSON: %v\n%s", args, err, out)
	}
}

type ctlClient struct {
	IPv4            string `json:"ipv4"`
	IPv6            string `json:"ipv6"`
	Port            int    `json:"port"`
	Dataplane       string `json:"dataplane"`
	Session         string `json:"session"`
	BytesFromClient uint64 `json:"bytes_from_client"`
	BytesToClient   uint64 `json:"bytes_to_client"`
}

type ctlPool struct {
	Size   int `json:"size"`
	Leased int `json:"leased"`
	Free   int `json:"free"`
}

func (e *env) clients() []ctlClient {
	var cs []ctlClient
	e.ctlJSON(&cs, "clients", "list")
	return cs
}

func (e *env) pool() ctlPool {
	var p ctlPool
	e.ctlJSON(&p, "pool", "show")
	return p
}

// labClient is a raw protocol client in the client namespace, written the
// way the lab's C clients are: no help from our own client code.
type labClient struct {
	t    *testing.T
	conn net.Conn
	dec  *wire.Decoder
}

func (e *env) dialLab() *labClient {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.cli.Dial(ctx, "tcp6", serverAddr)
	if err != nil {
		e.t.Fatalf("dial %s from the client namespace: %v", serverAddr, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &labClient{t: e.t, conn: c, dec: wire.NewDecoder(c, 0)}
}

func (c *labClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *labClient) next(timeout time.Duration) (wire.Msg, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	return c.dec.Next()
}

// nextOf returns the next message of type t, skipping keepalives.
func (c *labClient) nextOf(t wire.Type) wire.Msg {
	c.t.Helper()
	for {
		m, err := c.next(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for %v: %v", t, err)
		}
		if m.Type == t {
			return m
		}
		if m.Type != wire.TypeKeepalive {
			c.t.Fatalf("got %v while waiting for %v", m.Type, t)
		}
	}
}

func (c *labClient) lease() wire.AddrResponse {
	c.t.Helper()
	c.write(wire.AddrRequest[:])
	m, err := c.next(10 * time.Second)
	if err != nil {
		c.t.Fatalf("waiting for 101: %v", err)
	}
	if m.Type != wire.TypeAddrResponse {
		c.t.Fatalf("first message from the server is %v, want 101", m.Type)
	}
	r, err := wire.ParseAddrResponse(m.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}
