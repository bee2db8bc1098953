// Package rcvwin keeps a tunnel connection's TCP receive window near a few
// times its bandwidth-delay product.
//
// Whatever a tunnel end reads from its connection it writes to its TUN;
// when that is the slower part (a busy host, a CPU shared with the
// traffic's own endpoints), the bytes the peer has sent wait unread in the
// socket's receive queue, one FIFO for every flow of the client, as long
// as the window lets the peer send: Linux autotunes it to megabytes, which
// is milliseconds of delay for every ping inside the tunnel. Clamping the
// window (TCP_WINDOW_CLAMP) to a few times what the connection carries in
// one round trip keeps that queue at a few round trips' worth (and at least
// MinWindow, which a busy host's reader needs to ride out being descheduled
// without cutting the rate) while still letting the window grow each
// period when it is what limits the rate: a long path still gets its full
// window, a short one a short queue. The peer's send queue, where packets
// wait by flow, takes the rest.
package rcvwin

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bounds of the clamp, and how often it is reconsidered.
const (
	MinWindow = 256 << 10
	MaxWindow = 16 << 20
	Period    = 10 * time.Millisecond
)

// Reader reads from a TCP connection and resizes its receive window every
// Period, from what was read meanwhile and the connection's round-trip
// time. For one goroutine (the connection's reader). A connection without
// a socket is read as it is.
type Reader struct {
	r     io.Reader
	raw   syscall.RawConn // nil: no socket, nothing is resized
	start time.Time       // of the current period
	n     int             // bytes read in it
	win   int             // the clamp in force; 0 before the first
	fn    func(uintptr)   // w.resize, bound once
	prev  int             // scratch for fn: the period's rate
	info  unix.TCPInfo    // scratch for fn: read in place, no allocation
}

// NewReader wraps conn.
func NewReader(conn net.Conn) *Reader {
	r := &Reader{r: conn, start: time.Now()}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			r.raw = raw
		}
	}
	r.fn = r.resize
	return r
}

// Read reads from the connection.
func (r *Reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += n
	if r.raw != nil {
		if now := time.Now(); now.Sub(r.start) >= Period {
			r.update(now)
		}
	}
	return n, err
}

// Window is the clamp in force (0: none set yet).
func (r *Reader) Window() int { return r.win }

func (r *Reader) update(now time.Time) {
	elapsed := now.Sub(r.start)
	rate := float64(r.n) / elapsed.Seconds() // bytes per second
	r.start, r.n = now, 0
	r.prev = int(rate)
	r.raw.Control(r.fn)
}

// resize runs with the socket: it reads the round-trip time and sets the
// clamp. Errors leave the window as it is.
func (r *Reader) resize(fd uintptr) {
	// unix.GetsockoptTCPInfo allocates its result; this reads into r.
	size := uint32(unsafe.Sizeof(r.info))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&r.info)), uintptr(unsafe.Pointer(&size)), 0); e != 0 {
		return
	}
	w := Target(float64(r.prev), pathRTT(&r.info), r.win)
	// Set every period, even unchanged: the kernel's receive-buffer
	// autotuning raises the clamp with each buffer it grows
	// (tcp_rcv_space_adjust), undoing ours within a period. Setting the
	// clamp in force is a no-op in the kernel: one cheap syscall.
	if unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, w) == nil {
		r.win = w
	}
}

// pathRTT is the round trip of the path itself: the smallest the kernel
// knows of. The receiver's estimate (rcv_rtt) and the smoothed RTT include
// the very queue the clamp is to bound, which would widen the window it
// measures; min_rtt (from what this end sends) does not, when there is one.
func pathRTT(info *unix.TCPInfo) time.Duration {
	rtt := time.Duration(0)
	for _, us := range []uint32{info.Min_rtt, info.Rcv_rtt, info.Rtt} {
		if d := time.Duration(us) * time.Microsecond; d > 0 && (rtt == 0 || d < rtt) {
			rtt = d
		}
	}
	return rtt
}

// Target is the clamp for a connection that carried rate bytes per second
// over the last period with round-trip time rtt, the clamp having been
// prev (0: none): four times the bandwidth-delay product, shrinking at most
// by a quarter a period (so a lull, or a reader descheduled for a while,
// does not starve what follows), within MinWindow..MaxWindow.
func Target(rate float64, rtt time.Duration, prev int) int {
	if rtt <= 0 {
		rtt = time.Millisecond
	}
	w := int(4 * rate * rtt.Seconds())
	w = max(w, prev-prev/4, MinWindow)
	return min(w, MaxWindow)
}
