package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/server"
	"github.com/fourover6/fourover6/dataplane/wire"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
	"github.com/fourover6/fourover6/test/netnstest"
)

// failAfter turns a hang into a failure; no assertion depends on timing.
const failAfter = 30 * time.Second

// lockedBuffer collects output written by the command's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	// Should a bad value slip through validation, the data plane would wait
	// for a controller that is not there (and fail with exit 1 when the
	// context ends) rather than touch anything of the host's.
	safe := []string{"--controller", "unix://" + filepath.Join(dir, "none.sock"), "--api", "unix://" + filepath.Join(dir, "api.sock")}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--mtu", "5"}, "--mtu"},
		{[]string{"--mtu", "9000"}, "--mtu"},
		{[]string{"--mtu", "lots"}, "--mtu"},
		{[]string{"--keepalive-timeout", "1s", "--keepalive-interval", "2s"}, "--keepalive-timeout"},
		{[]string{"--keepalive-timeout", "2s", "--keepalive-interval", "2s"}, "--keepalive-interval"},
		{[]string{"--keepalive-interval", "0s"}, "--keepalive-interval"},
		{[]string{"--keepalive-interval", "soon"}, "--keepalive-interval"},
		{[]string{"--controller", "http://x"}, "--controller"},
		{[]string{"--controller", ""}, "--controller"},
		{[]string{"--controller", "[fd00:46::2]:7000"}, "without mutual TLS"},
		{[]string{"--controller", "unix:///run/x.sock,192.0.2.1:7000"}, "--controller 192.0.2.1:7000 is off this host"},
		{[]string{"--api", "ftp://x"}, "--api"},
		{[]string{"--listen", "5678"}, "--listen"},
		{[]string{"--tun", ""}, "--tun"},
		{[]string{"--tun", "a-name-much-too-long"}, "--tun"},
		{[]string{"--tun-backend", "carrier-pigeon"}, "--tun-backend"},
		{[]string{"--id", " "}, "--id"},
		{[]string{"--write-timeout", "0s"}, "--write-timeout"},
		{[]string{"--report-interval", "-1s"}, "--report-interval"},
		{[]string{"--allocate-timeout", "0s"}, "--allocate-timeout"},
		{[]string{"--send-queue", "0"}, "--send-queue"},
		{[]string{"--send-queue-bytes", "100"}, "--send-queue-bytes"},
		{[]string{"--send-queue-delay", "0s"}, "--send-queue-delay"},
		{[]string{"--nice", "-21"}, "--nice -21: want -20..19"},
		{[]string{"--rt-priority", "-1"}, "--rt-priority -1: want 1..99"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--bogus"}, "--bogus"},
		{[]string{"serve"}, `unexpected argument "serve"`},
		{[]string{"--allow", "10.1.2.3/8"}, "--allow: 10.1.2.3/8 has bits set beyond its /8: did you mean 10.0.0.0/8?"},
		{[]string{"--deny", "2001:db8::/32"}, "--deny: 2001:db8::/32 is IPv6"},
		{[]string{"--deny", "198.51.100.0/24,"}, "--deny: empty prefix (a stray comma?)"},
		{[]string{"--deny", "metadata"}, `--deny: "metadata" is neither a prefix nor an address`},
		{[]string{"--allow", "198.51.100.0/24", "--deny", "203.0.113.0/24,198.51.100.0/24"}, "--allow and --deny: 198.51.100.0/24 is both allowed and denied"},
		{[]string{"--allow-client-to-client=maybe"}, "--allow-client-to-client"},
		{[]string{"--bgp-peer", "198.51.100.2@65001"}, "--bgp-peer needs --bgp-asn"},
		{[]string{"--bgp-aggregate"}, "--bgp-aggregate needs --bgp-asn"},
		{[]string{"--bgp-announce-pool"}, "--bgp-aggregate needs --bgp-asn"},
		{[]string{"--bgp-listen-port", "179"}, "--bgp-listen-port needs --bgp-asn"},
		{[]string{"--bgp-asn", "65000"}, "--bgp-asn needs at least one --bgp-peer"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2"}, "--bgp-peer: BGP peer \"198.51.100.2\": want ADDR[:PORT]@ASN"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@0"}, "ASN 0 is reserved"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "fe80::1@65001"}, "link-local peers are not supported"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001,198.51.100.2:1179@65002"}, "given twice"},
		{[]string{"--bgp-asn", "23456", "--bgp-peer", "198.51.100.2@65001"}, "local ASN 23456 is reserved"},
		{[]string{"--bgp-asn", "-1"}, "--bgp-asn"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-router-id", "2001:db8::1"}, "--bgp-router-id \"2001:db8::1\": want an IPv4 address"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-router-id", "0.0.0.0"}, "BGP router id 0.0.0.0"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-next-hop", "here"}, "--bgp-next-hop \"here\""},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-next-hop", "127.0.0.1"}, "BGP next hop 127.0.0.1"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-communities", "65000:100,70000:1"}, "--bgp-communities: BGP community \"70000:1\""},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-hold-time", "2s"}, "--bgp-hold-time 2s: want 3s to 65535s"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-hold-time", "3500ms"}, "--bgp-hold-time 3.5s: want whole seconds"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-graceful-restart", "2h"}, "--bgp-graceful-restart 2h0m0s: at most 4095s"},
		{[]string{"--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-connect-retry", "0s"}, "--bgp-connect-retry 0s: want 1s or more"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(t.Context(), failAfter)
		var out, errb lockedBuffer
		code := run(ctx, append(append([]string{}, safe...), c.args...), &out, &errb)
		cancel()
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, code, exitUsage, errb.String())
		}
		if !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: stderr %q does not mention %q", c.args, errb.String(), c.want)
		}
	}
}

// The BGP flags pass --check-config and show in --print-config, from the
// command line and from a config file; the defaults hold.
func TestBGPConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "dp.yaml")
	if err := os.WriteFile(file, []byte("bgp-asn: 65000\nbgp-peer: [198.51.100.2@65001, \"[2001:db8::2]:1179@65002\"]\nbgp-communities: [65000:100, no-export]\nbgp-aggregate: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--controller", "unix://" + filepath.Join(dir, "none.sock"), "--api", "unix://" + filepath.Join(dir, "api.sock"),
		"--bgp-router-id", "192.0.2.7"}
	var out, errb lockedBuffer
	if code := run(t.Context(), append(base, "--config", file, "--check-config"), &out, &errb); code != exitOK || out.String() != "" {
		t.Fatalf("--check-config: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	out.b.Reset()
	if code := run(t.Context(), append(base, "--config", file, "--print-config", "--bgp-hold-time", "9s"), &out, &errb); code != exitOK {
		t.Fatalf("--print-config: exit %d, stderr %q", code, errb.String())
	}
	for _, want := range []string{"bgp-asn: 65000", "198.51.100.2@65001", "[2001:db8::2]:1179@65002", "bgp-router-id: 192.0.2.7",
		"bgp-hold-time: 9s", "bgp-graceful-restart: 30s", "bgp-connect-retry: 5s", "bgp-aggregate: true", "bgp-listen-port: 0", "no-export"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out.String())
		}
	}
	var o options
	cmd := newCommand(&o)
	if err := cmd.ParseFlags(append(base, "--bgp-asn", "65000", "--bgp-peer", "198.51.100.2@65001", "--bgp-hold-time", "0")); err != nil {
		t.Fatal(err)
	}
	cfg, on, err := o.bgp.config()
	if err != nil || !on {
		t.Fatalf("config: %v %v", on, err)
	}
	if cfg.HoldTime >= 0 || cfg.RestartTime != 30*time.Second || len(cfg.Peers) != 1 || cfg.Peers[0].ASN != 65001 || cfg.RouterID != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("config %+v: want no hold time (negative), graceful restart 30s, one peer", cfg)
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out, errb lockedBuffer
	if code := run(t.Context(), []string{"--help"}, &out, &errb); code != exitOK {
		t.Fatalf("--help: exit %d (stderr %q)", code, errb.String())
	}
	for _, flag := range []string{"--controller", "--listen", "--tun", "--api", "--keepalive-interval", "--keepalive-timeout", "--mtu"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
	out.b.Reset()
	if code := run(t.Context(), []string{"--version"}, &out, &errb); code != exitOK || strings.TrimSpace(out.String()) == "" {
		t.Errorf("--version: exit %d, output %q", code, out.String())
	}
}

// startController serves a real controller on a unix socket. Unix sockets
// live in the file system, not in a network namespace: the data plane
// reaches it from the test namespace.
func startController(t *testing.T) (string, *controller.Controller) {
	t.Helper()
	ctl, err := controller.New(controller.Config{Pool: pool.Config{Prefix: pool.DefaultPrefix}, DNS: [3]netip.Addr{
		netip.MustParseAddr("202.38.120.242"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("202.106.0.20"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "controller.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(server.Options(nil)...)
	server.Register(gs, ctl)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return sock, ctl
}

// TestServeInNamespace runs the whole command against an in-process
// controller. run creates the TUN and the client listener in the network
// namespace of the thread that calls it, so it runs on a goroutine locked
// into a fresh namespace; it stops when the context is cancelled.
func TestServeInNamespace(t *testing.T) {
	ctlSock, ctl := startController(t)
	dir := t.TempDir()
	apiSock := filepath.Join(dir, "run", "dataplane.sock") // the directory is created by the command

	// A fresh namespace with loopback up, so clients can connect to [::1].
	var setupErr error
	ns := netnstest.Do(t, func(netns.NsHandle) {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		setupErr = err
	})
	if setupErr != nil {
		t.Fatalf("loopback up: %v", setupErr)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr lockedBuffer
	exited := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			stderr.Write([]byte("test: " + err.Error()))
			exited <- -1
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			stderr.Write([]byte("test: " + err.Error()))
			exited <- -1
			return
		}
		code := run(ctx, []string{
			"--id", "dp-ns", "--controller", "unix://" + ctlSock, "--listen", "[::1]:0",
			"--api", "unix://" + apiSock, "--log-level", "debug",
		}, &stdout, &stderr)
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} // else the thread dies with the goroutine
		exited <- code
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-exited
		}
	}()

	// Wait for the API to answer.
	cc, err := grpc.NewClient("unix://"+apiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	dapi := dpv1.NewDataplaneServiceClient(cc)
	var st *dpv1.Status
	deadline := time.Now().Add(failAfter)
	for st == nil {
		select {
		case code := <-exited:
			stopped = true
			t.Fatalf("run exited with %d before its API answered; stderr:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("API never answered; stderr:\n%s", stderr.String())
		}
		cctx, ccancel := context.WithTimeout(t.Context(), time.Second)
		resp, err := dapi.GetStatus(cctx, &dpv1.GetStatusRequest{})
		ccancel()
		// The API answers from the start; the gateway comes with the
		// registration.
		if err == nil && resp.GetStatus().GetGateway() != "" {
			st = resp.GetStatus()
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if st.GetDataplaneId() != "dp-ns" || st.GetTun() != "4o6" || st.GetMtu() != 1500 ||
		st.GetGateway() != "13.8.0.1" || st.GetPool() != "13.8.0.0/24" || !st.GetControllerConnected() ||
		st.GetController() != "unix://"+ctlSock || st.GetKeepaliveIntervalMs() != 20000 || st.GetKeepaliveTimeoutMs() != 60000 {
		t.Errorf("status = %v", st)
	}
	if fi, err := os.Stat(apiSock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("API socket: %v, %v; want mode 0660", fi, err)
	}

	// The TUN, in the namespace, as the controller's pool says; and a
	// client there gets its 101 from the real controller.
	var (
		mtu     int
		up      bool
		addrs   []string
		nsErr   error
		conn    net.Conn
		dialErr error
	)
	netnstest.In(t, ns, func() {
		link, err := netlink.LinkByName("4o6")
		if err != nil {
			nsErr = err
			return
		}
		mtu, up = link.Attrs().MTU, link.Attrs().Flags&net.FlagUp != 0
		as, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			nsErr = err
			return
		}
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
		conn, dialErr = net.Dial("tcp", st.GetClientListen())
	})
	if nsErr != nil {
		t.Fatalf("TUN 4o6 in the namespace: %v", nsErr)
	}
	if mtu != 1500 || !up || len(addrs) != 1 || addrs[0] != "13.8.0.1/24" {
		t.Errorf("TUN 4o6: mtu %d up %v addresses %v; want 1500, up, [13.8.0.1/24]", mtu, up, addrs)
	}
	if dialErr != nil {
		t.Fatalf("dial %s in the namespace: %v", st.GetClientListen(), dialErr)
	}
	defer conn.Close()
	if _, err := conn.Write(wire.AddrRequest[:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(failAfter))
	m, err := wire.NewDecoder(conn, 0).Next()
	if err != nil {
		t.Fatalf("reading the 101: %v", err)
	}
	if want := "13.8.0.2 0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20 "; m.Type != wire.TypeAddrResponse || string(m.Data) != want {
		t.Fatalf("got %v %q, want 101 %q", m.Type, m.Data, want)
	}
	rows, err := ctl.Clients(t.Context(), controller.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Addr != netip.MustParseAddr("13.8.0.2") || rows[0].DataplaneID != "dp-ns" ||
		rows[0].ClientIPv6 != netip.IPv6Loopback() {
		t.Errorf("controller's client table = %+v, want 13.8.0.2 for ::1 on dp-ns", rows)
	}

	// Stop: exit 0, the lease given back, the API socket and the TUN gone.
	cancel()
	select {
	case code := <-exited:
		stopped = true
		if code != exitOK {
			t.Errorf("run returned %d after cancel, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(failAfter):
		t.Fatalf("run did not return after cancel; stderr:\n%s", stderr.String())
	}
	if _, err := os.Stat(apiSock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("API socket after exit: %v, want it removed", err)
	}
	if rows, err := ctl.Clients(t.Context(), controller.Filter{}); err != nil || len(rows) != 0 {
		t.Errorf("controller's client table after exit = %+v, %v; want the lease released", rows, err)
	}
	var linkErr error
	netnstest.In(t, ns, func() { _, linkErr = netlink.LinkByName("4o6") })
	if linkErr == nil {
		t.Error("TUN 4o6 still exists in the namespace after exit")
	}
	if !strings.Contains(stderr.String(), "data plane started") {
		t.Errorf("no start line in the log:\n%s", stderr.String())
	}
}
