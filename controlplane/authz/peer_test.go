package authz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/authz"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	"github.com/fourover6/fourover6/test/netnstest"
)

// childEnv makes the test binary a client that dials the target it names
// (see childCalls), for tests that need a caller with other credentials.
const childEnv = "AUTHZ_TEST_CHILD_TARGET"

func TestMain(m *testing.M) {
	if target := os.Getenv(childEnv); target != "" {
		os.Exit(childCalls(target, os.Stdout))
	}
	os.Exit(m.Run())
}

// childAnswer is what the child got: the code of a change, the code of a
// read, and the denial's message.
type childAnswer struct {
	Change, Read string
	Message      string
}

func childCalls(target string, w io.Writer) int {
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctl := cpv1.NewControllerServiceClient(cc)
	_, cerr := ctl.SetDNS(ctx, &cpv1.SetDNSRequest{Servers: []string{"192.0.2.53"}})
	_, rerr := ctl.GetPool(ctx, &cpv1.GetPoolRequest{})
	json.NewEncoder(w).Encode(childAnswer{Change: status.Code(cerr).String(), Read: status.Code(rerr).String(),
		Message: status.Convert(cerr).Message()})
	return 0
}

// openDir is a temporary directory other users can enter.
func openDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// runAs runs this test binary as a client of target under cred.
func runAs(t *testing.T, target string, cred *syscall.Credential) childAnswer {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives where nobody may read it: copy it out.
	bin := filepath.Join(openDir(t), "authz.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{childEnv + "=" + target}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child as uid %d: %v", cred.Uid, err)
	}
	var a childAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	return a
}

// TestUnixSocketRule: on a unix socket the peer's credentials decide; root
// (this test) is an operator, a uid outside the socket's group is a viewer,
// a member of the group (primary or supplementary) an operator.
func TestUnixSocketRule(t *testing.T) {
	netnstest.RequireRoot(t)
	dir := openDir(t)
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// 0666: "anyone else who manages to connect"; the daemons make it 0660.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, ln, grpc.Creds(authz.LocalCredentials()), controllerDaemon)
	target := "unix://" + sock

	var root strings.Builder
	childCalls(target, &root)
	if !strings.Contains(root.String(), `"Change":"OK"`) {
		t.Errorf("root: %s", root.String())
	}

	const group = 4242
	if err := os.Chown(sock, 0, group); err != nil {
		t.Fatal(err)
	}
	nobody := runAs(t, target, &syscall.Credential{Uid: 65534, Gid: 65534})
	if nobody.Change != "PermissionDenied" || nobody.Read != "Unimplemented" {
		t.Errorf("nobody: %+v, want the change refused and the read let through", nobody)
	}
	for _, w := range []string{"needs the operator role", "uid 65534, gid 65534, pid", "has the viewer role", "group 4242"} {
		if !strings.Contains(nobody.Message, w) {
			t.Errorf("denial %q lacks %q", nobody.Message, w)
		}
	}
	if a := runAs(t, target, &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{100, group}}); a.Change != "OK" {
		t.Errorf("a supplementary member of the socket's group: %+v", a)
	}
	if a := runAs(t, target, &syscall.Credential{Uid: 65534, Gid: group}); a.Change != "OK" {
		t.Errorf("a primary member of the socket's group: %+v", a)
	}

	// The audit names the unix peer.
	var sawNobody bool
	for _, a := range s.logs.lines(t, "audit") {
		who := a["who"].(map[string]any)
		if who["uid"] == float64(65534) && who["gid"] == float64(65534) && who["role"] == "viewer" && a["result"] == "permission_denied" {
			sawNobody = who["pid"].(float64) > 0 && who["via"] == "unix"
		}
	}
	if !sawNobody {
		t.Errorf("no audit line for nobody's refused SetDNS:\n%s", s.logs.b.String())
	}
}

// TestLoopbackRule: plaintext loopback TCP asks the kernel who owns the
// peer's socket: root is an operator, nobody a viewer.
func TestLoopbackRule(t *testing.T) {
	netnstest.RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, ln, grpc.Creds(authz.LocalCredentials()), controllerDaemon)
	target := "passthrough:///" + ln.Addr().String()
	var root strings.Builder
	childCalls(target, &root)
	if !strings.Contains(root.String(), `"Change":"OK"`) {
		t.Errorf("root over loopback: %s", root.String())
	}
	a := runAs(t, target, &syscall.Credential{Uid: 65534, Gid: 65534})
	if a.Change != "PermissionDenied" || a.Read != "Unimplemented" || !strings.Contains(a.Message, "uid 65534 on loopback") {
		t.Errorf("nobody over loopback: %+v", a)
	}
}
