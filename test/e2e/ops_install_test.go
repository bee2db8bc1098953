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

var daemons = []string{"controller", "dataplane"}

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
	for _, c := range []string{"4over6-controller", "4over6-dataplane", "4over6ctl", "4over6-client"} {
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
		for _, must := range []string{"RuntimeDirectory=fourover6\n", "NoNewPrivileges=yes\n", "ExecReload=", "DynamicUser=yes\n"} {
			if !strings.Contains(string(b), must) {
				t.Errorf("%s lacks %q", unit, must)
			}
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

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: units not verified")
		return
	}
	verify := exec.Command(sa, "verify", filepath.Join(units, "4over6-controller.service"), filepath.Join(units, "4over6-dataplane.service"))
	vout, err := verify.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(vout)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, vout)
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
		"dataplane": {"pprof"}, // hidden, for debugging
		"client":    {"pprof"},
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
