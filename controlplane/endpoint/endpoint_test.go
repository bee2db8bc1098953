package endpoint

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	good := map[string]Endpoint{
		"unix:///run/fourover6/controller.sock": {"unix", "/run/fourover6/controller.sock"},
		"unix:/tmp/x.sock":                      {"unix", "/tmp/x.sock"},
		"127.0.0.1:9000":                        {"tcp", "127.0.0.1:9000"},
		"[::1]:9000":                            {"tcp", "[::1]:9000"},
		"localhost:1":                           {"tcp", "localhost:1"},
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "unix://", "http://x:1", "::1:9000", "host", "host:"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if e, _ := Parse("unix:///a.sock"); e.Target() != "unix:///a.sock" || e.String() != "unix:///a.sock" || !e.IsLoopback() {
		t.Errorf("unix endpoint: %v %v", e.Target(), e.String())
	}
	if e, _ := Parse("[::1]:1"); !e.IsLoopback() || e.Target() != "passthrough:///[::1]:1" {
		t.Error("[::1] target or loopback wrong")
	}
	if e, _ := Parse("0.0.0.0:1"); e.IsLoopback() {
		t.Error("0.0.0.0 is not loopback")
	}
}

func TestListenUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "d.sock")
	e, _ := Parse("unix://" + path)
	l, err := e.Listen()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := e.Listen(); err == nil {
		t.Fatal("second listener stole a live socket")
	}
	l.Close()
	// Leave a stale socket file behind, as a killed process does.
	ul, _ := net.Listen("unix", path)
	ul.(*net.UnixListener).SetUnlinkOnClose(false)
	ul.Close()
	l2, err := e.Listen()
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
}

func TestParseList(t *testing.T) {
	got, err := ParseList(" unix:///a.sock, 10.0.0.2:7000 ,")
	if err != nil || len(got) != 2 || got[0].String() != "unix:///a.sock" || got[1].String() != "10.0.0.2:7000" {
		t.Fatalf("ParseList = %v %v", got, err)
	}
	for _, bad := range []string{"", ",", " , ", "ftp://x", "host", "unix:///a.sock,nonsense"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) accepted", bad)
		}
	}
}

// A relative socket path must not become a URI authority ("unix://x" is
// host x to gRPC).
func TestRelativeUnixPath(t *testing.T) {
	e, err := Parse("unix:run/x.sock")
	if err != nil || e.Address != "run/x.sock" || e.Target() != "unix:run/x.sock" || e.String() != "unix:run/x.sock" {
		t.Fatalf("%+v %v: target %q string %q", e, err, e.Target(), e.String())
	}
	if again, err := Parse(e.String()); err != nil || again != e {
		t.Fatalf("String does not parse back: %v %v", again, err)
	}
}

func TestCheck(t *testing.T) {
	ctx := context.Background()
	missing := Endpoint{Network: "unix", Address: filepath.Join(t.TempDir(), "none.sock")}
	err := missing.Check(ctx)
	if !errors.Is(err, syscall.ENOENT) || Cause(err) != "no such file or directory" {
		t.Errorf("missing socket: %v, cause %q", err, Cause(err))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	live := Endpoint{Network: "tcp", Address: l.Addr().String()}
	if err := live.Check(ctx); err != nil {
		t.Errorf("live listener: %v", err)
	}
	l.Close()
	err = live.Check(ctx)
	if !errors.Is(err, syscall.ECONNREFUSED) || Cause(err) != "connection refused" {
		t.Errorf("closed port: %v, cause %q", err, Cause(err))
	}
	expired, cancel := context.WithTimeout(ctx, 0)
	defer cancel()
	if err := live.Check(expired); Cause(err) != "connection timed out" {
		t.Errorf("expired context: %v, cause %q", err, Cause(err))
	}
	if got := Cause(errors.New("odd")); got != "odd" {
		t.Errorf("Cause of a plain error = %q", got)
	}
	if got := Cause(&net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}); got != "no such host" {
		t.Errorf("Cause of a DNS error = %q", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"unix:///a.sock", "unix:rel", "[::1]:7000", "host:1", ",", "unix://", "x://y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(e.String())
		if err != nil || again != e {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v, %v", s, e, e.String(), again, err)
		}
	})
}
