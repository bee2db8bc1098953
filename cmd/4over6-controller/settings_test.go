package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// jsonRecords are the log records of msg in JSON logs.
func jsonRecords(t *testing.T, logs, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// runController runs the controller with args until stop is called; it
// returns the logs once stopped.
func runController(t *testing.T, args ...string) (sock string, stop func() string) {
	t.Helper()
	dir := t.TempDir()
	sock = filepath.Join(dir, "c.sock")
	ctx, cancel := context.WithCancel(t.Context())
	var errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "unix://" + sock, "--log-format", "json"}, args...), &lockedBuffer{}, &errb)
	}()
	getPool(t, sock)
	return sock, func() string {
		cancel()
		if code := <-done; code != exitOK {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		return errb.String()
	}
}

// TestStartupSettings: the startup line shows every value in effect and
// where it came from; a DNS list set at run time wins at the next start,
// with a warning, and the startup line shows it, not the configured one.
func TestStartupSettings(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(conf, []byte("# test\ndns: [192.0.2.53, 192.0.2.54, 192.0.2.55]\ngrace-period: 45s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", conf, "--state", filepath.Join(dir, "state.db"), "--pool-range", "13.8.0.2-13.8.0.50",
		"--resolv-conf", filepath.Join(dir, "missing")}

	sock, stop := runController(t, args...)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := pb.NewControllerServiceClient(cc).SetDNS(ctx, &pb.SetDNSRequest{Servers: []string{"198.51.100.53", "198.51.100.54", "198.51.100.55"}}); err != nil {
		t.Fatal(err)
	}
	cc.Close()
	logs := stop()
	s := jsonRecords(t, logs, "controller started")
	if len(s) != 1 {
		t.Fatalf("startup lines: %v\n%s", s, logs)
	}
	from, _ := s[0]["from"].(map[string]any)
	if s[0]["dns"] != "192.0.2.53,192.0.2.54,192.0.2.55" || s[0]["grace_period"] != "45s" || s[0]["range"] != "13.8.0.2-13.8.0.50" ||
		from["dns"] != "file "+conf+":2" || from["grace_period"] != "file "+conf+":3" || from["range"] != "flag" ||
		from["pool"] != "default" || from["listen"] != "flag" {
		t.Errorf("first start: %v", s[0])
	}
	if w := jsonRecords(t, logs, "the DNS servers set at run time (dns set, apply) override the configured ones"); len(w) != 0 {
		t.Errorf("first start warned about an override: %v", w)
	}

	_, stop = runController(t, args...)
	logs = stop()
	s = jsonRecords(t, logs, "controller started")
	if len(s) != 1 {
		t.Fatalf("startup lines: %v\n%s", s, logs)
	}
	from, _ = s[0]["from"].(map[string]any)
	if s[0]["dns"] != "198.51.100.53,198.51.100.54,198.51.100.55" || from["dns"] != "stored" || from["range"] != "flag" {
		t.Errorf("restart: the startup line must show the DNS in effect: %v", s[0])
	}
	w := jsonRecords(t, logs, "the DNS servers set at run time (dns set, apply) override the configured ones")
	if len(w) != 1 || w[0]["level"] != "warn" || w[0]["configured"] != "192.0.2.53,192.0.2.54,192.0.2.55" || w[0]["configured_from"] != "file "+conf+":2" {
		t.Errorf("override warning: %v\n%s", w, logs)
	}
}

// TestPublicDNSWarning: handing out the public fallbacks is a warning
// naming them; three configured servers, or a list set at run time, are
// not.
func TestPublicDNSWarning(t *testing.T) {
	const msg = "public DNS servers"
	warned := func(logs string) []map[string]any {
		var out []map[string]any
		for _, l := range strings.Split(logs, "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && strings.Contains(fmt.Sprint(m["msg"]), msg) {
				out = append(out, m)
			}
		}
		return out
	}
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.53\nnameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		args   []string
		public string // "" for no warning
	}{
		{"no resolv.conf", []string{"--resolv-conf", filepath.Join(dir, "missing")}, "8.8.8.8,1.1.1.1,9.9.9.9"},
		{"one nameserver", []string{"--resolv-conf", resolv}, "8.8.8.8,1.1.1.1"},
		{"one --dns", []string{"--dns", "192.0.2.9"}, "8.8.8.8,1.1.1.1"},
		{"three --dns", []string{"--dns", "192.0.2.9,192.0.2.10,192.0.2.11"}, ""},
	} {
		_, stop := runController(t, append(c.args, "--state", filepath.Join(t.TempDir(), "state.db"))...)
		w := warned(stop())
		switch {
		case c.public == "" && len(w) != 0:
			t.Errorf("%s: warned %v", c.name, w)
		case c.public != "" && (len(w) != 1 || w[0]["level"] != "warn" || w[0]["public"] != c.public):
			t.Errorf("%s: want one warning naming %s, got %v", c.name, c.public, w)
		}
	}
}

// TestJournalPriorities: with stderr the journal's stream (as systemd
// sets JOURNAL_STREAM), every line carries its syslog priority, so
// `journalctl -p warning` finds the warnings.
func TestJournalPriorities(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	sock := filepath.Join(dir, "c.sock")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "unix://" + sock, "--state", filepath.Join(dir, "state.db"),
			"--resolv-conf", filepath.Join(dir, "missing")}, &lockedBuffer{}, f)
	}()
	getPool(t, sock)
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d", code)
	}
	b, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	warned := false
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "<4>"):
			warned = warned || strings.Contains(l, "public DNS servers")
		case strings.HasPrefix(l, "<6>"), strings.HasPrefix(l, "<3>"):
		default:
			t.Errorf("line without a priority: %q", l)
		}
	}
	if !warned || !strings.HasPrefix(lines[0], "<") {
		t.Errorf("the public DNS warning is not at priority 4:\n%s", b)
	}
}
