package sendq

import (
	"sync"
	"syscall"
	"unsafe"

	"github.com/fourover6/fourover6/dataplane/wire"
	"golang.org/x/sys/unix"
)

// maxIOV is IOV_MAX on Linux: the most buffers one writev takes.
const maxIOV = 1024

// writer is the scratch space of one write: both the inline writer and the
// writer goroutine go through write, the queue's only way to the socket.
//
// It is written by hand because none of the library ways fits both: an
// inline write must never wait, which net.Conn.Write and net.Buffers.WriteTo
// cannot promise (they wait for room), and unix.Writev builds its iovec
// array on each call (allocating past eight buffers). This one keeps its
// iovecs in pooled scratch and issues writev(2) from a syscall.RawConn
// callback: the callback returns at EAGAIN, telling the netpoller to wait
// for room (the writer goroutine) or giving up (inline). Nothing allocates.
type writer struct {
	bufs []*Buf       // the writer goroutine's turn
	msgs []*Buf       // the messages of the write under way
	iov  []unix.Iovec // iov[k] is what is left of msgs[k]
	i    int          // msgs[:i] are written and finished
	part int          // bytes of msgs[i] written
	wait bool         // wait for room instead of returning at EAGAIN
	err  error        // the write's error
	// partial: the write ended inside msgs[done] (whose rest is now what
	// is left of it).
	partial bool
	fn      func(uintptr) bool // w.writev, bound once: passing it allocates nothing

	bytes, packets uint64 // Data finished by this writer since the queue's last count
}

var writers = sync.Pool{New: func() any {
	w := new(writer)
	w.fn = w.writev
	return w
}}

func getWriter() *writer  { return writers.Get().(*writer) }
func putWriter(w *writer) { writers.Put(w) }

// write writes msgs (at most maxIOV of them) to the socket, finishing each
// message whose last byte went out, and returns how many it finished.
// Without wait it returns at the first EAGAIN or short write: msgs[done] is
// then what is left (a partly written message carries its offset, or is
// replaced by a private copy of its rest when it is static). With wait it
// returns when all is written or the write failed (the error: the deadline,
// a closed or reset connection).
func (w *writer) write(raw syscall.RawConn, msgs []*Buf, wait bool) (done int, err error) {
	msgs = msgs[:min(len(msgs), maxIOV)]
	w.msgs, w.wait, w.i, w.part, w.err = msgs, wait, 0, 0, nil
	w.iov = w.iov[:0]
	for _, b := range msgs {
		w.iov = append(w.iov, iovec(b.Message()))
	}
	if len(msgs) > 0 {
		if rerr := raw.Write(w.fn); rerr != nil && w.err == nil {
			w.err = rerr // closed, or the deadline passed while waiting
		}
	}
	done, err = w.i, w.err
	w.keepRest()
	clear(w.iov)
	w.msgs, w.err = nil, nil
	return done, err
}

// keepRest records how much of the first unfinished message was written:
// on the message itself, or, for a static one, by putting a private copy of
// its rest in its place (in the caller's slice).
func (w *writer) keepRest() {
	w.partial = false
	if w.i == len(w.msgs) || w.part == 0 {
		return
	}
	w.partial = true
	b := w.msgs[w.i]
	if b.static {
		w.msgs[w.i] = privateCopy(b, w.part)
	} else {
		b.off += w.part
	}
	w.part = 0
}

func iovec(m []byte) unix.Iovec {
	var v unix.Iovec
	if len(m) > 0 {
		v.Base = &m[0]
	}
	v.SetLen(len(m))
	return v
}

// writev runs inside raw.Write with the socket's descriptor (non-blocking,
// as the runtime keeps it). Returning false asks the netpoller to wait for
// room and call again.
func (w *writer) writev(fd uintptr) bool {
	for {
		iov := w.iov[w.i:]
		r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch e {
		case 0:
			if w.advance(int(r)) {
				return true
			}
			if !w.wait {
				return true // a short write: the socket is full
			}
		case unix.EINTR:
		case unix.EAGAIN:
			return !w.wait
		default:
			w.err = e
			return true
		}
	}
}

// advance accounts for n bytes written and reports whether all are.
func (w *writer) advance(n int) bool {
	for w.i < len(w.msgs) {
		b := w.msgs[w.i]
		left := len(b.Message()) - w.part
		if n < left {
			w.part += n
			w.iov[w.i] = iovec(b.Message()[w.part:])
			return false
		}
		n -= left
		w.iov[w.i] = unix.Iovec{}
		w.i, w.part = w.i+1, 0
		w.finish(b)
	}
	return true
}

// finish is the one place a message is done with: its last byte is
// written. Data counts here, and only here, as traffic to the client.
func (w *writer) finish(b *Buf) {
	if b.Kind == Data && b.N >= wire.HeaderLen {
		w.bytes += uint64(b.N - wire.HeaderLen)
		w.packets++
	}
	Put(b)
}
