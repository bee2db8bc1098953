package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// parse runs the client's command line up to the point where it would
// start, and returns the configuration it would start with, the exit code
// and what it printed.
func parse(args ...string) (c config, started bool, code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	cmd := newCommand(func(_ *cobra.Command, got config) error {
		c, started = got, true
		return nil
	})
	code = execute(cmd, args, &out, &errb)
	return c, started, code, out.String(), errb.String()
}

func mustParse(t *testing.T, args ...string) config {
	t.Helper()
	c, started, code, _, stderr := parse(args...)
	if code != exitOK || !started {
		t.Fatalf("%q: exit %d, started %v: %s", args, code, started, stderr)
	}
	return c
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "client.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseFlagsDefaults(t *testing.T) {
	c := mustParse(t, "--server", "[fd00:46::1]:5678")
	if c.server != "[fd00:46::1]:5678" || c.tunName != "4o6c" || c.tunBackend != "auto" || c.mtu != 1500 ||
		c.keepDefaultRoute || c.pool.IsValid() || len(c.routes) != 0 || c.resolvConf != "" ||
		c.keepaliveInterval != 20*time.Second || c.keepaliveTimeout != 60*time.Second ||
		c.reconnectMin != time.Second || c.reconnectMax != 30*time.Second || c.once ||
		c.helloResend != helloResend || c.log.Level != "info" || c.log.Format != "text" || c.pprof != "" || c.configFile != "" {
		t.Errorf("defaults: %+v", c)
	}
}

func allArgs(dir string) []string {
	return []string{
		"--server", "vpn.example.org:5678", "--tun", "tun7", "--mtu", "2048", "--keep-default-route",
		"--pool", "13.8.0.9/24", "--route", "10.0.0.0/8,192.0.2.7", "--route", "198.51.100.0/24",
		"--route", "10.0.0.0/8", "--resolv-conf", filepath.Join(dir, "resolv.conf"),
		"--keepalive-interval", "200ms", "--keepalive-timeout", "1s",
		"--reconnect-min", "50ms", "--reconnect-max", "2s", "--once",
		"--log-level", "debug", "--log-format", "json", "--tun-backend", "water",
	}
}

func checkAll(t *testing.T, c config, dir string) {
	t.Helper()
	wantRoutes := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("198.51.100.0/24"),
	}
	if !slices.Equal(c.routes, wantRoutes) {
		t.Errorf("routes %v, want %v", c.routes, wantRoutes)
	}
	if c.pool != netip.MustParsePrefix("13.8.0.0/24") {
		t.Errorf("pool %v (host bits must be cleared)", c.pool)
	}
	if !c.keepDefaultRoute || !c.once || c.mtu != 2048 || c.tunName != "tun7" || c.server != "vpn.example.org:5678" ||
		c.keepaliveInterval != 200*time.Millisecond || c.keepaliveTimeout != time.Second ||
		c.reconnectMin != 50*time.Millisecond || c.reconnectMax != 2*time.Second ||
		c.log.Level != "debug" || c.log.Format != "json" || c.resolvConf != filepath.Join(dir, "resolv.conf") {
		t.Errorf("parsed: %+v", c)
	}
}

func TestParseFlagsAll(t *testing.T) {
	dir := t.TempDir()
	checkAll(t, mustParse(t, allArgs(dir)...), dir)
}

// TestSingleDashFlags: command lines written for the client's earlier
// parser (Go's flag package: -name, -name=value) mean the same today.
func TestSingleDashFlags(t *testing.T) {
	dir := t.TempDir()
	var args []string
	for _, a := range allArgs(dir) {
		if strings.HasPrefix(a, "--") {
			a = a[1:]
		}
		args = append(args, a)
	}
	checkAll(t, mustParse(t, args...), dir)
	c := mustParse(t, "-server=[::1]:5678", "-tun", "-x-", "-once=false")
	if c.server != "[::1]:5678" || c.tunName != "-x-" || c.once {
		t.Errorf("-name=value and values that start with a dash: %+v", c)
	}
	if _, _, code, stdout, _ := parse("-help"); code != exitOK || !strings.Contains(stdout, "--server") {
		t.Errorf("-help: exit %d, %q", code, stdout)
	}
}

// TestParseFlagsErrors checks that each bad value is refused with exit
// status 2 and a message naming its flag.
func TestParseFlagsErrors(t *testing.T) {
	ok := []string{"--server", "[::1]:5678"}
	cases := []struct {
		args []string
		flag string
	}{
		{[]string{}, "--server"},
		{[]string{"--server", "::1"}, "--server"},
		{[]string{"--server", "[::1]"}, "--server"},
		{[]string{"--server", "[::1]:0"}, "--server"},
		{[]string{"--server", "[::1]:http"}, "--server"},
		{[]string{"--server", "[::1]:70000"}, "--server"},
		{[]string{"--server", ":5678"}, "--server"},
		{[]string{"--server", "192.0.2.1:5678"}, "--server"},
		{[]string{"--server", "[::ffff:192.0.2.1]:5678"}, "--server"},
		{[]string{"--server", "[::1]:5678", "extra"}, "argument"},
		{append(ok, "--tun", ""), "--tun"},
		{append(ok, "--tun", "a-very-long-interface-name"), "--tun"},
		{append(ok, "--tun", "a/b"), "--tun"},
		{append(ok, "--tun-backend", "nope"), "--tun-backend"},
		{append(ok, "--mtu", "2049"), "--mtu"},
		{append(ok, "--mtu", "67"), "--mtu"},
		{append(ok, "--nice", "20"), "--nice 20: want -20..19"},
		{append(ok, "--rt-priority", "100"), "--rt-priority 100: want 1..99"},
		{append(ok, "--mtu", "big"), "--mtu"},
		{append(ok, "--pool", "13.8.0.0/33"), "--pool"},
		{append(ok, "--pool", "fd00::/64"), "--pool"},
		{append(ok, "--pool", "0.0.0.0/0"), "--pool"},
		{append(ok, "--route", "10.0.0.0/8,bogus"), "--route"},
		{append(ok, "--route", "fd00::/8"), "--route"},
		{append(ok, "--resolv-conf", "/nonexistent-dir/resolv.conf"), "--resolv-conf"},
		{append(ok, "--keepalive-interval", "0s"), "--keepalive-interval"},
		{append(ok, "--keepalive-interval", "20"), "--keepalive-interval"},
		{append(ok, "--keepalive-timeout", "-1s"), "--keepalive-timeout"},
		{append(ok, "--reconnect-min", "0s"), "--reconnect-min"},
		{append(ok, "--reconnect-min", "5s", "--reconnect-max", "1s"), "--reconnect-max"},
		{append(ok, "--log-level", "loud"), "--log-level"},
		{append(ok, "--log-format", "xml"), "--log-format"},
		{append(ok, "--no-such-flag"), "no-such-flag"},
		{append(ok, "--config", "/nonexistent/client.yaml"), "/nonexistent/client.yaml"},
	}
	for _, tc := range cases {
		_, started, code, _, stderr := parse(slices.Clone(tc.args)...)
		if started || code != exitUsage {
			t.Errorf("%q: exit %d, started %v; want exit 2", tc.args, code, started)
		}
		if !strings.Contains(stderr, tc.flag) {
			t.Errorf("%q: message %q does not name %s", tc.args, stderr, tc.flag)
		}
	}
}

func TestParseFlagsAccepts(t *testing.T) {
	for _, s := range []string{"[fd00:46::1]:5678", "[::1]:1", "vpn.example.org:5678", "[fe80::1%eth0]:5678", "localhost:65535"} {
		mustParse(t, "--server", s)
	}
}

func TestHelpAndVersion(t *testing.T) {
	_, started, code, stdout, _ := parse("--help")
	if code != exitOK || started {
		t.Errorf("--help: exit %d, started %v", code, started)
	}
	for _, want := range []string{"4over6-client is the Linux client", "Examples:", "Exit codes:", "--keep-default-route", "--config FILE", "--check-config", "--print-config", "--log-format", "--version"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "pprof") || strings.Contains(stdout, "docs") {
		t.Errorf("--help shows hidden flags or commands:\n%s", stdout)
	}
	if _, _, code, stdout, _ := parse("-h"); code != exitOK || !strings.Contains(stdout, "--server") {
		t.Errorf("-h: exit %d", code)
	}
	if _, _, code, stdout, _ := parse("--version"); code != exitOK || !strings.HasPrefix(stdout, "4over6-client ") {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}
	// The hidden pprof flag still works.
	if c := mustParse(t, "--server", "[::1]:5678", "--pprof", "127.0.0.1:0"); c.pprof != "127.0.0.1:0" {
		t.Errorf("--pprof: %q", c.pprof)
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, `
server: "[fd00:46::1]:5678"
tun: tunf
route: [10.0.0.0/8, 192.0.2.7]
keep-default-route: true
keepalive-interval: 5s
log-level: debug
resolv-conf: `+filepath.Join(dir, "resolv.conf")+`
pool:   # no value: the default
`)
	c := mustParse(t, "--config", path, "--tun", "tunc", "--route", "198.51.100.0/24")
	if c.server != "[fd00:46::1]:5678" || !c.keepDefaultRoute || c.keepaliveInterval != 5*time.Second || c.log.Level != "debug" ||
		c.resolvConf != filepath.Join(dir, "resolv.conf") || c.pool.IsValid() || c.configFile != path {
		t.Errorf("from the file: %+v", c)
	}
	if c.tunName != "tunc" || !slices.Equal(c.routes, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}) {
		t.Errorf("the command line must win: tun %q routes %v", c.tunName, c.routes)
	}
	if c := mustParse(t, "--config", path); !slices.Equal(c.routes, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32")}) {
		t.Errorf("routes from the file: %v", c.routes)
	}

	for _, tc := range []struct{ body, want string }{
		{"server: \"[::1]:5678\"\nkeepalive_interval: 5s\n", `key "keepalive_interval": unknown key: not a flag; did you mean "keepalive-interval"?`},
		{"server: \"[::1]:5678\"\nmtu: lots\n", `key "mtu": "lots" is not a valid value for --mtu`},
		{"server: \"[::1]:5678\"\nroute: [10.0.0.0/8, fd00::/8]\n", `key "route"`},
		{"server: \"[::1]:5678\"\nmtu: 9000\n", "--mtu 9000"},
		{"server: 192.0.2.1:5678\n", "--server"},
		{"check-config: true\n", `key "check-config": cannot be set from a config file`},
	} {
		path := writeFile(t, tc.body)
		_, started, code, _, stderr := parse("--config", path)
		if started || code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, started %v, stderr %q; want exit 2 and %q", tc.body, code, started, stderr, tc.want)
		}
	}
}

// TestCheckAndPrintConfig: --check-config and --print-config validate, and
// never start the client; the printed file gives the same configuration
// back.
func TestCheckAndPrintConfig(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, "server: vpn.example.org:5678\nroute: [10.0.0.0/8]\nonce: true\n")
	_, started, code, stdout, stderr := parse("--check-config", "--config", good)
	if code != exitOK || started || stdout != "" || stderr != "" {
		t.Errorf("--check-config of a good file: exit %d, started %v, printed %q %q; want exit 0 and nothing", code, started, stdout, stderr)
	}
	bad := writeFile(t, "server: vpn.example.org:5678\nrout: [10.0.0.0/8]\n")
	_, started, code, stdout, stderr = parse("--check-config", "--config", bad)
	if code != exitUsage || started || stdout != "" || !strings.Contains(stderr, `"rout"`) || !strings.Contains(stderr, `"route"`) {
		t.Errorf("--check-config of a bad file: exit %d, started %v, %q %q", code, started, stdout, stderr)
	}
	if _, started, code, _, stderr := parse("--check-config"); code != exitUsage || started || !strings.Contains(stderr, "--server") {
		t.Errorf("--check-config without --server: exit %d, %q", code, stderr)
	}

	args := append(allArgs(dir), "--config", good, "--print-config")
	want := mustParse(t, allArgs(dir)...)
	_, started, code, printed, stderr := parse(args...)
	if code != exitOK || started || stderr != "" {
		t.Fatalf("--print-config: exit %d, started %v, stderr %q", code, started, stderr)
	}
	for _, line := range []string{
		"server: vpn.example.org:5678 # flag\n",
		"route: [10.0.0.0/8, 192.0.2.7/32, 198.51.100.0/24] # flag\n",
		"once: true # flag\n",
		"tun-backend: water # flag\n",
		"reconnect-max: 2s # flag\n",
		"# Read from: " + good + "\n",
	} {
		if !strings.Contains(printed, line) {
			t.Errorf("--print-config lacks %q:\n%s", line, printed)
		}
	}
	if strings.Contains(printed, "pprof") {
		t.Errorf("--print-config shows the hidden --pprof at its default:\n%s", printed)
	}
	again := writeFile(t, printed)
	got := mustParse(t, "--config", again)
	got.configFile, want.configFile = "", ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("--print-config read back by --config:\n got  %+v\n want %+v", got, want)
	}
	_, _, _, printed2, _ := parse("--config", writeFile(t, "server: \"[::1]:5678\"\n"), "--print-config")
	if !strings.Contains(printed2, "server: '[::1]:5678' # file ") || !strings.Contains(printed2, "mtu: 1500 # default\n") {
		t.Errorf("origins file and default:\n%s", printed2)
	}
}

// TestExampleConfig: dist/client.yaml, uncommented, is a valid file whose
// keys are the client's flags.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("dist/client.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc strings.Builder
	keys := map[string]bool{}
	line := regexp.MustCompile(`^(?:# )?([a-z][a-z0-9-]*):( .*)?$`)
	for _, l := range strings.Split(string(b), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			if keys[m[1]] {
				t.Errorf("dist/client.yaml: %s twice", m[1])
			}
			keys[m[1]] = true
			doc.WriteString(strings.TrimPrefix(l, "# ") + "\n")
		}
	}
	path := writeFile(t, doc.String())
	if _, _, code, _, stderr := parse("--config", path, "--check-config"); code != exitOK {
		t.Errorf("dist/client.yaml uncommented: exit %d: %s\n%s", code, stderr, doc.String())
	}
	cmd := newCommand(nil)
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "check-config" && f.Name != "print-config" && !keys[f.Name] {
			t.Errorf("dist/client.yaml does not document --%s", f.Name)
		}
	})
}
