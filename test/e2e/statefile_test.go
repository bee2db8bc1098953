package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fourover6/fourover6/controlplane/store/etcdtest"
	"github.com/fourover6/fourover6/test/netnstest"
)

// runController runs the controller binary until it exits on its own (or
// the deadline) and returns its exit code and stderr.
func runController(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "4over6-controller"), args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), errb.String()
	}
	t.Fatalf("controller: %v\n%s", err, errb.String())
	return 0, ""
}

// writeHealthyState runs a controller on path, with a lease, a reservation
// and a data plane, and stops it.
func writeHealthyState(t *testing.T, e *env, path string) {
	t.Helper()
	sock := filepath.Join(e.dir, fmt.Sprintf("w%d.sock", time.Now().UnixNano()))
	p := e.startHost("4over6-controller", "--listen", "unix://"+sock, "--state", path, "--dns", "192.0.2.53")
	e.waitFor("controller", func() bool { _, err := os.Stat(sock); return err == nil })
	for _, args := range [][]string{{"reservations", "set", "fd00:46::99", "13.8.0.77"}, {"dns", "set", "192.0.2.1"}} {
		var v any
		e.controllerJSON(&v, "unix://"+sock, args...)
	}
	if err := e.stop(p); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptStateFileRefused starts the real controller binary on damaged
// state files: each is exit code 3 with a message naming the file, the
// problem and --fresh-state, never a panic; with --fresh-state it starts,
// the file kept aside.
func TestCorruptStateFileRefused(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir()}
	t.Cleanup(e.stopAll)
	good := filepath.Join(e.dir, "good.db")
	writeHealthyState(t, e, good)
	healthy, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, 40000)
	rand.Read(random)
	cases := []struct {
		name string
		data func(t *testing.T, path string)
		msg  string
	}{
		{"zero-length", func(t *testing.T, path string) { os.WriteFile(path, nil, 0o600) }, "is empty"},
		{"random bytes", func(t *testing.T, path string) { os.WriteFile(path, random, 0o600) }, "not a bbolt database"},
		{"truncated", func(t *testing.T, path string) { os.WriteFile(path, healthy[:len(healthy)/3+5], 0o600) }, "truncated"},
		{"leaf page garbage", func(t *testing.T, path string) {
			b := bytes.Clone(healthy)
			for i := 2 * 4096; i < len(b); i++ { // every page but the metas
				b[i] = 0xee
			}
			os.WriteFile(path, b, 0o600)
		}, "is corrupt"},
		{"foreign bbolt file", func(t *testing.T, path string) {
			editBolt(t, path, nil, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
		}, "no meta bucket"},
		{"future format", func(t *testing.T, path string) {
			editBolt(t, path, healthy, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("2")) })
		}, "newer controller"},
		{"lease with bad JSON", func(t *testing.T, path string) {
			editBolt(t, path, healthy, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("leases")).Put([]byte{13, 8, 0, 9}, []byte(`{"addr":"13.8.`))
			})
		}, "lease 13.8.0.9"},
	}
	for i, c := range cases {
		path := filepath.Join(e.dir, fmt.Sprintf("case%d.db", i))
		c.data(t, path)
		sock := filepath.Join(e.dir, fmt.Sprintf("c%d.sock", i))
		args := []string{"--listen", "unix://" + sock, "--state", path, "--dns", "192.0.2.53"}
		code, stderr := runController(t, args...)
		if code != 3 {
			t.Errorf("%s: exit %d, want 3:\n%s", c.name, code, stderr)
			continue
		}
		for _, want := range []string{path, c.msg, "--fresh-state", "4over6-controller: "} {
			if !strings.Contains(stderr, want) {
				t.Errorf("%s: stderr lacks %q:\n%s", c.name, want, stderr)
			}
		}
		if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
			t.Errorf("%s: a panic:\n%s", c.name, stderr)
		}
		before, _ := os.ReadFile(path)
		p := e.startHost("4over6-controller", append(args, "--fresh-state")...)
		e.waitFor(c.name+": controller with --fresh-state", func() bool { _, err := os.Stat(sock); return err == nil })
		if err := e.stop(p); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		aside, _ := filepath.Glob(path + ".broken-*")
		if len(aside) != 1 {
			t.Fatalf("%s: moved aside as %v", c.name, aside)
		}
		if kept, _ := os.ReadFile(aside[0]); !bytes.Equal(kept, before) {
			t.Errorf("%s: %s is not the refused file", c.name, aside[0])
		}
		log, _ := os.ReadFile(p.log)
		if !strings.Contains(string(log), "moved it aside") {
			t.Errorf("%s: log:\n%s", c.name, log)
		}
	}
}

// editBolt writes from (a state file's bytes; nil: a new bbolt file) to
// path and changes it with fn.
func editBolt(t *testing.T, path string, from []byte, fn func(*bolt.Tx) error) {
	t.Helper()
	if from != nil {
		if err := os.WriteFile(path, from, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// ctlView is what an operator sees of a controller's state.
type ctlView struct {
	Clients      []map[string]any
	Reservations []map[string]any
	DNS          map[string]any
	Pool         map[string]any
	Dataplanes   []map[string]any
}

func (e *env) view(sock string) ctlView {
	e.t.Helper()
	var v ctlView
	c := "unix://" + sock
	e.controllerJSON(&v.Clients, c, "clients", "list")
	e.controllerJSON(&v.Reservations, c, "reservations", "list")
	e.controllerJSON(&v.DNS, c, "dns", "show")
	e.controllerJSON(&v.Pool, c, "pool", "show")
	e.controllerJSON(&v.Dataplanes, c, "dataplanes", "list")
	// What the data planes' reports and heartbeats add is not state.
	for _, m := range v.Clients {
		for _, k := range []string{"last_heard", "bytes_from_client", "bytes_to_client", "packets_from_client", "packets_to_client", "counters", "connected_since"} {
			delete(m, k)
		}
	}
	for _, m := range v.Dataplanes {
		delete(m, "last_heartbeat")
		delete(m, "sessions")
	}
	return v
}

// backup runs 4over6ctl backup against sock and returns the SHA-256 it
// printed.
func (e *env) backup(sock, file string) string {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), "--controller", "unix://"+sock, "backup", "-o", file)
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("4over6ctl backup: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`sha256 ([0-9a-f]{64})`).FindSubmatch(out)
	if m == nil {
		e.t.Fatalf("4over6ctl backup printed %q", out)
	}
	return string(m[1])
}

// TestBackupRestoreAcrossStores: a controller on bbolt with a client, a
// reservation, DNS servers, a pool range and a drained data plane; its
// backup (4over6ctl backup) restored by a new controller on etcd
// (--restore), that one's backup by a third on bbolt: clients list,
// reservations list, dns show, pool show and dataplanes list are the same
// on all three.
func TestBackupRestoreAcrossStores(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "300ms"}})
	c := e.dialLab()
	lease := c.lease()
	for _, args := range [][]string{
		{"reservations", "set", "fd00:46::99", "13.8.0.77"},
		{"reservations", "set", "fd00:47::/64", "13.8.0.78"},
		{"dns", "set", "192.0.2.1,192.0.2.2,192.0.2.3"},
		{"pool", "set-range", "13.8.0.2-13.8.0.200"},
		{"dataplane", "drain", "dp1"},
	} {
		if _, errOut, code := e.ctl(args...); code != 0 {
			t.Fatalf("4over6ctl %v: exit %d: %s", args, code, errOut)
		}
	}
	want := e.view(e.ctlSock)
	if len(want.Clients) != 1 || want.Clients[0]["ipv4"] != lease.Addr.String() || len(want.Reservations) != 2 || len(want.Dataplanes) != 1 {
		t.Fatalf("state before the backup: %+v", want)
	}
	file1 := filepath.Join(e.dir, "bbolt-backup.db")
	sum1 := e.backup(e.ctlSock, file1)

	// bbolt -> etcd.
	etcd := etcdtest.Start(t)
	storeURL := "etcd://" + strings.TrimPrefix(etcd.Endpoint, "http://") + "/restored"
	sock2 := filepath.Join(e.dir, "c2.sock")
	c2 := e.startHost("4over6-controller", "--listen", "unix://"+sock2, "--store", storeURL, "--restore", file1,
		"--dns", "192.0.2.99", "--controller-id", "c2", "--election-ttl", "2s")
	e.waitFor("c2 leads", func() bool { st, err := controllerStatus(sock2); return err == nil && st.GetLeader() })
	if got := e.view(sock2); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored into etcd:\n got %+v\nwant %+v", got, want)
	}
	if log, _ := os.ReadFile(c2.log); !strings.Contains(string(log), "state restored from a backup") || !strings.Contains(string(log), sum1) {
		t.Fatalf("c2 log does not tell the restore of %s:\n%s", sum1, log)
	}
	file2 := filepath.Join(e.dir, "etcd-backup.db")
	e.backup(sock2, file2)
	if err := e.stop(c2); err != nil {
		t.Fatal(err)
	}

	// etcd -> bbolt.
	sock3 := filepath.Join(e.dir, "c3.sock")
	state3 := filepath.Join(e.dir, "c3.db")
	args3 := []string{"--listen", "unix://" + sock3, "--state", state3, "--restore", file2, "--dns", "192.0.2.98"}
	c3 := e.startHost("4over6-controller", args3...)
	e.waitFor("c3", func() bool { _, err := os.Stat(sock3); return err == nil })
	if got := e.view(sock3); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored into bbolt:\n got %+v\nwant %+v", got, want)
	}
	if err := e.stop(c3); err != nil {
		t.Fatal(err)
	}
	// Started again with the same flags: the restore is not repeated.
	c3 = e.startHost("4over6-controller", args3...)
	e.waitFor("c3 again", func() bool { _, err := os.Stat(sock3); return err == nil })
	if log, _ := os.ReadFile(c3.log); !strings.Contains(string(log), "restored from this backup before") {
		t.Fatalf("c3 log:\n%s", log)
	}
	if err := e.stop(c3); err != nil {
		t.Fatal(err)
	}
	// Another backup over this state is refused: exit 3, what to do.
	code, stderr := runController(t, "--listen", "unix://"+sock3, "--state", state3, "--restore", file1, "--dns", "192.0.2.98")
	if code != 3 || !strings.Contains(stderr, "already holds state") || !strings.Contains(stderr, "--restore-replace") {
		t.Fatalf("restore over state: exit %d:\n%s", code, stderr)
	}
}

// readyz returns the status code and body of /readyz on the metrics socket.
func readyz(t *testing.T, sock string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://metrics/readyz")
	if err != nil {
		t.Fatalf("readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStoreFullReadiness: the state file on a small tmpfs that fills up.
// Writes fail: the operator's command fails, the controller logs it at
// ERROR, counts it, and /readyz says why; once there is room again the
// store's probe makes it ready again without any client writing.
func TestStoreFullReadiness(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir()}
	t.Cleanup(e.stopAll)
	mnt := filepath.Join(e.dir, "tmpfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	sock := filepath.Join(e.dir, "c.sock")
	msock := filepath.Join(e.dir, "m.sock")
	e.startHost("4over6-controller", "--listen", "unix://"+sock, "--state", filepath.Join(mnt, "state.db"),
		"--metrics", "unix://"+msock, "--dns", "192.0.2.53")
	e.waitFor("controller", func() bool { _, err := os.Stat(msock); return err == nil })
	e.waitFor("ready", func() bool { code, _ := readyz(t, msock); return code == 200 })

	// Fill the file system.
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	filler.Close()

	ctl := func(args ...string) (int, string) {
		cmd := exec.Command(filepath.Join(binDir, "4over6ctl"), append([]string{"--controller", "unix://" + sock}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// Writes that need new pages fail; the ones bbolt fits in pages it
	// already has may not.
	failed := ""
	for i := 0; i < 400 && failed == ""; i++ {
		if code, out := ctl("reservations", "set", fmt.Sprintf("fd00:99::%x", i+1), fmt.Sprintf("13.8.0.%d", i%250+2)); code != 0 {
			failed = out
		}
	}
	if !strings.Contains(failed, "no space left on device") {
		t.Fatalf("no write failed on a full file system (last: %q)", failed)
	}
	code, body := readyz(t, msock)
	if code != 503 || !strings.Contains(body, "no space left on device") || !strings.Contains(body, "put_reservation") {
		t.Fatalf("readyz after a failed write: %d %q", code, body)
	}
	m := scrape(t, msock)
	if m[`fourover6_controller_store_errors_total{op="put_reservation"}`] < 1 || m["fourover6_controller_store_write_ok"] != 0 {
		t.Fatalf("metrics: errors %v, write_ok %v", m[`fourover6_controller_store_errors_total{op="put_reservation"}`], m["fourover6_controller_store_write_ok"])
	}

	// Room again: the probe brings readiness back with no client writing.
	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("ready again", func() bool { code, _ := readyz(t, msock); return code == 200 })
	if m := scrape(t, msock); m["fourover6_controller_store_write_ok"] != 1 {
		t.Fatalf("write_ok %v after recovery", m["fourover6_controller_store_write_ok"])
	}
	if code, out := ctl("reservations", "set", "fd00:98::1", "13.8.0.250"); code != 0 {
		t.Fatalf("write after recovery: %d %s", code, out)
	}
	log, _ := os.ReadFile(e.procs[0].log)
	for _, want := range []string{`level=error msg="store call failed"`, "op=put_reservation", `msg="store writes succeed again"`} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if n := strings.Count(string(log), `msg="store call failed"`); n > 3 {
		t.Errorf("%d failure lines: not throttled", n)
	}
}

// TestFreshStateKeepsClients: the state file is damaged while a client is
// connected; the controller refuses it (exit 3), then starts with
// --fresh-state, and the data plane's reports bring the client's lease
// back: same address, listed again, traffic still flowing.
func TestFreshStateKeepsClients(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{dataplaneArgs: []string{"--report-interval", "300ms"}})
	ping := e.startPinger(200 * time.Millisecond)
	e.waitFor("the client's lease listed", func() bool { return len(e.controllerClients()) == 1 })
	before := e.controllerClients()[0]
	if err := e.stop(e.controllerProc()); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(e.dir, "controller.db")
	if err := os.Truncate(state, 4096+100); err != nil {
		t.Fatal(err)
	}
	p := e.start(e.srv, "4over6-controller", e.controllerArgs()...)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the controller did not refuse the damaged state")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 3 {
		t.Fatalf("exit %d, want 3", code)
	}
	os.Remove(e.ctlSock)
	e.start(e.srv, "4over6-controller", append(e.controllerArgs(), "--fresh-state")...)
	e.waitFor("controller socket", func() bool { _, err := os.Stat(e.ctlSock); return err == nil })
	e.waitFor("the reported lease adopted", func() bool {
		cs := e.controllerClients()
		return len(cs) == 1 && cs[0].IPv4 == before.IPv4 && cs[0].Session == before.Session
	})
	sent := ping.sent.Load()
	// (at least the ten finish wants: the data plane is back in well under
	// two seconds)
	e.waitFor("echoes after the fresh start", func() bool { return ping.sent.Load() >= max(sent+5, 10) })
	ping.finish(t)
}
