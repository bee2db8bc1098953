// Package endpoint parses the daemons' gRPC addresses: "unix:///path" for a
// unix socket, "host:port" for TCP. It listens (creating the socket's
// directory, replacing a stale socket, mode 0660) and builds gRPC targets.
package endpoint

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
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

// String gives the address back in the form Parse accepts.
func (e Endpoint) String() string {
	if e.Network == "unix" {
		return "unix://" + e.Address
	}
	return e.Address
}

// Target is the gRPC dial target.
func (e Endpoint) Target() string {
	if e.Network == "unix" {
		return "unix://" + e.Address
	}
	return "passthrough:///" + e.Address
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
