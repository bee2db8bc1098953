package main

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, _, err := parseFlags([]string{"--server", "[fd00:46::1]:5678"}, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if c.server != "[fd00:46::1]:5678" || c.tunName != "4o6c" || c.tunBackend != "water" || c.mtu != 1500 ||
		c.keepDefaultRoute || c.pool.IsValid() || len(c.routes) != 0 || c.resolvConf != "" ||
		c.keepaliveInterval != 20*time.Second || c.keepaliveTimeout != 60*time.Second ||
		c.reconnectMin != time.Second || c.reconnectMax != 30*time.Second || c.once ||
		c.helloResend != helloResend {
		t.Errorf("defaults: %+v", c)
	}
}

func TestParseFlagsAll(t *testing.T) {
	dir := t.TempDir()
	args := []string{
		"--server", "vpn.example.org:5678", "--tun", "tun7", "--mtu", "2048", "--keep-default-route",
		"--pool", "13.8.0.9/24", "--route", "10.0.0.0/8,192.0.2.7", "--route", "198.51.100.0/24",
		"--route", "10.0.0.0/8", "--resolv-conf", filepath.Join(dir, "resolv.conf"),
		"--keepalive-interval", "200ms", "--keepalive-timeout", "1s",
		"--reconnect-min", "50ms", "--reconnect-max", "2s", "--once",
		"--log-level", "debug", "--log-format", "json", "--tun-backend", "water",
	}
	c, _, err := parseFlags(args, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
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
	if !c.keepDefaultRoute || !c.once || c.mtu != 2048 || c.tunName != "tun7" ||
		c.keepaliveInterval != 200*time.Millisecond || c.keepaliveTimeout != time.Second ||
		c.reconnectMin != 50*time.Millisecond || c.reconnectMax != 2*time.Second ||
		c.log.Level != "debug" || c.log.Format != "json" {
		t.Errorf("parsed: %+v", c)
	}
}

// TestParseFlagsErrors checks that each bad value is refused with a message
// naming its flag (main turns these into exit status 2).
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
		{append(ok, "--pool", "13.8.0.0/33"), "--pool"},
		{append(ok, "--pool", "fd00::/64"), "--pool"},
		{append(ok, "--pool", "0.0.0.0/0"), "--pool"},
		{append(ok, "--route", "10.0.0.0/8,bogus"), "-route"},
		{append(ok, "--route", "fd00::/8"), "-route"},
		{append(ok, "--resolv-conf", "/nonexistent-dir/resolv.conf"), "--resolv-conf"},
		{append(ok, "--keepalive-interval", "0s"), "--keepalive-interval"},
		{append(ok, "--keepalive-timeout", "-1s"), "--keepalive-timeout"},
		{append(ok, "--reconnect-min", "0s"), "--reconnect-min"},
		{append(ok, "--reconnect-min", "5s", "--reconnect-max", "1s"), "--reconnect-max"},
		{append(ok, "--log-level", "loud"), "--log-level"},
		{append(ok, "--log-format", "xml"), "--log-format"},
		{append(ok, "--no-such-flag"), "no-such-flag"},
	}
	for _, tc := range cases {
		var out bytes.Buffer
		_, _, err := parseFlags(slices.Clone(tc.args), &out)
		if err == nil {
			t.Errorf("%q: accepted", tc.args)
			continue
		}
		if !strings.Contains(out.String(), tc.flag) {
			t.Errorf("%q: message %q does not name %s", tc.args, out.String(), tc.flag)
		}
		if code := realMain(slices.Clone(tc.args), new(bytes.Buffer), new(bytes.Buffer)); code != 2 {
			t.Errorf("%q: exit status %d, want 2", tc.args, code)
		}
	}
}

func TestParseFlagsAccepts(t *testing.T) {
	for _, s := range []string{"[fd00:46::1]:5678", "[::1]:1", "vpn.example.org:5678", "[fe80::1%eth0]:5678", "localhost:65535"} {
		if _, _, err := parseFlags([]string{"--server", s}, new(bytes.Buffer)); err != nil {
			t.Errorf("--server %s: %v", s, err)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out bytes.Buffer
	if _, _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "--keep-default-route") {
		t.Errorf("usage lacks --keep-default-route:\n%s", out.String())
	}
	if code := realMain([]string{"--help"}, new(bytes.Buffer), new(bytes.Buffer)); code != 0 {
		t.Errorf("--help exit %d", code)
	}
	var stdout bytes.Buffer
	if code := realMain([]string{"--version"}, &stdout, new(bytes.Buffer)); code != 0 || !strings.HasPrefix(stdout.String(), "4over6-client ") {
		t.Errorf("--version: exit %d, %q", code, stdout.String())
	}
}
