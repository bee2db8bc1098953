package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// repoRoot is where the Makefile is.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Makefile")); err != nil {
		t.Fatal(err)
	}
	return root
}

func makeInstall(t *testing.T, vars ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", repoRoot(t), "--no-print-directory", "install"}, vars...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install %s: %v\n%s", strings.Join(vars, " "), err, out)
	}
	return string(out)
}

var (
	daemons  = []string{"controller", "dataplane"}
	commands = []string{"4over6-controller", "4over6-dataplane", "4over6ctl", "4over6-client"}
)

// TestMakeInstall stages an install with DESTDIR and checks the tree; then
// installs into a scratch prefix and has systemd-analyze verify the units
// (when systemd-analyze is there).
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "build")
	stage := filepath.Join(tmp, "stage")
	root := repoRoot(t)

	out := makeInstall(t, "DESTDIR="+stage, "BIN="+bin)
	for _, c := range commands {
		fi, err := os.Stat(filepath.Join(stage, "usr/local/bin", c))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("binary %s: %v %v", c, fi, err)
		}
	}
	for _, d := range daemons {
		unit := filepath.Join(stage, "etc/systemd/system", "4over6-"+d+".service")
		b, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(unit); fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v", unit, fi.Mode())
		}
		want := "ExecStart=/usr/local/bin/4over6-" + d + " --config /etc/fourover6/" + d + ".yaml\n"
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q", unit, want)
		}
		for _, must := range []string{"RuntimeDirectory=fourover6\n", "NoNewPrivileges=yes\n", "ExecReload=", "DynamicUser=yes\n",
			"Type=notify\n", "WatchdogSec=30s\n"} {
			if !strings.Contains(string(b), must) {
				t.Errorf("%s lacks %q", unit, must)
			}
		}
		// The data plane's successor after a live hand-off speaks before
		// it is the main process.
		access := map[string]string{"controller": "NotifyAccess=main\n", "dataplane": "NotifyAccess=all\n"}[d]
		if !strings.Contains(string(b), access) {
			t.Errorf("%s lacks %q", unit, access)
		}
		conf := filepath.Join(stage, "etc/fourover6", d+".yaml")
		got, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		src, _ := os.ReadFile(filepath.Join(root, "cmd/4over6-"+d, "dist", d+".yaml"))
		if !bytes.Equal(got, src) {
			t.Errorf("%s differs from the example in the tree", conf)
		}
	}
	dp, _ := os.ReadFile(filepath.Join(stage, "etc/systemd/system/4over6-dataplane.service"))
	ctl, _ := os.ReadFile(filepath.Join(stage, "etc/systemd/system/4over6-controller.service"))
	if !strings.Contains(string(dp), "AmbientCapabilities=CAP_NET_ADMIN\n") || !strings.Contains(string(dp), "CapabilityBoundingSet=CAP_NET_ADMIN\n") {
		t.Error("the data plane unit must grant CAP_NET_ADMIN, and only that")
	}
	if !strings.Contains(string(ctl), "CapabilityBoundingSet=\n") || !strings.Contains(string(ctl), "StateDirectory=fourover6\n") {
		t.Error("the controller unit must have no capability and a state directory")
	}
	if !strings.Contains(out, "installed ") {
		t.Errorf("make install said: %s", out)
	}

	// An operator's configuration survives a second install.
	conf := filepath.Join(stage, "etc/fourover6/controller.yaml")
	if err := os.WriteFile(conf, []byte("pool: 10.99.0.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = makeInstall(t, "DESTDIR="+stage, "BIN="+bin)
	if b, _ := os.ReadFile(conf); string(b) != "pool: 10.99.0.0/24\n" {
		t.Errorf("make install overwrote %s: %q", conf, b)
	}
	if !strings.Contains(out, "kept existing "+conf) {
		t.Errorf("make install did not say it kept %s: %s", conf, out)
	}

	checkClientUnit(t, filepath.Join(stage, "etc/systemd/system/4over6-client@.service"), "/usr/local/bin", "/etc")
	if got, _ := os.ReadFile(filepath.Join(stage, "usr/local/share/doc/fourover6/examples/client.yaml")); !bytes.Equal(got, mustRead(t, filepath.Join(root, "cmd/4over6-client/dist/client.yaml"))) {
		t.Error("the client's example configuration is not in share/doc/fourover6/examples")
	}
	checkManAndCompletions(t, filepath.Join(stage, "usr/local"), filepath.Join(stage, "usr/local/bin"))

	// A distribution's package: PREFIX=/usr, staged.
	pkg := filepath.Join(tmp, "pkg")
	makeInstall(t, "DESTDIR="+pkg, "PREFIX=/usr", "BIN="+bin)
	checkManAndCompletions(t, filepath.Join(pkg, "usr"), filepath.Join(pkg, "usr/bin"))
	checkClientUnit(t, filepath.Join(pkg, "etc/systemd/system/4over6-client@.service"), "/usr/bin", "/etc")
	if b, _ := os.ReadFile(filepath.Join(pkg, "etc/systemd/system/4over6-client@.service")); !strings.Contains(string(b), "cp /usr/share/doc/fourover6/examples/client.yaml ") {
		t.Error("the client unit's comment does not name the installed example")
	}

	// A packager's layout, with every path moved.
	prefix := filepath.Join(tmp, "prefix")
	etc := filepath.Join(tmp, "etc")
	units := filepath.Join(tmp, "units")
	makeInstall(t, "PREFIX="+prefix, "SYSCONFDIR="+etc, "UNITDIR="+units, "BIN="+bin)
	for _, d := range daemons {
		b, err := os.ReadFile(filepath.Join(units, "4over6-"+d+".service"))
		if err != nil {
			t.Fatal(err)
		}
		want := "ExecStart=" + prefix + "/bin/4over6-" + d + " --config " + etc + "/fourover6/" + d + ".yaml\n"
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	checkClientUnit(t, filepath.Join(units, "4over6-client@.service"), prefix+"/bin", etc)
	if _, err := os.Stat(filepath.Join(prefix, "share/man/man1/4over6ctl.1")); err != nil {
		t.Errorf("PREFIX install: %v", err)
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: units not verified")
		return
	}
	// The template is verified as it is (systemd-analyze instantiates it),
	// and MANPATH lets it check the units' Documentation= man pages.
	verify := exec.Command(sa, "verify", filepath.Join(units, "4over6-controller.service"), filepath.Join(units, "4over6-dataplane.service"),
		filepath.Join(units, "4over6-client@.service"))
	verify.Env = append(os.Environ(), "MANPATH="+filepath.Join(prefix, "share/man"))
	vout, err := verify.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(vout)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, vout)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkClientUnit checks the installed client template unit: the binary
// and the instance's configuration at the installed paths, and hardened
// like the daemons' units.
func checkClientUnit(t *testing.T, unit, bindir, sysconfdir string) {
	t.Helper()
	b := string(mustRead(t, unit))
	if fi, _ := os.Stat(unit); fi.Mode().Perm() != 0o644 {
		t.Errorf("%s mode %v", unit, fi.Mode())
	}
	for _, must := range []string{
		"ExecStart=" + bindir + "/4over6-client --config " + sysconfdir + "/fourover6/client-%i.yaml\n",
		"ExecReload=kill -HUP $MAINPID\n", "RestartPreventExitStatus=2\n",
		"CapabilityBoundingSet=CAP_NET_ADMIN\n", "AmbientCapabilities=CAP_NET_ADMIN\n", "NoNewPrivileges=yes\n",
		"DevicePolicy=closed\n", "DeviceAllow=/dev/net/tun rw\n", "ProtectSystem=strict\n", "ProtectHome=yes\n",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n", "SystemCallFilter=~@privileged\n",
		"MemoryDenyWriteExecute=yes\n", "Documentation=man:4over6-client(8)\n",
	} {
		if !strings.Contains(b, must) {
			t.Errorf("%s lacks %q", unit, must)
		}
	}
}

// checkManAndCompletions checks the man pages and shell completions under
// prefix (the installed tree) and that the bash completion, run against
// the installed binaries in bindir, completes.
func checkManAndCompletions(t *testing.T, prefix, bindir string) {
	t.Helper()
	man := map[string]string{"4over6ctl": "1", "4over6-controller": "8", "4over6-dataplane": "8", "4over6-client": "8"}
	for c, sec := range man {
		page := filepath.Join(prefix, "share/man", "man"+sec, c+"."+sec)
		b, err := os.ReadFile(page)
		if err != nil {
			t.Errorf("man page: %v", err)
			continue
		}
		if th := `.TH "` + strings.ToUpper(c) + `" "` + sec + `"`; !strings.Contains(string(b), th) || !strings.Contains(string(b), ".SH OPTIONS") {
			t.Errorf("%s is not the man page of %s (no %s):\n%.300s", page, c, th, b)
		}
		if strings.Contains(string(b), `"fourover6 "`) {
			t.Errorf("%s names no version", page)
		}
	}
	for _, sub := range []string{"4over6ctl-clients-list.1", "4over6ctl-apply.1"} {
		if _, err := os.Stat(filepath.Join(prefix, "share/man/man1", sub)); err != nil {
			t.Errorf("subcommand man page: %v", err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(prefix, "share/man/man8/4over6-dataplane.8")); !bytes.Contains(b, []byte("check-config")) {
		t.Error("4over6-dataplane.8 does not document --check-config")
	}
	for _, c := range commands {
		for file, want := range map[string]string{
			"share/bash-completion/completions/" + c:         "complete -o default -F __start_" + c + " " + c,
			"share/zsh/site-functions/_" + c:                 "#compdef " + c,
			"share/fish/vendor_completions.d/" + c + ".fish": "complete -c " + c,
		} {
			b, err := os.ReadFile(filepath.Join(prefix, file))
			if err != nil {
				t.Errorf("completion: %v", err)
			} else if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q", file, want)
			}
		}
	}
	// The bash script asks the binary (cobra's __complete); a stand-in for
	// bash-completion's one helper lets plain bash run it.
	for _, tc := range []struct{ cmd, word, want string }{
		{"4over6ctl", "cl", "clients"},
		{"4over6ctl", "--out", "--output"},
		{"4over6-client", "--keep-d", "--keep-default-route"},
		{"4over6-dataplane", "--check-c", "--check-config"},
	} {
		script := `_get_comp_words_by_ref() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
source "$1"; COMP_WORDS=("$2" "$3"); COMP_CWORD=1; COMP_LINE="$2 $3"; COMP_POINT=${#COMP_LINE}
__start_$2 2>/dev/null; printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command("bash", "-c", script, "bash", filepath.Join(prefix, "share/bash-completion/completions", tc.cmd), tc.cmd, tc.word)
		cmd.Env = append(os.Environ(), "PATH="+bindir+":"+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil || !slices.Contains(strings.Fields(string(out)), tc.want) {
			t.Errorf("bash completion of %q %q: %v %q, want %q", tc.cmd, tc.word, err, out, tc.want)
		}
	}
}

// exampleKeys are the keys of an example configuration: the "# key: value"
// lines, which must form valid YAML once uncommented.
func exampleKeys(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^# ([a-z][a-z0-9-]*):( .*)?$`)
	var keys []string
	var doc strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			keys = append(keys, m[1])
			doc.WriteString(strings.TrimPrefix(l, "# ") + "\n")
		}
	}
	var v map[string]any
	if err := yaml.Unmarshal([]byte(doc.String()), &v); err != nil {
		t.Fatalf("%s uncommented is not valid YAML: %v\n%s", path, err, doc.String())
	}
	if len(v) != len(keys) {
		t.Fatalf("%s: %d keys, %d distinct", path, len(keys), len(v))
	}
	slices.Sort(keys)
	return keys
}

// helpFlags are the flags a binary's --help lists.
func helpFlags(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", bin, err, out)
	}
	re := regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z][a-z0-9-]*)`)
	var flags []string
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		if !slices.Contains([]string{"help", "version", "config", "check-config", "print-config"}, m[1]) {
			flags = append(flags, m[1])
		}
	}
	return flags
}

// TestExampleConfigsListEveryFlag keeps the example configurations true to
// the daemons: every flag is there, and every key is a flag.
func TestExampleConfigsListEveryFlag(t *testing.T) {
	t.Parallel()
	bins := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bins+"/", "github.com/fourover6/fourover6/cmd/4over6-controller", "github.com/fourover6/fourover6/cmd/4over6-dataplane",
		"github.com/fourover6/fourover6/cmd/4over6-client")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// Keys the examples document although --help does not list them:
	// hidden flags.
	notInHelp := map[string][]string{
		"controller": {"pprof"}, // hidden, for debugging
		"dataplane":  {"pprof"},
		"client":     {"pprof"},
	}
	for _, d := range append(slices.Clone(daemons), "client") {
		keys := exampleKeys(t, filepath.Join(repoRoot(t), "cmd/4over6-"+d, "dist", d+".yaml"))
		flags := helpFlags(t, filepath.Join(bins, "4over6-"+d))
		for _, f := range flags {
			if !slices.Contains(keys, f) {
				t.Errorf("cmd/4over6-%s/dist/%s.yaml does not document --%s: add a commented \"# %s: DEFAULT\" line", d, d, f, f)
			}
		}
		for _, k := range keys {
			if !slices.Contains(flags, k) && !slices.Contains(notInHelp[d], k) {
				t.Errorf("cmd/4over6-%s/dist/%s.yaml documents %q, which is not a flag of 4over6-%s", d, d, k, d)
			}
		}
	}
}
