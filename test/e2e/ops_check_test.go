package e2e

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

// checkRun runs a binary in ns and returns its exit code, stdout and
// stderr.
func checkRun(t *testing.T, ns *topo.NS, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := ns.Command(t.Context(), filepath.Join(binDir, bin), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	return code, out.String(), errb.String()
}

// valuesOf is a --print-config output without its comments: what the
// configuration is, not where it came from.
func valuesOf(printed string) string {
	var b strings.Builder
	trailing := regexp.MustCompile(` # (default|flag|file .*)$`)
	for _, l := range strings.Split(printed, "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		b.WriteString(trailing.ReplaceAllString(l, "") + "\n")
	}
	return b.String()
}

// TestCheckAndPrintConfig runs --check-config and --print-config on the
// real binaries: a good file is silent with exit 0, a bad one exit 2 with a
// message naming the key and the closest flag; what --print-config prints,
// --config takes back to the same configuration; and neither opens a
// socket, a store or a TUN (the namespace they run in stays empty, no file
// appears) even with addresses that cannot be reached.
func TestCheckAndPrintConfig(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	ns, err := topo.NewNS(topo.UniqueName("k"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctlSock, dpSock := filepath.Join(dir, "c.sock"), filepath.Join(dir, "d.sock")
	metrics := "unix://" + filepath.Join(dir, "metrics.sock")

	for _, tc := range []struct {
		bin       string
		good      string
		badKey    string // an unknown key ...
		closest   string // ... and the flag it is closest to
		badValue  string
		valueFlag string
	}{
		{
			bin: "4over6-dataplane",
			good: "id: dp-check\ncontroller: unix://" + ctlSock + "\napi: unix://" + dpSock + "\ntun: 4o6k\nnat: true\n" +
				"listen: \"[::]:5679\"\nmetrics: " + metrics + "\nnat-interface: [eth0, eth1]\n",
			badKey: "keepalive_intervall", closest: "keepalive-interval",
			badValue: "send-queue: many\n", valueFlag: "--send-queue",
		},
		{
			bin: "4over6-controller",
			good: "listen: unix://" + ctlSock + "\nstate: " + filepath.Join(dir, "state", "c.db") + "\npool: 10.99.0.0/24\n" +
				"dns: [192.0.2.7, 192.0.2.8]\nmetrics: " + metrics + "\n",
			badKey: "pool_range", closest: "pool-range",
			badValue: "pool: 10.99.0.0/33\n", valueFlag: "--pool",
		},
		{
			bin:    "4over6-client",
			good:   "server: \"[fd00:46::1]:5678\"\ntun: 4o6k\nroute: [192.0.2.0/24, 198.51.100.7]\nkeep-default-route: true\n",
			badKey: "keepalive-intervl", closest: "keepalive-interval",
			badValue: "server: \"[fd00:46::1]:5678\"\nmtu: 9000\n", valueFlag: "--mtu",
		},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			good := write(tc.bin+"-good.yaml", tc.good)
			if code, out, errs := checkRun(t, ns, tc.bin, "--check-config", "--config", good); code != 0 || out != "" || errs != "" {
				t.Errorf("--check-config of a good file: exit %d, printed %q %q; want 0 and nothing", code, out, errs)
			}
			bad := write(tc.bin+"-key.yaml", tc.good+tc.badKey+": 5s\n")
			code, out, errs := checkRun(t, ns, tc.bin, "--check-config", "--config", bad)
			if code != 2 || out != "" || !strings.Contains(errs, `"`+tc.badKey+`"`) || !strings.Contains(errs, `did you mean "`+tc.closest+`"?`) {
				t.Errorf("--check-config, unknown key: exit %d, stdout %q, stderr %q; want 2 naming %q and %q", code, out, errs, tc.badKey, tc.closest)
			}
			badv := write(tc.bin+"-value.yaml", tc.badValue)
			if code, _, errs := checkRun(t, ns, tc.bin, "--check-config", "--config", badv); code != 2 || !strings.Contains(errs, tc.valueFlag) {
				t.Errorf("--check-config, bad value: exit %d, %q; want 2 naming %s", code, errs, tc.valueFlag)
			}

			// --print-config with a flag over the file; then the printed
			// file alone gives the same configuration.
			code, printed, errs := checkRun(t, ns, tc.bin, "--print-config", "--config", good, "--log-level", "debug")
			if code != 0 || errs != "" {
				t.Fatalf("--print-config: exit %d, %q", code, errs)
			}
			if !strings.Contains(printed, "log-level: debug # flag\n") || !regexp.MustCompile(`(?m) # file .*-good\.yaml:1$`).MatchString(printed) ||
				!strings.Contains(printed, "log-format: text # default\n") {
				t.Errorf("--print-config does not say where values came from:\n%s", printed)
			}
			again := write(tc.bin+"-printed.yaml", printed)
			code, reprinted, errs := checkRun(t, ns, tc.bin, "--print-config", "--config", again)
			if code != 0 || errs != "" {
				t.Fatalf("--config of the printed file: exit %d, %q\n%s", code, errs, printed)
			}
			if a, b := valuesOf(printed), valuesOf(reprinted); a != b {
				t.Errorf("the printed configuration read back differs:\n%s\nvs\n%s", a, b)
			}
		})
	}

	// Nothing was opened: no socket or state file, no interface but lo in
	// the namespace.
	for _, p := range []string{ctlSock, dpSock, filepath.Join(dir, "metrics.sock"), filepath.Join(dir, "state")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("a check created %s", p)
		}
	}
	links, err := ns.Output("ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Split(strings.TrimSpace(links), "\n")); n != 1 || !strings.Contains(links, "lo:") {
		t.Errorf("a check created an interface:\n%s", links)
	}
}

// TestCtlCheck runs "4over6ctl check" against real daemons: exit 0 and an
// OK line while everything runs, exit 6 with a line naming the data plane
// once it is killed, and one naming the controller once that is gone too.
// On the way, "export" prints what "apply -f" takes back without a change.
func TestCtlCheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	var out, errOut string
	code := -1
	e.waitFor("check to pass", func() bool {
		out, errOut, code = e.ctl("check")
		return code == 0
	})
	if !strings.HasPrefix(out, "OK: controller ") || !strings.Contains(out, "1 of 1 data plane up") || errOut != "" {
		t.Fatalf("healthy check: %q %q", out, errOut)
	}

	// export -> apply --dry-run: no changes, with settings changed at run time.
	file := filepath.Join(e.dir, "settings.yaml")
	if err := os.WriteFile(file, []byte("pool:\n  range: 13.8.0.2-13.8.0.100\ndns: [192.0.2.1, 192.0.2.2]\nreservations:\n  - client: fd00:46::2\n    ipv4: 13.8.0.50\n  - client: fd00:47::/64\n    ipv4: 13.8.0.51\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := e.ctl("apply", "-f", file); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, errOut)
	}
	exported, errOut, code := e.ctl("export")
	if code != 0 || !strings.Contains(exported, "range: 13.8.0.2-13.8.0.100") || !strings.Contains(exported, "client: fd00:47::/64") {
		t.Fatalf("export: exit %d: %s\n%s", code, errOut, exported)
	}
	if err := os.WriteFile(file, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := e.ctl("apply", "-f", file, "--dry-run"); code != 0 || strings.TrimSpace(out) != "no changes" {
		t.Fatalf("apply --dry-run of the export: exit %d: %q %s", code, out, errOut)
	}

	// The data plane dies without a word: check says so.
	dp := e.procs[1]
	if dp.name != "4over6-dataplane" {
		t.Fatalf("process 1 is %s", dp.name)
	}
	if err := dp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-dp.done
	e.waitFor("check to fail", func() bool {
		out, errOut, code = e.ctl("check")
		return code != 0
	})
	if code != 6 || !strings.Contains(out, "PROBLEM dataplane: data plane dp1 is down") || strings.Count(out, "\n") != 1 {
		t.Fatalf("check with the data plane killed: exit %d: %q %q", code, out, errOut)
	}

	if err := e.stop(e.procs[0]); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = e.ctl("check", "-o", "json")
	if code != 6 || !strings.Contains(out, `"check": "controller"`) || !strings.Contains(out, "cannot reach controller") {
		t.Fatalf("check with the controller stopped: exit %d: %q %q", code, out, errOut)
	}
}

// TestCtlPermissionHint runs 4over6ctl as an unprivileged user against a
// controller socket it may not open: exit 3, and the message says to run
// as root or join the socket's group, by name.
func TestCtlPermissionHint(t *testing.T) {
	t.Parallel()
	netnstest.RequireRoot(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this test runs 4over6ctl as the user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	// A group nobody is not in, for the socket.
	group, err := user.LookupGroup("adm")
	if err != nil {
		group = &user.Group{Gid: "0", Name: "root"}
	}
	sgid, _ := strconv.Atoi(group.Gid)

	dir, err := os.MkdirTemp("", "fo6-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "4over6ctl") // binDir is root's alone
	data, err := os.ReadFile(filepath.Join(binDir, "4over6ctl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "controller.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := os.Chown(sock, 0, sgid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "--controller", "unix://"+sock, "pool", "show")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 {
		t.Fatalf("as nobody: %v, stdout %q stderr %q", err, out.String(), errb.String())
	}
	want := "cannot reach controller at unix://" + sock + ": permission denied; run as root, or join the socket's group " + group.Name
	if !strings.Contains(errb.String(), want) {
		t.Fatalf("as nobody:\n got %q\nwant %q...", errb.String(), want)
	}
}
