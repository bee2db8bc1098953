package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The live hand-off from outside: a real client with a ping and an inner
// TCP download through the tunnel, the data plane handed over (SIGUSR2,
// 4over6ctl dataplane upgrade) to another build and back; and a new binary
// that fails, which leaves the old process serving.

const handoffVersion = "e2e-handoff-2"

var (
	v2Once sync.Once
	v2Bin  string
	v2Err  error
)

// dataplaneV2 builds the data plane once more with another version string.
func dataplaneV2(t *testing.T) string {
	t.Helper()
	v2Once.Do(func() {
		dir := filepath.Join(binDir, "v2")
		v2Bin = filepath.Join(dir, "4over6-dataplane")
		cmd := exec.Command("go", "build", "-o", v2Bin,
			"-ldflags", "-X github.com/fourover6/fourover6/cmd/internal/version.Version="+handoffVersion,
			"github.com/fourover6/fourover6/cmd/4over6-dataplane")
		out, err := cmd.CombinedOutput()
		if err != nil {
			v2Err = fmt.Errorf("building the second data plane: %v\n%s", err, out)
		}
	})
	if v2Err != nil {
		t.Fatal(v2Err)
	}
	return v2Bin
}

// handoffEnv is an env whose data plane runs from a binary of its own,
// which the test replaces, and writes --pid-file.
type handoffEnv struct {
	*env
	bin, pidFile string
	first        int // the first data plane process
}

func newHandoffEnv(t *testing.T, extra ...string) *handoffEnv {
	return newHandoffEnvWith(t, envOptions{dataplaneArgs: extra})
}

// newHandoffEnvWith is newHandoffEnv with more of the env's options (o's
// dataplaneArgs come after the hand-off's own).
func newHandoffEnvWith(t *testing.T, o envOptions) *handoffEnv {
	dir := t.TempDir()
	h := &handoffEnv{bin: filepath.Join(dir, "4over6-dataplane"), pidFile: filepath.Join(dir, "dataplane.pid")}
	installBinary(t, filepath.Join(binDir, "4over6-dataplane"), h.bin)
	o.dataplaneBin = h.bin
	o.dataplaneArgs = append([]string{"--report-interval", "200ms", "--pid-file", h.pidFile, "--handoff-timeout", "10s"}, o.dataplaneArgs...)
	h.env = newEnv(t, o)
	h.first = h.env.procs[len(h.env.procs)-1].cmd.Process.Pid
	h.waitFor("pid file", func() bool { return h.pid() == h.first })
	// The processes that took over are not children of the test: stop the
	// serving one before the env stops the rest.
	t.Cleanup(func() {
		if pid := h.pid(); pid != h.first && pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			deadline := time.Now().Add(15 * time.Second)
			for alive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if alive(pid) {
				syscall.Kill(pid, syscall.SIGQUIT) // a goroutine dump in its log
				time.Sleep(time.Second)
				syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("data plane %d did not stop within 15s of SIGTERM", pid)
			}
		}
	})
	return h
}

// installBinary puts a copy of src at dst as an upgrade does: a new file
// renamed over the old one (a running binary cannot be written).
func installBinary(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

func (h *handoffEnv) pid() int {
	b, err := os.ReadFile(h.pidFile)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// alive: the process exists and is not a zombie (a successor's parent
// exits before it, so nobody may reap it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

type hoStatus struct {
	Version    string `json:"version"`
	PID        int    `json:"pid"`
	InstanceID string `json:"instance_id"`
	Sessions   int    `json:"sessions"`
	Handoffs   uint64 `json:"handoffs_total"`
}

func (h *handoffEnv) status() hoStatus {
	h.t.Helper()
	var st hoStatus
	h.ctlJSON(&st, "dataplane", "status")
	return st
}

// handOff sends SIGUSR2 to the serving process and waits until another
// serves and the old one is gone.
func (h *handoffEnv) handOff() (newPID int) {
	h.t.Helper()
	old := h.pid()
	start := time.Now()
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		h.t.Fatal(err)
	}
	h.waitFor("a new data plane process", func() bool { return h.pid() != old })
	h.waitFor("the old data plane process to exit", func() bool { return !alive(old) })
	h.t.Logf("hand-off %d -> %d: old process gone %s after the signal", old, h.pid(), time.Since(start).Round(time.Millisecond))
	return h.pid()
}

// hoPinger pings from the client namespace every 20 ms until stopped.
type hoPinger struct {
	cmd  *exec.Cmd
	out  strings.Builder
	mu   sync.Mutex
	read chan struct{} // closed once stdout is read to its end
}

func (e *env) startPing(dst string) *hoPinger {
	e.t.Helper()
	return e.startPingFrom(e.cli.Name, dst)
}

// startPingFrom pings dst from the namespace ns every 20 ms until stopped.
func (e *env) startPingFrom(ns, dst string) *hoPinger {
	e.t.Helper()
	p := &hoPinger{cmd: exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-i", "0.02", "-W", "2", dst), read: make(chan struct{})}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(p.read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	return p
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// stop interrupts ping and returns its totals.
func (p *hoPinger) stop(t *testing.T) (sent, received int) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	// Wait closes the pipe: read the statistics to the end first.
	select {
	case <-p.read:
	case <-time.After(10 * time.Second):
	}
	p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	m := pingStats.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("no ping statistics in:\n%s", p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// startSlowHTTP serves /slow?n=: n pseudo-random bytes, 32 KiB every 10 ms,
// so a download is in progress for seconds.
func (e *env) startSlowHTTP() *http.Server {
	e.t.Helper()
	ln, err := e.inet.Listen("tcp4", net.JoinHostPort(internetV4, "8081"))
	if err != nil {
		e.t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pong") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		b := make([]byte, n)
		rand.NewChaCha8([32]byte{3}).Read(b)
		sum := sha256.Sum256(b)
		w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		for len(b) > 0 {
			k := min(len(b), 32<<10)
			if _, err := w.Write(b[:k]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			b = b[k:]
			time.Sleep(10 * time.Millisecond)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	return srv
}

// waitDownload waits for a download to end and fails the test with what
// went wrong.
func waitDownload(t *testing.T, dl <-chan error, what string) {
	t.Helper()
	select {
	case err := <-dl:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not finish", what)
	}
}

// download fetches /slow through the tunnel and checks its checksum; the
// result arrives on the channel.
func (e *env) download(n int) <-chan error {
	done := make(chan error, 1)
	hc := &http.Client{Transport: &http.Transport{DialContext: e.cli.Dial}, Timeout: 120 * time.Second}
	go func() {
		resp, err := hc.Get("http://" + net.JoinHostPort(internetV4, "8081") + "/slow?n=" + strconv.Itoa(n))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		switch {
		case err != nil:
			done <- fmt.Errorf("download broke after %d bytes: %w", got, err)
		case got != int64(n):
			done <- fmt.Errorf("download: %d bytes, want %d", got, n)
		case hex.EncodeToString(h.Sum(nil)) != resp.Header.Get("X-Sha256"):
			done <- fmt.Errorf("download checksum differs")
		default:
			done <- nil
		}
	}()
	return done
}

// waitTunnel waits until HTTP gets through the tunnel.
func (e *env) waitTunnel() {
	e.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: e.cli.Dial}, Timeout: 2 * time.Second}
	e.waitFor("HTTP through the tunnel", func() bool {
		resp, err := hc.Get("http://" + net.JoinHostPort(internetV4, "8081") + "/ping")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
}

// clientLog returns the client's log so far.
func (e *env) logOf(p *proc) string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func countLines(log, substr string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// TestLiveHandoff: two SIGUSR2 hand-offs in a row into another build, then
// 4over6ctl dataplane upgrade back, while a client pings every 20 ms and
// downloads through the tunnel: the client's connection to the data plane
// is never closed (one "connected" in its log, no "disconnected"), its
// address and session stay, the ping loses at most a couple of echoes, the
// download completes with the right checksum, and the controller's lease
// is the same.
func TestLiveHandoff(t *testing.T) {
	t.Parallel()
	v2 := dataplaneV2(t)
	h := newHandoffEnv(t)
	srv := h.startSlowHTTP()
	defer srv.Close()
	client := h.start(h.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	h.waitFor("client lease", func() bool { return len(h.clients()) == 1 })
	h.waitTunnel()
	before := h.clients()[0]
	st0 := h.status()

	ping := h.startPing(internetV4)
	dl := h.download(24 << 20) // about eight seconds at 3 MB/s
	time.Sleep(500 * time.Millisecond)

	installBinary(t, v2, h.bin)
	pid1 := h.handOff()
	st1 := h.status()
	if st1.Version != handoffVersion || st1.PID != pid1 || st1.InstanceID != st0.InstanceID || st1.Handoffs != 1 {
		t.Errorf("after the first hand-off: status %+v, want version %s, pid %d, instance %s, 1 hand-off", st1, handoffVersion, pid1, st0.InstanceID)
	}
	time.Sleep(300 * time.Millisecond)
	pid2 := h.handOff()
	if st := h.status(); st.PID != pid2 || st.Handoffs != 2 || st.Version != handoffVersion {
		t.Errorf("after the second hand-off: status %+v, want pid %d, 2 hand-offs", st, pid2)
	}

	// Back to the first build, through the API.
	installBinary(t, filepath.Join(binDir, "4over6-dataplane"), h.bin)
	var up struct {
		OldPID     int    `json:"old_pid"`
		NewPID     int    `json:"new_pid"`
		OldVersion string `json:"old_version"`
		NewVersion string `json:"new_version"`
		Sessions   int    `json:"sessions"`
		PausedMs   int    `json:"paused_ms"`
	}
	h.ctlJSON(&up, "dataplane", "upgrade")
	if up.OldPID != pid2 || up.NewPID == pid2 || up.OldVersion != handoffVersion || up.NewVersion != st0.Version || up.Sessions != 1 {
		t.Errorf("dataplane upgrade: %+v, want from %d (%s) to the first build (%s), 1 session", up, pid2, handoffVersion, st0.Version)
	}
	h.waitFor("the pid file to name the new process", func() bool { return h.pid() == up.NewPID })
	h.waitFor("the old process to exit", func() bool { return !alive(pid2) })
	t.Logf("dataplane upgrade: %+v", up)

	waitDownload(t, dl, "inner TCP download across three hand-offs")
	sent, received := ping.stop(t)
	t.Logf("ping: %d sent, %d received across three hand-offs", sent, received)
	if sent < 100 || sent-received > 2 {
		t.Errorf("ping: %d sent, %d received: more than 2 lost across the hand-offs", sent, received)
	}
	after := h.clients()
	if len(after) != 1 || after[0].IPv4 != before.IPv4 || after[0].Session != before.Session || after[0].Port != before.Port {
		t.Errorf("clients after the hand-offs: %+v, before: %+v", after, before)
	}
	log := h.logOf(client)
	if n := countLines(log, "msg=connected"); n != 1 {
		t.Errorf("client connected %d times, want once (no reconnect)", n)
	}
	if n := countLines(log, "msg=disconnected"); n != 0 {
		t.Errorf("client saw %d disconnects, want none", n)
	}
	if p := h.pool(); p.Leased != 1 {
		t.Errorf("pool after the hand-offs: %+v, want the one lease", p)
	}
}

// TestHandoffLabClient: a client speaking only the lab protocol (as the
// public lab clients do: raw 100/102/104 on one TCP connection) pings every
// 200 ms across two SIGUSR2 hand-offs in a row: every echo is answered on
// the same connection, which never closes, and it keeps its address.
func TestHandoffLabClient(t *testing.T) {
	t.Parallel()
	h := newHandoffEnv(t)
	lab := h.dialLab()
	me := lab.lease().Addr
	stop, done := make(chan struct{}), make(chan error, 1)
	var echoes atomic.Int32
	go func() {
		for seq := uint16(1); ; seq++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-time.After(200 * time.Millisecond):
			}
			if err := lab.echo(me, seq); err != nil {
				done <- fmt.Errorf("echo %d: %w", seq, err)
				return
			}
			echoes.Add(1)
		}
	}()
	h.waitFor("echoes before the hand-offs", func() bool { return echoes.Load() >= 3 })
	h.handOff()
	h.waitFor("echoes between the hand-offs", func() bool { return echoes.Load() >= 6 })
	h.handOff()
	n := echoes.Load()
	h.waitFor("echoes after the hand-offs", func() bool { return echoes.Load() >= n+3 })
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("the lab client lost service across the hand-offs: %v", err)
	}
	cs := h.clients()
	if len(cs) != 1 || cs[0].IPv4 != me.String() {
		t.Errorf("clients after the hand-offs: %+v, want the one at %s", cs, me)
	}
	t.Logf("lab client: %d echoes answered across two hand-offs", echoes.Load())
}

// TestHandoffRollback: a new binary that exits at once, and one that is
// not a data plane at all (it never says hello): the old process serves
// on, its client never notices, and the log says why.
func TestHandoffRollback(t *testing.T) {
	t.Parallel()
	h := newHandoffEnv(t, "--handoff-timeout", "2s")
	srv := h.startSlowHTTP()
	defer srv.Close()
	client := h.start(h.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	h.waitFor("client lease", func() bool { return len(h.clients()) == 1 })
	h.waitTunnel()
	before := h.clients()[0]
	dpLog := h.procs[1]

	for i, script := range []string{
		"#!/bin/sh\necho 'this build fails at start' >&2\nexit 1\n",
		"#!/bin/sh\nsleep 30\n",
	} {
		if err := os.WriteFile(h.bin+".new", []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(h.bin+".new", h.bin); err != nil {
			t.Fatal(err)
		}
		n := countLines(h.logOf(dpLog), "hand-off failed")
		syscall.Kill(h.first, syscall.SIGUSR2)
		h.waitFor("the hand-off to fail", func() bool { return countLines(h.logOf(dpLog), "hand-off failed") > n })
		// Through the API too: an error, exit 1.
		if _, errOut, code := h.ctl("dataplane", "upgrade"); code != 1 || !strings.Contains(errOut, "hand-off failed") {
			t.Errorf("dataplane upgrade to failing binary %d: exit %d, %s", i, code, errOut)
		}
	}
	if st := h.status(); st.PID != h.first || st.Handoffs != 0 {
		t.Errorf("status after failed hand-offs: %+v, want the first process %d", st, h.first)
	}
	if !alive(h.first) {
		t.Fatal("the data plane died")
	}
	ping := h.startPing(internetV4)
	time.Sleep(time.Second)
	if sent, received := ping.stop(t); received == 0 || sent-received > 1 {
		t.Errorf("ping after the failed hand-offs: %d sent, %d received", sent, received)
	}
	if after := h.clients(); len(after) != 1 || after[0].Session != before.Session || after[0].IPv4 != before.IPv4 {
		t.Errorf("clients after the failed hand-offs: %+v, before %+v", after, before)
	}
	if n := countLines(h.logOf(client), "msg=connected"); n != 1 {
		t.Errorf("client connected %d times, want once", n)
	}
	log := h.logOf(dpLog)
	if !strings.Contains(log, "the new process exited: exit status 1") || !strings.Contains(log, "not ready within --handoff-timeout") {
		t.Errorf("the data plane's log does not say why the hand-offs failed")
	}
}

// TestConnectionBlip: ss -K cuts the client's outer TCP connection in the
// middle of an inner download; the client reconnects at once, gets the
// same address, and the download completes with the right checksum.
func TestConnectionBlip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "200ms"}})
	srv := e.startSlowHTTP()
	defer srv.Close()
	client := e.start(e.cli, "4over6-client", "--server", serverAddr, "--tun", "4o6c")
	e.waitFor("client lease", func() bool { return len(e.clients()) == 1 })
	e.waitTunnel()
	before := e.clients()[0]

	dl := e.download(12 << 20) // about four seconds
	time.Sleep(time.Second)
	out, err := e.cli.Output("ss", "-K", "-t", "dst", "["+serverV6+"]:5678")
	if err != nil {
		t.Fatalf("ss -K: %v\n%s", err, out)
	}
	e.waitFor("the client to reconnect", func() bool { return countLines(e.logOf(client), "msg=connected") == 2 })
	var after []ctlClient
	e.waitFor("the new session's lease", func() bool {
		after = e.clients()
		return len(after) == 1 && after[0].Session != before.Session
	})
	if after[0].IPv4 != before.IPv4 {
		t.Errorf("after the blip the client has %s, before %s", after[0].IPv4, before.IPv4)
	}
	waitDownload(t, dl, "inner download across the blip")
	log := e.logOf(client)
	if !strings.Contains(log, "lease unchanged") {
		t.Errorf("the client did not keep its address and routes across the reconnect:\n%s", log)
	}
}

// TestSystemdHandoff: a data plane run as its Type=notify unit runs it
// (NOTIFY_SOCKET, a watchdog) hands over on SIGUSR2. The old process names
// its successor the main PID and then says nothing (no STOPPING=1, which
// would stop the service, and no more pings); the successor says READY=1
// with its own MAINPID and pings the watchdog from then on.
func TestSystemdHandoff(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newFakeSystemd(t, dir, "dp-notify", func() error { return nil })
	h := newHandoffEnvWith(t, envOptions{dataplaneEnv: f.env()})
	old := h.first
	h.waitFor("the first process's pings", func() bool { return slices.Contains(f.from(old), "WATCHDOG=1") })
	newPID := h.handOff()
	h.waitFor("the successor's pings", func() bool {
		n := 0
		for _, m := range f.from(newPID) {
			if m == "WATCHDOG=1" {
				n++
			}
		}
		return n >= 3
	})
	oldMsgs := f.from(old)
	if len(oldMsgs) == 0 || !strings.HasPrefix(oldMsgs[0], "READY=1\n") {
		t.Errorf("the first process's first message is not READY=1: %q", oldMsgs)
	}
	if len(oldMsgs) == 0 || oldMsgs[len(oldMsgs)-1] != "MAINPID="+strconv.Itoa(newPID) {
		t.Errorf("the old process's last message is not MAINPID=%d: %q", newPID, oldMsgs)
	}
	for _, m := range oldMsgs {
		if strings.Contains(m, "STOPPING=1") {
			t.Errorf("the old process said %q after handing over", m)
		}
	}
	newMsgs := f.from(newPID)
	if len(newMsgs) == 0 || !strings.HasPrefix(newMsgs[0], "READY=1\n") || !strings.Contains(newMsgs[0], "MAINPID="+strconv.Itoa(newPID)) {
		t.Errorf("the successor's first message is not READY=1 with its MAINPID: %q", newMsgs)
	}
	if slices.Contains(f.from(0), "WATCHDOG=1") {
		t.Errorf("messages without a sender: %s", f)
	}
}
