package rcvwin

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestTarget(t *testing.T) {
	cases := []struct {
		rate float64
		rtt  time.Duration
		prev int
		want int
	}{
		{0, 0, 0, MinWindow},                            // idle: the floor
		{1e9, 100 * time.Microsecond, 0, 400_000},       // 4 x 1 GB/s x 100 µs
		{1e9, 100 * time.Microsecond, 4 << 20, 3 << 20}, // shrinks by a quarter at most
		{1e9, 50 * time.Millisecond, 0, MaxWindow},      // a long fat path: the ceiling
		{1e6, 0, 0, MinWindow},                          // no RTT known: 1 ms assumed
	}
	for _, c := range cases {
		if got := Target(c.rate, c.rtt, c.prev); got != c.want {
			t.Errorf("Target(%g, %v, %d) = %d, want %d", c.rate, c.rtt, c.prev, got, c.want)
		}
	}
	// Limited by its own window, a connection's next one is four times
	// it: the clamp never keeps a path below its rate for long.
	rtt := 20 * time.Millisecond
	w := MinWindow
	for range 20 {
		rate := float64(w) / rtt.Seconds()
		next := Target(rate, rtt, w)
		if next < min(4*w, MaxWindow) {
			t.Fatalf("window-limited at %d: next %d, want it four times as large", w, next)
		}
		w = next
	}
	if w != MaxWindow {
		t.Fatalf("grew to %d, want %d", w, MaxWindow)
	}
}

func TestPathRTT(t *testing.T) {
	for _, c := range []struct {
		min, rcv, srtt uint32
		want           time.Duration
	}{
		{50, 900, 1200, 50 * time.Microsecond}, // the queue inflates the others
		{0, 900, 1200, 900 * time.Microsecond}, // nothing sent yet: no min_rtt
		{0, 0, 0, 0},
	} {
		info := unix.TCPInfo{Min_rtt: c.min, Rcv_rtt: c.rcv, Rtt: c.srtt}
		if got := pathRTT(&info); got != c.want {
			t.Errorf("pathRTT(min %d, rcv %d, srtt %d) = %v, want %v", c.min, c.rcv, c.srtt, got, c.want)
		}
	}
}

// TestReaderSetsClamp: over a real TCP connection the bytes pass through
// unchanged and, once a period has passed, the clamp is set on the socket.
func TestReaderSetsClamp(t *testing.T) {
	c, s := loopback(t)
	payload := bytes.Repeat([]byte("4over6"), 1<<16)
	go func() {
		for range 4 {
			c.Write(payload)
			time.Sleep(Period)
		}
		c.Close()
	}()
	r := NewReader(s)
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4*len(payload) || !bytes.Equal(got[:len(payload)], payload) {
		t.Fatalf("read %d bytes, want %d", len(got), 4*len(payload))
	}
	if r.Window() < MinWindow {
		t.Fatalf("no clamp set after %d periods", 4)
	}
	raw, _ := s.(*net.TCPConn).SyscallConn()
	var clamp int
	raw.Control(func(fd uintptr) { clamp, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP) })
	if clamp < r.Window()/2 {
		// The kernel may round the clamp down (to at least half the
		// minimum receive buffer); never far from what was set.
		t.Fatalf("TCP_WINDOW_CLAMP %d, Reader says %d", clamp, r.Window())
	}
}

// TestResizeDoesNotAllocate: a period's work is done without an allocation.
func TestResizeDoesNotAllocate(t *testing.T) {
	c, _ := loopback(t)
	r := NewReader(c)
	now := time.Now()
	if a := testing.AllocsPerRun(100, func() { now = now.Add(Period); r.update(now) }); a != 0 {
		t.Fatalf("%v allocations per period", a)
	}
	if r.Window() != MinWindow {
		t.Fatalf("idle connection's clamp %d, want %d", r.Window(), MinWindow)
	}
}

// TestReaderWithoutSocket: a connection that is no socket is only read.
func TestReaderWithoutSocket(t *testing.T) {
	a, b := net.Pipe()
	go func() { a.Write([]byte("hello")); a.Close() }()
	got, err := io.ReadAll(NewReader(b))
	if err != nil || string(got) != "hello" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestClampOutlivesAutotuning: the kernel's receive-buffer autotuning
// raises the window clamp with each buffer it grows, on a connection that
// starts slow (the clamp set while its buffer is small) and then carries a
// lot; the Reader's next period puts its own clamp back.
func TestClampOutlivesAutotuning(t *testing.T) {
	c, s := loopback(t)
	raw, _ := s.(*net.TCPConn).SyscallConn()
	clamp := func() (v int) {
		raw.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP) })
		return v
	}
	const trickle, chunk, flood = 5, 1 << 20, 256 << 20
	go func() {
		for range trickle {
			c.Write([]byte("4over6"))
			time.Sleep(2 * Period)
		}
		buf := make([]byte, chunk)
		for sent := 0; sent < flood; sent += chunk {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	r := NewReader(s)
	buf := make([]byte, 64<<10)
	raised := 0 // reads that found the kernel's clamp above the Reader's
	for got := 0; got < trickle*6+flood; {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		if r.Window() > 0 && clamp() > r.Window() {
			raised++
		}
	}
	if r.Window() == 0 {
		t.Fatal("no clamp set during the trickle")
	}
	before := clamp()
	r.update(r.start.Add(Period))
	if got := clamp(); got > r.Window() {
		t.Fatalf("TCP_WINDOW_CLAMP %d a period after the flood (autotuning had it at %d), the Reader's %d", got, before, r.Window())
	}
	t.Logf("reads that found the clamp raised by autotuning: %d; at the end %d, the Reader's %d", raised, before, r.Window())
}

// loopback is a TCP connection over 127.0.0.1: the dialled end and the
// accepted one, closed when the test ends.
func loopback(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
