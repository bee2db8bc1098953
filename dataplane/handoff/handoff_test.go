package handoff

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := FromFile(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

// TestSendRecvFiles: the meta and more descriptors than one message
// carries arrive, each a working duplicate of the sender's file.
func TestSendRecvFiles(t *testing.T) {
	a, b := pair(t)
	var files []*os.File
	for i := 0; i < 600; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		w.Write([]byte{byte(i)})
		w.Close()
		files = append(files, r)
	}
	type meta struct{ N int }
	errc := make(chan error, 1)
	go func() { errc <- a.Send(KindState, meta{N: len(files)}, files) }()
	var m meta
	got, err := b.Recv(context.Background(), KindState, &m)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m.N != 600 || len(got) != 600 {
		t.Fatalf("meta %+v, %d files", m, len(got))
	}
	for i, f := range got {
		var one [1]byte
		if n, err := f.Read(one[:]); n != 1 || one[0] != byte(i) {
			t.Fatalf("file %d: %v %v", i, one, err)
		}
		f.Close()
	}
}

// TestRecvErrors: the wrong kind, a failure, a peer gone and a deadline
// are errors that say so.
func TestRecvErrors(t *testing.T) {
	a, b := pair(t)
	a.Send(KindHello, struct{}{}, nil)
	if _, err := b.Recv(context.Background(), KindReady, nil); err == nil || !strings.Contains(err.Error(), "got hello, want ready") {
		t.Errorf("wrong kind: %v", err)
	}
	a.Fail(errors.New("no TUN"))
	var fe *FailedError
	if _, err := b.Recv(context.Background(), KindReady, nil); !errors.As(err, &fe) || fe.Reason != "no TUN" {
		t.Errorf("fail: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.Recv(ctx, KindReady, nil); err == nil || !strings.Contains(err.Error(), "no ready in time") {
		t.Errorf("deadline: %v", err)
	}
	a.Close()
	if _, err := b.Recv(context.Background(), KindReady, nil); err == nil || !strings.Contains(err.Error(), "went away") {
		t.Errorf("closed: %v", err)
	}
}

// TestRecvTooLarge: a header announcing more than the limits is refused
// before anything is allocated.
func TestRecvTooLarge(t *testing.T) {
	a, b := pair(t)
	a.c.Write([]byte{byte(KindState), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	if _, err := b.Recv(context.Background(), KindState, nil); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("oversized: %v", err)
	}
}
