// Package authz decides who may call what on the daemons' control APIs
// (the controller's ControllerService and LeaseService, the data plane's
// DataplaneService), and audits what operators change.
//
// Who is calling (a Peer) is settled when the connection is made:
//
//   - mutual TLS: the client certificate's role, a URI SAN
//     fourover6://role/ROLE (RoleURI, RoleOf). A certificate with no role,
//     an unknown one, or several different ones has RoleNone: no access.
//   - a unix socket without TLS: the peer's credentials (SO_PEERCRED, and
//     its supplementary groups, SO_PEERGROUPS). Root, the daemon's own user,
//     and members of the socket file's group are operators; anyone else who
//     manages to connect (the socket is mode 0660) is a viewer.
//   - loopback TCP without TLS: the user owning the peer's socket, asked of
//     the kernel (sock_diag). Root and the daemon's own user are operators,
//     anyone else is a viewer, and so is a peer whose owner cannot be
//     found. (The daemons refuse plaintext TCP off loopback.)
//
// What a role may call is the method table (Rules): every method of every
// service a daemon serves has a Class, and a Guard (gRPC interceptors)
// enforces it, answering PERMISSION_DENIED with a message naming the role
// the caller has and the one it needs. Calls of class Change are audited: a
// log line with who, what and the result, and a counter.
package authz

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a caller is allowed to be. The zero value is RoleNone.
type Role uint8

// The roles. Their names are part of the certificate encoding and of the
// logs: never rename one.
const (
	// RoleNone may call nothing: a certificate without a (known) role.
	RoleNone Role = iota
	// RoleViewer reads: the List/Get/Watch calls of the operators' APIs.
	RoleViewer
	// RoleDataplane is a data plane: the controller's LeaseService, and
	// the few facts (status, version, health) it needs to find the leader.
	RoleDataplane
	// RoleOperator may call everything.
	RoleOperator
)

var roleNames = [...]string{RoleNone: "none", RoleViewer: "viewer", RoleDataplane: "dataplane", RoleOperator: "operator"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Roles are the roles a certificate can carry, in the order help texts
// list them.
var Roles = []Role{RoleDataplane, RoleOperator, RoleViewer}

// ParseRole accepts a role's name: dataplane, operator or viewer.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if s == r.String() {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q: want one of %s", s, roleList())
}

func roleList() string {
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = r.String()
	}
	return strings.Join(names, ", ")
}

// The role URI SAN: fourover6://role/NAME.
const (
	URIScheme = "fourover6"
	URIHost   = "role"
)

// RoleURI is the URI SAN that gives a certificate role r.
func RoleURI(r Role) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: URIHost, Path: "/" + r.String()}
}

// RoleOf reads the role of a verified client certificate: its one
// fourover6://role/NAME URI SAN. Other URIs are ignored (a certificate may
// serve other systems too); no role URI, an unknown name, or two different
// roles give RoleNone, as a certificate that means two things means
// nothing certain.
func RoleOf(cert *x509.Certificate) Role {
	if cert == nil {
		return RoleNone
	}
	found := RoleNone
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme || u.Host != URIHost {
			continue
		}
		r, err := ParseRole(strings.TrimPrefix(u.Path, "/"))
		if err != nil || (found != RoleNone && found != r) {
			return RoleNone
		}
		found = r
	}
	return found
}
