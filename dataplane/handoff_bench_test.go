package dataplane_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/dataplanetest"
	"github.com/fourover6/fourover6/dataplane/handoff"
	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sys/unix"
)

// BenchmarkHandoff hands a data plane with n idle leased clients over to a
// successor, the way the daemon does it but within one process: Freeze,
// the state and every connection's descriptor through a unix socket pair
// (SCM_RIGHTS, package handoff), Restore, Thaw, and the successor's Run up
// to its serving every session. Reported per hand-off: pause-ms, from the
// freeze to the successor serving (what a client sees as the longest gap
// in its traffic), and us/session. The process dance (fork, exec, the new
// binary's start) happens before the freeze and is not in the pause.
func BenchmarkHandoff(b *testing.B) {
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if rl.Cur < 100000 {
		rl.Cur, rl.Max = max(rl.Max, 100000), max(rl.Max, 100000)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			b.Logf("cannot raise the descriptor limit: %v", err)
		}
	}
	// Clients, the old and the new sessions share one process here: 6000
	// sessions is what fits under a limit of 20000 descriptors (the
	// daemon's two processes hold a third each).
	for _, n := range []int{100, 1000, 6000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchHandoff(b, n) })
	}
}

func benchHandoff(b *testing.B, n int) {
	mt := dataplanetest.NewMemTUN(4)
	h := dataplanetest.Start(b, mt, func(c *dataplane.Config) { c.KeepaliveInterval, c.KeepaliveTimeout = time.Hour, 2*time.Hour })
	h.ExpectError()
	h.Ctl.SetSize(n + 10)
	clients := make([]net.Conn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.Dial("tcp", h.Addr)
			if err != nil {
				b.Error(err)
				return
			}
			clients[i] = c
			c.Write(wire.AddrRequest[:])
			dec := wire.NewDecoder(c, 512)
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if m, err := dec.Next(); err != nil || m.Type != wire.TypeAddrResponse {
				b.Errorf("client %d: %v %v", i, m.Type, err)
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	if b.Failed() {
		return
	}
	dp := h.DP
	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var total time.Duration
	var phases [5]time.Duration
	b.ResetTimer()
	for range b.N {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		a, z := socketConn(b, pair[0]), socketConn(b, pair[1])
		start := time.Now()
		f, err := dp.Freeze(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		phases[0] += time.Since(start)
		sent := make(chan error, 1)
		go func() { sent <- a.SendEach(handoff.KindState, f.State, len(f.State.Sessions), f.File) }()
		var st dataplane.HandoffState
		var conns []net.Conn
		err = z.RecvEach(context.Background(), handoff.KindState, &st, func(file *os.File) error {
			defer file.Close()
			c, err := net.FileConn(file)
			conns = append(conns, c)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-sent; err != nil {
			b.Fatal(err)
		}
		phases[1] += time.Since(start)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		next, err := dataplane.Restore(dataplane.Config{
			ID: "dp-test", Listener: ln, TUN: mt, ControlPlane: h.Ctl, Logger: logger,
			KeepaliveInterval: time.Hour, KeepaliveTimeout: 2 * time.Hour, ReportInterval: time.Hour,
		}, &st, conns)
		if err != nil {
			b.Fatal(err)
		}
		phases[2] += time.Since(start)
		// As the daemon does: the old side lets go while the new one
		// starts serving.
		thawed := make(chan struct{})
		go func() { f.Thaw(false); close(thawed) }()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { next.Run(ctx); close(done) }()
		stops = append(stops, func() { cancel(); <-done })
		<-next.Serving()
		total += time.Since(start)
		<-thawed
		phases[3] += time.Since(start)
		if got := next.Status().LeasedSessions; got != n {
			b.Fatalf("the successor serves %d sessions, want %d", got, n)
		}
		a.Close()
		z.Close()
		dp = next
	}
	b.StopTimer()
	b.Logf("n=%d: per hand-off, since the freeze: frozen %s, sent and received %s, restored %s, successor serving %s, old side let go %s", n,
		phases[0]/time.Duration(b.N), phases[1]/time.Duration(b.N), phases[2]/time.Duration(b.N), total/time.Duration(b.N), phases[3]/time.Duration(b.N))
	per := total / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(time.Millisecond), "pause-ms")
	b.ReportMetric(float64(per)/float64(time.Microsecond)/float64(n), "us/session")
}

func socketConn(b *testing.B, fd int) *handoff.Conn {
	f := os.NewFile(uintptr(fd), "pair")
	defer f.Close()
	c, err := handoff.FromFile(f)
	if err != nil {
		b.Fatal(err)
	}
	return c
}
