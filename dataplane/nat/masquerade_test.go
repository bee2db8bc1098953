package nat_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane/nat"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/fourover6/fourover6/test/topo"
)

// TestMasqueradeEndToEnd builds
//
//	client ns                 NAT ns                           internet ns
//	13.8.0.2/24 ── veth ── 13.8.0.1/24 (tun4o6)
//	default via 13.8.0.1            203.0.113.1/24 (up0) ── veth ── 203.0.113.2/24
//	                                                                no route to 13.8.0.0/24
//
// and shows that a TCP connection from the pool address reaches the
// internet host only with NAT on, and that the internet host sees the NAT
// host's address.
func TestMasqueradeEndToEnd(t *testing.T) {
	netnstest.RequireRoot(t)
	mk := func(tag string) *topo.NS {
		ns, err := topo.NewNS(topo.UniqueName(tag))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Delete)
		return ns
	}
	client, natNS, inet := mk("nc"), mk("nn"), mk("ni")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// The client side's veth stands in for the data plane's TUN.
	must(topo.Veth(client, "eth0", natNS, "tun4o6"))
	must(topo.Veth(natNS, "up0", inet, "eth0"))
	must(client.AddAddr("eth0", "13.8.0.2/24"))
	must(client.Exec("ip", "route", "add", "default", "via", "13.8.0.1"))
	must(natNS.AddAddr("tun4o6", "13.8.0.1/24"))
	must(natNS.AddAddr("up0", "203.0.113.1/24"))
	must(inet.AddAddr("eth0", "203.0.113.2/24"))

	// The internet host answers each connection with the address it sees.
	ln, err := inet.Listen("tcp4", "203.0.113.2:0")
	must(err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s\n", ap.Addr())
			c.Close()
		}
	}()
	target := ln.Addr().String()

	seenFrom := func(timeout time.Duration) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := client.Dial(ctx, "tcp4", target)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	fwd := func() string {
		var v string
		must(natNS.Do(func() error {
			b, err := os.ReadFile(nat.IPForwardPath)
			v = strings.TrimSpace(string(b))
			return err
		}))
		return v
	}

	// Forwarding without NAT: the SYN gets there, the answer has no way
	// back to 13.8.0.2.
	must(natNS.Sysctl("net.ipv4.ip_forward", "1"))
	if from, err := seenFrom(time.Second); err == nil {
		t.Fatalf("connected without NAT (seen from %s): the internet host must have no route to the pool", from)
	}
	must(natNS.Sysctl("net.ipv4.ip_forward", "0"))

	var undo func() error
	must(natNS.Do(func() error {
		var err error
		undo, err = nat.Enable(nat.Config{Pool: netip.MustParsePrefix("13.8.0.0/24"), TUN: "tun4o6"})
		return err
	}))
	t.Cleanup(func() { undo() })
	if v := fwd(); v != "1" {
		t.Fatalf("ip_forward in the NAT namespace = %s", v)
	}
	for i := range 3 {
		from, err := seenFrom(10 * time.Second)
		if err != nil {
			t.Fatalf("connection %d through NAT: %v", i, err)
		}
		if from != "203.0.113.1" {
			t.Fatalf("the internet host saw %s, want the NAT host's 203.0.113.1", from)
		}
	}

	// Named uplink: the same through --nat-interface up0 ...
	must(undo())
	must(natNS.Do(func() error {
		var err error
		undo, err = nat.Enable(nat.Config{Pool: netip.MustParsePrefix("13.8.0.0/24"), TUN: "tun4o6", Interfaces: []string{"up0"}})
		return err
	}))
	if from, err := seenFrom(10 * time.Second); err != nil || from != "203.0.113.1" {
		t.Fatalf("through --nat-interface up0: %q, %v", from, err)
	}

	// ... and after undo everything is as before: no table, forwarding off,
	// no new connection gets through.
	must(undo())
	if v := fwd(); v != "0" {
		t.Errorf("ip_forward after undo = %s, want 0", v)
	}
	out, err := natNS.Output("cat", "/proc/net/dev")
	must(err)
	if !strings.Contains(out, "up0") {
		t.Fatalf("NAT namespace lost its uplink: %s", out)
	}
	if from, err := seenFrom(time.Second); err == nil {
		t.Errorf("connected after undo (seen from %s)", from)
	}
	var left []string
	must(natNS.Do(func() error {
		var err error
		left, err = tableNames()
		return err
	}))
	for _, name := range left {
		if name == nat.DefaultTable {
			t.Errorf("table ip %s left after undo", name)
		}
	}
}

// TestNeedsOnlyCapNetAdmin runs Enable and undo as an unprivileged user
// holding CAP_NET_ADMIN and nothing else, as the systemd unit runs the data
// plane: nftables and net.ipv4.ip_forward need no more.
func TestNeedsOnlyCapNetAdmin(t *testing.T) {
	if os.Getenv("FOUROVER6_NAT_HELPER") != "" {
		unprivilegedHelper(t)
		return
	}
	netnstest.RequireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	// A copy of this test binary that user nobody can run.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "nat.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	ns, err := topo.NewNS(topo.UniqueName("np"))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Delete()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, setpriv,
		"--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin",
		bin, "-test.run=^TestNeedsOnlyCapNetAdmin$", "-test.v")
	cmd.Env = append(os.Environ(), "FOUROVER6_NAT_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "helper: ok") {
		t.Fatalf("as nobody with CAP_NET_ADMIN: %v\n%s", err, out)
	}
}

func unprivilegedHelper(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Fatal("helper runs as root: setpriv did not drop privileges")
	}
	undo, err := nat.Enable(nat.Config{Pool: netip.MustParsePrefix("13.8.0.0/24"), TUN: "4o6"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(nat.IPForwardPath)
	if strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("ip_forward = %q", b)
	}
	names, err := tableNames()
	if err != nil || !slices.Contains(names, nat.DefaultTable) {
		t.Fatalf("tables %q, %v", names, err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(nat.IPForwardPath)
	if strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("ip_forward after undo = %q", b)
	}
	t.Log("helper: ok")
}
