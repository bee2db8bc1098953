// Package endpoint parses the daemons' gRPC addresses: "unix:///path" for a
// unix socket, "host:port" for TCP. It listens (creating the socket's
// directory, replacing a stale socket, mode 0660), builds gRPC targets, and
// dials an address itself to tell why nothing answers there.
//
// It is the one parser of these addresses for the daemons, 4over6ctl and
// the controller client (controlplane/ctlclient), so it lives where the
// data plane can import it too (cmd/internal cannot be imported from
// dataplane/ or controlplane/).
package endpoint

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Endpoint is a parsed address.
type Endpoint struct {
	Network string // "unix" or "tcp"
	Address string // socket path, or host:port
}

// Parse accepts "unix:///abs/path", "unix:/abs/path", "unix:relative" and
// "host:port" (IPv6 hosts in brackets).
func Parse(s string) (Endpoint, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Endpoint{}, errors.New("empty address: want unix:///path/to.sock or host:port")
	}
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		path := strings.TrimPrefix(rest, "//")
		if path == "" {
			return Endpoint{}, fmt.Errorf("address %q: unix socket path is empty (want unix:///path/to.sock)", s)
		}
		return Endpoint{Network: "unix", Address: path}, nil
	}
	if strings.Contains(s, "://") {
		return Endpoint{}, fmt.Errorf("address %q: unsupported scheme (want unix:///path/to.sock or host:port)", s)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("address %q: %v (want unix:///path/to.sock or host:port, IPv6 hosts in brackets)", s, err)
	}
	if port == "" {
		return Endpoint{}, fmt.Errorf("address %q: missing port", s)
	}
	return Endpoint{Network: "tcp", Address: net.JoinHostPort(host, port)}, nil
}

// ParseList parses a comma-separated list of addresses ("a,b,c", as
// --controller takes several controllers); blanks around and between items
// are ignored. At least one address is required.
func ParseList(s string) ([]Endpoint, error) {
	var eps []Endpoint
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		ep, err := Parse(part)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		_, err := Parse("")
		return nil, err
	}
	return eps, nil
}

// String gives the address back in the form Parse accepts.
func (e Endpoint) String() string {
	if e.Network == "unix" {
		return "unix:" + e.unixPath()
	}
	return e.Address
}

// Target is the gRPC dial target.
func (e Endpoint) Target() string {
	if e.Network == "unix" {
		return "unix:" + e.unixPath()
	}
	return "passthrough:///" + e.Address
}

// unixPath is the socket path as a URI path: gRPC reads "unix://x" as a
// host named x, so only absolute paths get the "//" authority.
func (e Endpoint) unixPath() string {
	if filepath.IsAbs(e.Address) {
		return "//" + e.Address
	}
	return e.Address
}

// Check dials the endpoint once and hangs up. It returns nil when
// something accepts connections there, else the dial error, which wraps
// the system's errno (errors.Is(err, syscall.ECONNREFUSED), ENOENT for a
// missing socket). gRPC reports why a connection failed only as text; a
// client that must explain it asks the address itself.
func (e Endpoint) Check(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, e.Network, e.Address)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// Cause is the short reason a dial failed, for a message: the system's
// words for the errno ("connection refused", "no such file or directory"),
// the resolver's for a name that does not resolve ("no such host"),
// "connection timed out" when time ran out; else the error's own text.
func Cause(err error) string {
	var dnsErr *net.DNSError
	var errno syscall.Errno
	switch {
	case errors.As(err, &dnsErr):
		return dnsErr.Err
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "connection timed out"
	}
	return err.Error()
}

// IsLoopback reports whether the endpoint is a unix socket or a TCP address
// on a loopback host (where no transport security is needed).
func (e Endpoint) IsLoopback() bool {
	if e.Network == "unix" {
		return true
	}
	host, _, _ := net.SplitHostPort(e.Address)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen opens the endpoint. For a unix socket it creates the parent
// directory, removes a stale socket left by a dead process (but refuses to
// steal one that still answers) and sets the socket's mode to 0660.
func (e Endpoint) Listen() (net.Listener, error) {
	if e.Network != "unix" {
		l, err := net.Listen("tcp", e.Address)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", e, err)
		}
		return l, nil
	}
	if err := os.MkdirAll(filepath.Dir(e.Address), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(e.Address); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: path exists and is not a socket", e)
		}
		if c, err := net.DialTimeout("unix", e.Address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another process is serving this socket", e)
		}
		if err := os.Remove(e.Address); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", e.Address, err)
		}
	}
	l, err := net.Listen("unix", e.Address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", e, err)
	}
	if err := os.Chmod(e.Address, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", e.Address, err)
	}
	return l, nil
}
