package config_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/fourover6/fourover6/cmd/internal/config"
)

// effective is what a flag set holds, flag by flag, as text: the
// configuration a daemon would run with.
func effective(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			m[f.Name] = fmt.Sprintf("%q", sv.GetSlice())
			return
		}
		m[f.Name] = f.Value.String()
	})
	delete(m, config.Flag)
	delete(m, config.CheckFlag)
	delete(m, config.PrintFlag)
	return m
}

func checkedFlagSet(v *vals) (*pflag.FlagSet, *config.Checks) {
	fs := flagSet(v)
	return fs, config.AddCheckFlags(fs)
}

func TestOrigins(t *testing.T) {
	path := write(t, "# a comment\nid: dp7\nsend-queue: 9\n")
	var v vals
	fs, _ := checkedFlagSet(&v)
	if err := fs.Parse([]string{"--config", path, "--send-queue", "3", "--nat"}); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyFlag(fs); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"id":                 "file " + path + ":2",
		"send-queue":         "flag", // the command line wins, and says so
		"nat":                "flag",
		"keepalive-interval": "default",
		"no-such-flag":       "default",
	} {
		if got := config.OriginOf(fs, name).String(); got != want {
			t.Errorf("origin of %s = %q, want %q", name, got, want)
		}
	}
}

// TestPrintRoundTrip: what --print-config prints, --config reads back to
// the same effective configuration, whatever the values look like.
func TestPrintRoundTrip(t *testing.T) {
	path := write(t, `
id: "[::]:5678"
keepalive-interval: 1m30s
accept-rate: 12.5
dns: ["a,b", 'c"d', e]
route: ["10.0.0.0/8", "x,y"]
port: [1, 2]
log-level: "true"
nat-interface: []
`)
	var v vals
	fs, checks := checkedFlagSet(&v)
	if err := fs.Parse([]string{"--config", path, "--print-config", "--send-queue", "0x40", "--nat"}); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyFlag(fs); err != nil {
		t.Fatal(err)
	}
	if !checks.Requested() {
		t.Fatal("--print-config not seen")
	}
	var out bytes.Buffer
	if err := checks.Finish(&out, fs); err != nil {
		t.Fatal(err)
	}
	printed := out.String()
	for _, want := range []string{
		"# Effective configuration of 4over6-test",
		"# Read from: " + path + "\n",
		"send-queue: 64 # flag\n",
		"nat: true # flag\n",
		"keepalive-interval: 1m30s # file " + path + ":3\n",
		"send-queue",
		"accept-rate: 12.5 # file",
		"queue",
		"id: '[::]:5678' # file " + path + ":2\n",
		"log-level: \"true\" # file",
		"nat-interface: [] # file",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("print-config lacks %q:\n%s", want, printed)
		}
	}
	for _, never := range []string{"config:", "check-config", "print-config:", "help"} {
		if strings.Contains(printed, "\n"+never) {
			t.Errorf("print-config shows %q, which a file cannot set:\n%s", never, printed)
		}
	}
	var m map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, printed)
	}

	var w vals
	fs2, _ := checkedFlagSet(&w)
	fs2.Parse(nil)
	if err := config.Apply(fs2, write(t, printed)); err != nil {
		t.Fatalf("--config does not take the printed file back: %v\n%s", err, printed)
	}
	want, got := effective(fs), effective(fs2)
	for k, wv := range want {
		if got[k] != wv {
			t.Errorf("%s: printed and re-read %s, effective was %s", k, got[k], wv)
		}
	}
	if len(want) != len(got) {
		t.Errorf("flags: %d vs %d", len(want), len(got))
	}
}

// TestPrintDefaults: with nothing given every value is a default, and the
// output is a valid file as well.
func TestPrintDefaults(t *testing.T) {
	var v vals
	fs, _ := checkedFlagSet(&v)
	fs.String("pprof", "", "")
	fs.MarkHidden("pprof")
	fs.Parse(nil)
	var out bytes.Buffer
	if err := config.Print(&out, fs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var keys int
	for _, l := range lines {
		if strings.HasPrefix(l, "#") {
			continue
		}
		keys++
		if !strings.HasSuffix(l, " # default") {
			t.Errorf("line %q is not marked default", l)
		}
	}
	if keys != 10 {
		t.Errorf("%d keys printed, want the 10 settable flags:\n%s", keys, out.String())
	}
	if strings.Contains(out.String(), "pprof") {
		t.Errorf("a hidden flag at its default is printed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "dns: [] # default\n") || !strings.Contains(out.String(), "id: host # default\n") {
		t.Errorf("defaults:\n%s", out.String())
	}
	fs.Set("pprof", "127.0.0.1:6060")
	out.Reset()
	config.Print(&out, fs)
	if !strings.Contains(out.String(), "pprof: 127.0.0.1:6060 # flag\n") {
		t.Errorf("a hidden flag that was set is missing:\n%s", out.String())
	}
	var w vals
	fs2, _ := checkedFlagSet(&w)
	fs2.String("pprof", "", "")
	if err := config.Apply(fs2, write(t, out.String())); err != nil {
		t.Fatal(err)
	}
}

func TestCheckFlagsNotInFile(t *testing.T) {
	for _, key := range []string{"check-config", "print-config"} {
		var v vals
		fs, checks := checkedFlagSet(&v)
		fs.Parse(nil)
		err := config.Apply(fs, write(t, key+": true\n"))
		if err == nil || !strings.Contains(err.Error(), "cannot be set from a config file") {
			t.Errorf("%s in a file: %v", key, err)
		}
		if checks.Requested() {
			t.Errorf("%s in a file turned the check on", key)
		}
	}
	var v vals
	fs, checks := checkedFlagSet(&v)
	fs.Parse([]string{"--check-config"})
	var out bytes.Buffer
	if !checks.Requested() || checks.Finish(&out, fs) != nil || out.Len() != 0 {
		t.Errorf("--check-config: requested=%v, printed %q (want nothing)", checks.Requested(), out.String())
	}
	var none *config.Checks
	if none.Requested() {
		t.Error("nil Checks requested")
	}
}
