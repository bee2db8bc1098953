package sendq

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// NotSentLowat is the TCP_NOTSENT_LOWAT both ends of a tunnel set on its
// connection. Without it the kernel takes up to the whole send buffer
// (autotuned to megabytes) of data not yet sent, a FIFO in front of every
// ping and DNS query of the client; with it, the socket takes little more
// than this and what waits stays in the Queue, where flows take turns and
// CoDel sees it. Enough to keep the connection busy between two writes.
const NotSentLowat = 32 << 10

// SetNotSentLowat sets TCP_NOTSENT_LOWAT on conn's socket (a TCP
// connection: anything else is an error).
func SetNotSentLowat(conn net.Conn, n int) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("TCP_NOTSENT_LOWAT: %T gives no access to its socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("TCP_NOTSENT_LOWAT: %w", serr)
	}
	return nil
}
