package main

// Errors for people: gRPC's wrapping ("connection error: desc = ...",
// "transport: ...") and code names are left out, and the two mistakes an
// operator makes most (TLS on one side only, a socket they may not open)
// come with what to do.

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"

	"github.com/fourover6/fourover6/controlplane/endpoint"
)

const tlsFlagsHint = "--tls-cert, --tls-key and --tls-ca (or $FOUROVER6_TLS_CERT, $FOUROVER6_TLS_KEY and $FOUROVER6_TLS_CA)"

// cleanTransport strips gRPC's wrapping from a connection error's text:
// `connection error: desc = "transport: authentication handshake failed:
// x"` reads "authentication handshake failed: x".
func cleanTransport(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "connection error: desc = "); ok {
		if u, err := strconv.Unquote(rest); err == nil {
			rest = u
		}
		msg = rest
	}
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	return msg
}

// connectionHint explains a failed connection to ep, given the cleaned
// reason: what it means and what to try. "" when there is nothing to add.
func (a *app) connectionHint(ep endpoint.Endpoint, err error, reason string) string {
	tlsOn := a.tls.Set()
	switch {
	case ep.Network == "unix" && (errors.Is(err, syscall.EACCES) || strings.HasSuffix(reason, "permission denied")):
		return permissionHint(ep.Address)
	case strings.Contains(reason, "first record does not look like a TLS handshake"):
		return "the server does not speak TLS: drop " + tlsFlagsHint + " for it, or turn TLS on at the server"
	case strings.Contains(reason, "error reading server preface: EOF"),
		// A TLS server that reads our plaintext preface may reset rather
		// than close, depending on timing.
		strings.Contains(reason, "error reading server preface") && strings.Contains(reason, "connection reset by peer"),
		strings.Contains(reason, "connection closed before server preface received"):
		if tlsOn {
			return "the server closed the connection without a word: is it a fourover6 daemon at this address? is its TLS configured?"
		}
		return "the server closed the connection without a word: is it using TLS? try " + tlsFlagsHint
	case strings.Contains(reason, "certificate signed by unknown authority"):
		return "the server's certificate is not signed by --tls-ca " + a.tls.CA + ": give the CA that signed it (4over6ctl pki init)"
	case strings.Contains(reason, "certificate is valid for"), strings.Contains(reason, "doesn't contain any IP SANs"):
		return "the server's certificate does not name the address dialled: dial a name or address it was issued for (4over6ctl pki issue --dns/--ip)"
	case strings.Contains(reason, "bad certificate"), strings.Contains(reason, "certificate required"),
		strings.Contains(reason, "unknown certificate authority"), strings.Contains(reason, "expired certificate"):
		if !tlsOn {
			return "the server requires a client certificate: give " + tlsFlagsHint
		}
		return "the server refused this client certificate (--tls-cert " + a.tls.Cert + "): is it issued by the server's CA, with a role (4over6ctl pki issue), and not expired?"
	case strings.Contains(reason, "handshake"), strings.Contains(reason, "tls:"):
		if tlsOn {
			return "TLS failed: check " + tlsFlagsHint + " against the server's"
		}
		return "is the server using TLS? try " + tlsFlagsHint
	}
	return ""
}

// permissionHint is for a unix socket this user may not open.
func permissionHint(path string) string {
	group := ""
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			group = strconv.FormatUint(uint64(st.Gid), 10)
			if g, err := user.LookupGroupId(group); err == nil {
				group = g.Name
			}
		}
	}
	if group == "" {
		return "run as root, or as a member of the group that owns " + path
	}
	return fmt.Sprintf("run as root, or join the socket's group %s (usermod -aG %s USER, then log in again)", group, group)
}

// withHint adds a hint to a reason: "reason; hint".
func withHint(reason, hint string) string {
	if hint == "" {
		return reason
	}
	return reason + "; " + hint
}

// codeText is a gRPC code in words, for the rare answers no case of
// rpcError knows: never the code's name.
func codeText(c codes.Code) string {
	switch c {
	case codes.Unknown:
		return "failed"
	case codes.AlreadyExists:
		return "already exists"
	case codes.ResourceExhausted:
		return "limit reached"
	case codes.FailedPrecondition:
		return "refused"
	case codes.Aborted:
		return "aborted (try again)"
	case codes.OutOfRange:
		return "out of range"
	case codes.Internal:
		return "internal error"
	case codes.DataLoss:
		return "data lost"
	case codes.Unauthenticated:
		return "not authenticated"
	}
	return "error"
}
