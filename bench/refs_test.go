package main

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A reference tunnel whose tools are missing is skipped with a reason that
// says what to install, before anything is built or started.
func TestRefsSkipWithoutTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // neither wg nor openvpn, nor go
	l := &lab{o: &options{cacheDir: t.TempDir(), src: "."}}
	for _, c := range []struct {
		ref, want string
	}{{refWireguardGo, "wg not installed"}, {refOpenVPN, "openvpn not installed"}} {
		_, err := l.setupRef(context.Background(), path{name: refPath(c.ref), kind: KindRef, ref: c.ref}, &Report{})
		var skip *skipError
		if !errors.As(err, &skip) || !strings.Contains(skip.reason, c.want) || !strings.Contains(skip.reason, "deps.sh bench") {
			t.Errorf("%s without its tools: %v, want a skip saying %q and how to install it", c.ref, err, c.want)
		}
	}
}

func TestRefNames(t *testing.T) {
	if refPath(refOpenVPN) != "openvpn-tcp" || refPath(refWireguardGo) != "wireguard-go" {
		t.Error("reference path names changed: they are JSON values other runs are compared by")
	}
	if refServerV4(refOpenVPN) != ovpnServerV4 || refServerV4(refWireguardGo) != wgServerV4 {
		t.Error("reference server addresses")
	}
}
