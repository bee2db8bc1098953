package authz

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// How a peer was identified.
const (
	ViaTLS      = "tls"      // its verified client certificate
	ViaUnix     = "unix"     // SO_PEERCRED on a unix socket
	ViaLoopback = "loopback" // the owner of its loopback TCP socket
)

// Peer is who is calling: the role it was given and what it was given it
// for. A Peer with an empty Via was not identified and has RoleNone.
type Peer struct {
	Role Role
	Via  string
	Addr string // the peer's address (a unix socket's is the socket's path)
	// Subject is the verified client certificate's subject (TLS only).
	Subject string
	// UID, GID and PID come from SO_PEERCRED (unix); a loopback peer has
	// only a UID. Unknown ones are -1.
	UID, GID, PID int
	// Why tells why the role is not a higher one, for the message of a
	// denied call (e.g. "uid 1000 is not root ... nor in group 4242").
	Why string
}

// nobody is a Peer whose credentials are unknown.
func nobody(via, addr, why string) Peer {
	return Peer{Via: via, Addr: addr, UID: -1, GID: -1, PID: -1, Why: why}
}

// describe names the peer in a denial message.
func (p Peer) describe() string {
	switch p.Via {
	case ViaTLS:
		return fmt.Sprintf("certificate %q", p.Subject)
	case ViaUnix:
		if p.UID < 0 {
			return "unix socket peer of unknown credentials"
		}
		return fmt.Sprintf("uid %d, gid %d, pid %d on the unix socket", p.UID, p.GID, p.PID)
	case ViaLoopback:
		if p.UID < 0 {
			return fmt.Sprintf("loopback peer %s of unknown owner", p.Addr)
		}
		return fmt.Sprintf("uid %d on loopback %s", p.UID, p.Addr)
	}
	return "unidentified peer " + p.Addr
}

// LogValue is the "who" of the audit lines: role, how it was identified,
// and the certificate subject or the process credentials.
func (p Peer) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("role", p.Role.String()), slog.String("via", p.Via)}
	if p.Subject != "" {
		attrs = append(attrs, slog.String("subject", p.Subject))
	}
	for _, id := range []struct {
		k string
		v int
	}{{"uid", p.UID}, {"gid", p.GID}, {"pid", p.PID}} {
		if id.v >= 0 && p.Via != ViaTLS && p.Via != "" {
			attrs = append(attrs, slog.Int(id.k, id.v))
		}
	}
	if p.Addr != "" {
		attrs = append(attrs, slog.String("addr", p.Addr))
	}
	return slog.GroupValue(attrs...)
}

// PeerFrom is the caller of the call whose context ctx is.
func PeerFrom(ctx context.Context) Peer {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nobody("", "", "no peer in the call's context")
	}
	addr := ""
	if pr.Addr != nil {
		addr = pr.Addr.String()
	}
	switch ai := pr.AuthInfo.(type) {
	case credentials.TLSInfo:
		var cert *x509.Certificate
		if len(ai.State.VerifiedChains) > 0 && len(ai.State.VerifiedChains[0]) > 0 {
			cert = ai.State.VerifiedChains[0][0]
		}
		if cert == nil {
			// The servers require and verify client certificates; this
			// is a server configured otherwise.
			return nobody(ViaTLS, addr, "no verified client certificate")
		}
		p := Peer{Via: ViaTLS, Addr: addr, Subject: cert.Subject.String(), UID: -1, GID: -1, PID: -1, Role: RoleOf(cert)}
		if p.Role == RoleNone {
			p.Why = fmt.Sprintf("its certificate carries no single %s://%s/ROLE URI SAN (issue one with 4over6ctl pki issue)", URIScheme, URIHost)
		}
		return p
	case localInfo:
		return ai.peer
	}
	return nobody("", addr, "the connection has neither TLS nor local credentials")
}

// LocalCredentials are the gRPC transport credentials of a server without
// TLS (on a unix socket or loopback): plaintext, like insecure credentials,
// but each connection learns who is on the other end (see the package
// documentation). grpc's own credentials/local does not read SO_PEERCRED,
// hence these.
func LocalCredentials() credentials.TransportCredentials { return localCreds{} }

type localCreds struct{}

type localInfo struct {
	credentials.CommonAuthInfo
	peer Peer
}

func (localInfo) AuthType() string { return "local" }

func (localCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, localInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (localCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	var p Peer
	switch cc := c.(type) {
	case *net.UnixConn:
		p = unixPeer(cc)
	case *net.TCPConn:
		p = loopbackPeer(cc)
	default:
		p = nobody("", c.RemoteAddr().String(), fmt.Sprintf("a %T connection has no local credentials", c))
	}
	return c, localInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, peer: p}, nil
}

func (localCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "local"}
}
func (localCreds) Clone() credentials.TransportCredentials { return localCreds{} }

func (localCreds) OverrideServerName(string) error { return nil }

// unixPeer reads the credentials of the process at the other end of c and
// applies the unix socket rule.
func unixPeer(c *net.UnixConn) Peer {
	path := c.LocalAddr().String()
	raw, err := c.SyscallConn()
	if err != nil {
		return nobody(ViaUnix, path, err.Error())
	}
	var cred *unix.Ucred
	var groups []uint32
	var credErr, groupErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			groups, groupErr = peerGroups(int(fd))
		}
	}); err != nil {
		credErr = err
	}
	if credErr != nil {
		return nobody(ViaUnix, path, "SO_PEERCRED: "+credErr.Error())
	}
	p := Peer{Via: ViaUnix, Addr: path, UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	sock := socketGroup(path)
	if groupErr != nil {
		groups = nil // the primary group still counts
	}
	p.Role, p.Why = unixRole(cred.Uid, cred.Gid, groups, uint32(os.Geteuid()), sock)
	if groupErr != nil && p.Role != RoleOperator {
		p.Why += " (its supplementary groups are unknown: SO_PEERGROUPS: " + groupErr.Error() + ")"
	}
	return p
}

// socketGroup is the group owning the socket file at path, or -1.
func socketGroup(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int64(st.Gid)
}

// unixRole is the unix socket rule: root, the daemon's own user (self) and
// members of the socket's group (sockGID, -1 when unknown) are operators;
// anyone else is a viewer. why says what the peer is not, for a viewer.
func unixRole(uid, gid uint32, groups []uint32, self uint32, sockGID int64) (Role, string) {
	if uid == 0 || uid == self {
		return RoleOperator, ""
	}
	if sockGID >= 0 && (int64(gid) == sockGID || slices.Contains(groups, uint32(sockGID))) {
		return RoleOperator, ""
	}
	group := "the socket's group is unknown"
	if sockGID >= 0 {
		group = "nor in the socket's group " + strconv.FormatInt(sockGID, 10)
	}
	return RoleViewer, fmt.Sprintf("uid %d is not root, not the daemon's uid %d, %s", uid, self, group)
}

// peerGroups reads SO_PEERGROUPS: the supplementary groups the peer had
// when it connected (Linux 4.13+). golang.org/x/sys has no wrapper for
// it, so this calls getsockopt itself.
func peerGroups(fd int) ([]uint32, error) {
	n := 32
	for range 4 {
		buf := make([]uint32, n)
		size := uint32(n * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch e {
		case 0:
			return buf[:size/4], nil
		case unix.ERANGE: // size now says how much is needed
			n = int(size/4) + 1
			continue
		}
		return nil, e
	}
	return nil, unix.ERANGE
}

// loopbackPeer asks the kernel (sock_diag) who owns the peer's end of a
// loopback TCP connection.
func loopbackPeer(c *net.TCPConn) Peer {
	remote, _ := c.RemoteAddr().(*net.TCPAddr)
	local, _ := c.LocalAddr().(*net.TCPAddr)
	if remote == nil || local == nil {
		return nobody(ViaLoopback, c.RemoteAddr().String(), "no TCP addresses")
	}
	if !remote.IP.IsLoopback() {
		// The daemons refuse plaintext TCP off loopback; a listener on a
		// loopback address only accepts from it. Nothing to trust here.
		return nobody("", remote.String(), "plaintext TCP from off this host")
	}
	p := nobody(ViaLoopback, remote.String(), "")
	s, err := netlink.SocketGet(remote, local)
	if err != nil {
		p.Role = RoleViewer
		p.Why = "the owner of its socket is unknown (sock_diag: " + err.Error() + ")"
		return p
	}
	p.UID = int(s.UID)
	self := uint32(os.Geteuid())
	if s.UID == 0 || s.UID == self {
		p.Role = RoleOperator
		return p
	}
	p.Role = RoleViewer
	p.Why = fmt.Sprintf("uid %d is not root nor the daemon's uid %d (only the unix socket's group or TLS gives more)", s.UID, self)
	return p
}
