package endpoint

import (
	"net"
	"os"
	"path/filepath"
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
