package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fourover6/fourover6/cmd/internal/config"
)

type vals struct {
	id        string
	interval  time.Duration
	queue     int
	rate      float64
	nat       bool
	dns       []string
	routes    []string
	ports     []int
	logLevel  string
	cfgPath   *string
	natIfaces []string
}

func flagSet(v *vals) *pflag.FlagSet {
	fs := pflag.NewFlagSet("4over6-test", pflag.ContinueOnError)
	fs.StringVar(&v.id, "id", "host", "")
	fs.DurationVar(&v.interval, "keepalive-interval", 20*time.Second, "")
	fs.IntVar(&v.queue, "send-queue", 256, "")
	fs.Float64Var(&v.rate, "accept-rate", 1000, "")
	fs.BoolVar(&v.nat, "nat", false, "")
	fs.StringSliceVar(&v.dns, "dns", nil, "")
	fs.StringArrayVar(&v.routes, "route", nil, "")
	fs.IntSliceVar(&v.ports, "port", nil, "")
	fs.StringVar(&v.logLevel, "log-level", "info", "")
	fs.StringSliceVar(&v.natIfaces, "nat-interface", nil, "")
	v.cfgPath = config.AddFlag(fs, "")
	return fs
}

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "daemon.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyValuesAndOverride(t *testing.T) {
	path := write(t, `
# every kind of value
id: dp7
keepalive-interval: 5s
send-queue: 0x40
accept-rate: 12.5
nat: true
dns: [8.8.8.8, 1.1.1.1]
route: ["10.0.0.0/8", "a,b"]
port:
  - 1
  - 2
log-level: debug
nat-interface:   # no value: as if absent
`)
	var v vals
	fs := flagSet(&v)
	if err := fs.Parse([]string{"--config", path, "--log-level", "warn", "--send-queue=7"}); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyFlag(fs); err != nil {
		t.Fatal(err)
	}
	if v.id != "dp7" || v.interval != 5*time.Second || v.rate != 12.5 || !v.nat {
		t.Errorf("scalars: %+v", v)
	}
	if v.queue != 7 || v.logLevel != "warn" {
		t.Errorf("the command line must win: send-queue %d log-level %q", v.queue, v.logLevel)
	}
	if strings.Join(v.dns, "|") != "8.8.8.8|1.1.1.1" {
		t.Errorf("dns = %q", v.dns)
	}
	if strings.Join(v.routes, "|") != "10.0.0.0/8|a,b" {
		t.Errorf("route (string array, items kept whole) = %q", v.routes)
	}
	if len(v.ports) != 2 || v.ports[0] != 1 || v.ports[1] != 2 {
		t.Errorf("port = %v", v.ports)
	}
	if v.natIfaces != nil || fs.Changed("nat-interface") {
		t.Errorf("a key without value must leave the flag alone: %q", v.natIfaces)
	}
	if !fs.Changed("dns") || !fs.Changed("id") {
		t.Error("values from the file count as set (fs.Changed)")
	}
}

func TestStringSliceItemsWithCommasAndEmptyList(t *testing.T) {
	var v vals
	fs := flagSet(&v)
	fs.Parse(nil)
	if err := config.Apply(fs, write(t, "dns: [\"a,b\", 'c\"d', e]\nnat-interface: []\n")); err != nil {
		t.Fatal(err)
	}
	if len(v.dns) != 3 || v.dns[0] != "a,b" || v.dns[1] != `c"d` || v.dns[2] != "e" {
		t.Errorf("dns = %q", v.dns)
	}
	if len(v.natIfaces) != 0 || !fs.Changed("nat-interface") {
		t.Errorf("empty list: %q changed=%v", v.natIfaces, fs.Changed("nat-interface"))
	}
	// A comma-separated scalar works for a list flag too, as on the command line.
	var w vals
	fs = flagSet(&w)
	fs.Parse(nil)
	if err := config.Apply(fs, write(t, "dns: 8.8.8.8,1.1.1.1\n")); err != nil {
		t.Fatal(err)
	}
	if strings.Join(w.dns, "|") != "8.8.8.8|1.1.1.1" {
		t.Errorf("dns = %q", w.dns)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown key", "id: x\nkeepalive-intervall: 5s\n", []string{`:2: key "keepalive-intervall": unknown key`, `did you mean "keepalive-interval"?`}},
		{"underscore", "send_queue: 5\n", []string{`key "send_queue"`, `did you mean "send-queue"?`}},
		{"far off", "colour: blue\n", []string{`key "colour": unknown key: not a flag`}},
		{"int", "send-queue: many\n", []string{`:1: key "send-queue": "many" is not a valid value for --send-queue (want a single int)`}},
		{"duration without unit", "keepalive-interval: 20\n", []string{`key "keepalive-interval"`, "durations need a unit"}},
		{"bool", "nat: yes please\n", []string{`key "nat"`, "--nat"}},
		{"list for scalar", "id: [a, b]\n", []string{`key "id": a list, but --id takes one value`}},
		{"mapping", "dns: {a: 1}\n", []string{`key "dns": a mapping, but --dns takes a list`}},
		{"nested list", "dns: [[a]]\n", []string{`key "dns": list items must be plain values`}},
		{"twice", "id: a\nid: b\n", []string{`:2: key "id": given twice (first on line 1)`}},
		{"config", "config: other.yaml\n", []string{`key "config": cannot be set from a config file`}},
		{"not a mapping", "- id\n", []string{"want a mapping of flag names to values"}},
		{"bad yaml", "id: [\n", []string{"not valid YAML"}},
		{"unquoted IPv6 listen", "id: x\nlisten: [::]:5678\n", []string{"not valid YAML", `"[::]:5678"`}},
		{"two documents", "id: a\n---\nid: b\n", []string{"more than one YAML document"}},
		{"int list", "port: [1, x]\n", []string{`key "port": "[1, x]" is not a valid value for --port`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v vals
			fs := flagSet(&v)
			fs.Parse(nil)
			path := write(t, tc.body)
			err := config.Apply(fs, path)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not a *config.Error", err)
			}
		})
	}
}

func TestAllProblemsAtOnceAndNothingSetOnBadKeys(t *testing.T) {
	var v vals
	fs := flagSet(&v)
	fs.Parse(nil)
	err := config.Apply(fs, write(t, "id: changed\nbogus: 1\nsend-queue: x\nalso-bogus: 2\n"))
	if err == nil {
		t.Fatal("no error")
	}
	if n := len(strings.Split(err.Error(), "\n")); n != 2 {
		t.Errorf("want the two unknown keys reported together, got %d lines: %v", n, err)
	}
	if v.id != "host" {
		t.Errorf("a file with unknown keys set --id to %q", v.id)
	}
}

func TestEmptyAndMissing(t *testing.T) {
	var v vals
	fs := flagSet(&v)
	fs.Parse(nil)
	for _, body := range []string{"", "# only a comment\n", "---\n"} {
		if err := config.Apply(fs, write(t, body)); err != nil {
			t.Errorf("Apply(%q) = %v", body, err)
		}
	}
	if err := config.Apply(fs, ""); err != nil {
		t.Errorf("empty path: %v", err)
	}
	err := config.Apply(fs, filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestWithCobra(t *testing.T) {
	path := write(t, "keepalive-interval: 1m\nnat: true\n")
	var v vals
	var ran bool
	cmd := &cobra.Command{
		Use: "daemon", SilenceUsage: true, SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.ApplyFlag(cmd.Flags()); err != nil {
				return err
			}
			ran = true
			return nil
		},
	}
	cmd.Flags().AddFlagSet(flagSet(&v))
	cmd.SetArgs([]string{"--config=" + path, "--nat=false"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !ran || v.interval != time.Minute || v.nat {
		t.Errorf("ran=%v interval=%s nat=%v", ran, v.interval, v.nat)
	}
	// cobra's own flags (help, version) cannot come from a file.
	cmd.SetArgs([]string{"--config=" + write(t, "help: true\n")})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "cannot be set from a config file") {
		t.Errorf("help in file: %v", err)
	}
}

func TestRead(t *testing.T) {
	var v vals
	fs := flagSet(&v)
	s, err := config.Read(fs, write(t, "log-level: debug\ndns: [a, b]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 2 || s[0].Name != "log-level" || s[0].Values[0] != "debug" || s[0].Line != 1 || !s[1].List || len(s[1].Values) != 2 {
		t.Errorf("Read = %+v", s)
	}
	if v.logLevel != "info" {
		t.Error("Read set a flag")
	}
}
