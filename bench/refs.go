package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// The reference tunnels: other user-space tunnels over the same IPv6 veth,
// set up by the harness in the same two namespaces, so our numbers stand
// next to what comparable software achieves on this machine in this run.
//
//   - wireguard-go: user-space WireGuard (Go, like ours; TUN offloads and
//     UDP GSO/GRO on by default), built from the Go module proxy into -cache
//     at the version the product's go.mod already uses, configured with
//     Debian's wg (wireguard-tools). It encrypts; ours does not.
//   - OpenVPN 2.6 (Debian's openvpn) over TCP, point to point with static
//     addresses and no crypto at all (no TLS, --cipher/--data-ciphers/--auth
//     none), --tcp-nodelay: the closest classic analogue of an
//     unencrypted IP-over-TCP tunnel, like ours.
//
// Addresses are TEST-NET-2 (198.51.100.0/24): nothing outside the
// namespaces has them. A tunnel whose tools are missing or that will not
// start is skipped with its reason (skipError), not counted as a failure.
const (
	wgServerV4   = "198.51.100.1"
	wgClientV4   = "198.51.100.2"
	wgPort       = "51820"
	ovpnServerV4 = "198.51.100.9"
	ovpnClientV4 = "198.51.100.10"
	ovpnPort     = "1194"
	ovpnServerIf = "fo6ovs"
	ovpnClientIf = "fo6ovc"

	wireguardModule = "golang.zx2c4.com/wireguard"
	// wgSocketDir is where wireguard-go puts its UAPI socket and wg looks
	// for it; it is not per namespace, so interface names carry our pid.
	wgSocketDir = "/var/run/wireguard"
)

// skipError says why a measurement was left out on purpose.
type skipError struct{ reason string }

func (e *skipError) Error() string { return "skipped: " + e.reason }

func skipf(format string, args ...any) error { return &skipError{reason: fmt.Sprintf(format, args...)} }

// refPath is the path (row) name of a reference tunnel.
func refPath(ref string) string {
	if ref == refOpenVPN {
		return "openvpn-tcp"
	}
	return ref
}

// refServerV4 is the server-side tunnel address iperf3 and ping target.
func refServerV4(ref string) string {
	if ref == refOpenVPN {
		return ovpnServerV4
	}
	return wgServerV4
}

func (l *lab) setupRef(ctx context.Context, p path, rep *Report) (func(), error) {
	switch p.ref {
	case refWireguardGo:
		return l.setupWireguard(ctx, rep)
	case refOpenVPN:
		return l.setupOpenVPN(ctx, rep)
	}
	return nil, fmt.Errorf("unknown reference tunnel %q", p.ref)
}

// setupWireguard runs wireguard-go in both namespaces (in the foreground,
// so it stays our child) and configures one peer each way with wg:
//
//	server: wireguard-go -f fo6wgs<pid>
//	        wg set fo6wgs<pid> private-key S listen-port 51820 peer <C pub> allowed-ips 198.51.100.2/32
//	        ip addr add 198.51.100.1/30 dev fo6wgs<pid>; ip link set fo6wgs<pid> up
//	client: wireguard-go -f fo6wgc<pid>
//	        wg set fo6wgc<pid> private-key C peer <S pub> endpoint [fd00:46::1]:51820 allowed-ips 198.51.100.1/32
//	        ip addr add 198.51.100.2/30 dev fo6wgc<pid>; ip link set fo6wgc<pid> up
//
// wireguard-go's own defaults otherwise: MTU 1420 (1500 - IPv6 - UDP -
// WireGuard), log level error.
func (l *lab) setupWireguard(ctx context.Context, rep *Report) (func(), error) {
	if _, err := exec.LookPath("wg"); err != nil {
		return nil, skipf("wg not installed (Debian package wireguard-tools): run test/deps.sh bench (make deps-bench)")
	}
	bin, version, err := wireguardGo(ctx, l.o)
	if err != nil {
		return nil, skipf("%v", err)
	}
	rep.Machine.WireguardGoVersion = version
	rep.Machine.WgToolsVersion = firstLine(ctx, "wg", "--version")

	pid := os.Getpid()
	srvIf, cliIf := fmt.Sprintf("fo6wgs%d", pid), fmt.Sprintf("fo6wgc%d", pid)
	var procs []*proc
	teardown := func() {
		for _, p := range procs {
			p.stop(5 * time.Second)
		}
		// A killed wireguard-go leaves its socket behind.
		os.Remove(filepath.Join(wgSocketDir, srvIf+".sock"))
		os.Remove(filepath.Join(wgSocketDir, cliIf+".sock"))
	}
	fail := func(err error) (func(), error) {
		teardown()
		return nil, skipf("wireguard-go %s would not start: %v", version, err)
	}
	keys := map[string]string{}
	for _, side := range []string{"server", "client"} {
		key, err := output(ctx, l.srv, 10*time.Second, "wg", "genkey")
		if err != nil {
			return fail(err)
		}
		file := filepath.Join(l.dir, "wg-"+side+".key")
		if err := os.WriteFile(file, []byte(key), 0o600); err != nil {
			return fail(err)
		}
		pub, err := outputStdin(ctx, key, "wg", "pubkey")
		if err != nil {
			return fail(err)
		}
		keys[side], keys[side+".pub"] = file, strings.TrimSpace(pub)
	}
	for _, side := range []struct {
		name, ifName string
		ns           *topo.NS
	}{{"server", srvIf, l.srv}, {"client", cliIf, l.cli}} {
		p, err := l.start(side.ns, "wireguard-go-"+side.name, "env", "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error", bin, "-f", side.ifName)
		if err != nil {
			return fail(err)
		}
		procs = append(procs, p)
		sock := filepath.Join(wgSocketDir, side.ifName+".sock")
		if err := waitFor(ctx, 20*time.Second, "the wireguard-go socket", func() bool { return fileExists(sock) || p.exited() }); err != nil || p.exited() {
			if err == nil {
				err = fmt.Errorf("exited")
			}
			return fail(p.failure(err))
		}
	}
	steps := [][]string{
		{"wg", "set", srvIf, "private-key", keys["server"], "listen-port", wgPort,
			"peer", keys["client.pub"], "allowed-ips", wgClientV4 + "/32"},
		{"ip", "addr", "add", wgServerV4 + "/30", "dev", srvIf},
		{"ip", "link", "set", srvIf, "up"},
	}
	for _, s := range steps {
		if err := l.srv.Exec(s...); err != nil {
			return fail(err)
		}
	}
	steps = [][]string{
		{"wg", "set", cliIf, "private-key", keys["client"],
			"peer", keys["server.pub"], "endpoint", "[" + serverV6 + "]:" + wgPort, "allowed-ips", wgServerV4 + "/32"},
		{"ip", "addr", "add", wgClientV4 + "/30", "dev", cliIf},
		{"ip", "link", "set", cliIf, "up"},
	}
	for _, s := range steps {
		if err := l.cli.Exec(s...); err != nil {
			return fail(err)
		}
	}
	if err := l.waitPing(ctx, wgServerV4, procs); err != nil {
		return fail(err)
	}
	return teardown, nil
}

// setupOpenVPN runs OpenVPN point to point over TCP, no crypto:
//
//	server: openvpn --dev fo6ovs --dev-type tun --proto tcp6-server --local fd00:46::1 --lport 1194
//	        --ifconfig 198.51.100.9 198.51.100.10 <common>
//	client: openvpn --dev fo6ovc --dev-type tun --proto tcp6-client --remote fd00:46::1 1194
//	        --connect-retry 1 1 --ifconfig 198.51.100.10 198.51.100.9 <common>
//	common: --cipher none --data-ciphers none --auth none --tcp-nodelay --disable-dco --verb 3
//
// Everything else is OpenVPN's default (tun-mtu 1500, OS socket buffers,
// no keepalive); no configuration file is read. OpenVPN 2.6 warns that it
// runs without TLS (2.7 will require it) and in clear text: both intended.
func (l *lab) setupOpenVPN(ctx context.Context, rep *Report) (func(), error) {
	bin, err := exec.LookPath("openvpn")
	if err != nil {
		return nil, skipf("openvpn not installed (Debian package openvpn): run test/deps.sh bench (make deps-bench)")
	}
	rep.Machine.OpenVPNVersion = firstLine(ctx, bin, "--version") // exits 1 after printing it
	common := []string{"--cipher", "none", "--data-ciphers", "none", "--auth", "none", "--tcp-nodelay", "--disable-dco", "--verb", "3"}
	var procs []*proc
	teardown := func() {
		for _, p := range procs {
			p.stop(5 * time.Second)
		}
	}
	fail := func(err error) (func(), error) {
		teardown()
		return nil, skipf("openvpn would not start: %v", err)
	}
	srv, err := l.start(l.srv, "openvpn-server", bin, append([]string{"--dev", ovpnServerIf, "--dev-type", "tun",
		"--proto", "tcp6-server", "--local", serverV6, "--lport", ovpnPort,
		"--ifconfig", ovpnServerV4, ovpnClientV4}, common...)...)
	if err != nil {
		return fail(err)
	}
	procs = append(procs, srv)
	// Not a probe connection: OpenVPN's TCP server takes the first one
	// as its peer.
	err = waitFor(ctx, 20*time.Second, "openvpn to listen", func() bool {
		out, _ := output(ctx, l.srv, 5*time.Second, "ss", "-Hltn", "sport = :"+ovpnPort)
		return strings.TrimSpace(out) != "" || srv.exited()
	})
	if err != nil || srv.exited() {
		if err == nil {
			err = fmt.Errorf("exited")
		}
		return fail(srv.failure(err))
	}
	cli, err := l.start(l.cli, "openvpn-client", bin, append([]string{"--dev", ovpnClientIf, "--dev-type", "tun",
		"--proto", "tcp6-client", "--remote", serverV6, ovpnPort, "--connect-retry", "1", "1",
		"--ifconfig", ovpnClientV4, ovpnServerV4}, common...)...)
	if err != nil {
		return fail(err)
	}
	procs = append(procs, cli)
	if err := l.waitPing(ctx, ovpnServerV4, procs); err != nil {
		return fail(err)
	}
	return teardown, nil
}

// waitPing waits until target answers a ping from the client namespace
// while every process of the tunnel keeps running.
func (l *lab) waitPing(ctx context.Context, target string, procs []*proc) error {
	var dead *proc
	err := waitFor(ctx, 20*time.Second, "a ping through the tunnel", func() bool {
		for _, p := range procs {
			if p.exited() {
				dead = p
				return true
			}
		}
		_, err := output(ctx, l.cli, 3*time.Second, "ping", "-n", "-c", "1", "-W", "1", target)
		return err == nil
	})
	if dead != nil {
		return dead.failure(fmt.Errorf("exited"))
	}
	if err != nil && len(procs) > 0 {
		return procs[len(procs)-1].failure(err)
	}
	return err
}

// wireguardGo returns the wireguard-go binary and its module version,
// building it on first use: `go install golang.zx2c4.com/wireguard@V` from
// the Go module proxy into -cache, V being the version the product's
// go.mod requires (the newest on the proxy if it requires none). The
// binary is kept there for later runs; its code is never part of this
// repository.
func wireguardGo(ctx context.Context, o *options) (bin, version string, err error) {
	version = goOutput(ctx, o.src, "list", "-m", "-f", "{{.Version}}", wireguardModule)
	if version == "" {
		version = goOutput(ctx, os.TempDir(), "list", "-m", "-f", "{{.Version}}", wireguardModule+"@latest")
	}
	if version == "" {
		return "", "", fmt.Errorf("cannot tell which %s version to build: the product's go.mod does not require it and the Go module proxy did not answer", wireguardModule)
	}
	dir := filepath.Join(o.cacheDir, "wireguard-go@"+version)
	bin = filepath.Join(dir, "wireguard-go")
	if fileExists(bin) {
		return bin, version, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", version, fmt.Errorf("cache for wireguard-go: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", version, err
	}
	defer os.RemoveAll(tmp)
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// Outside any module (Dir is the empty temporary directory), so only
	// wireguard's own go.mod decides its dependencies.
	cmd := exec.CommandContext(bctx, "go", "install", wireguardModule+"@"+version)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-trimpath", "GOWORK=off")
	cmd.SysProcAttr = procAttr()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", version, fmt.Errorf("building wireguard-go (go install %s@%s) failed: %v: %s", wireguardModule, version, err, oneLine(string(b)))
	}
	// Renamed into place: a concurrent run never sees half a binary.
	if err := os.Rename(filepath.Join(tmp, "wireguard"), bin); err != nil {
		return "", version, err
	}
	return bin, version, nil
}

// goOutput runs a go command and returns its trimmed output, or "".
func goOutput(ctx context.Context, dir string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// firstLine is the first line a command prints, whatever its exit status
// (openvpn --version exits 1).
func firstLine(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// outputStdin runs a short command on the host with stdin (wg pubkey
// reads the private key there; it touches no network state).
func outputStdin(ctx context.Context, stdin, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}
