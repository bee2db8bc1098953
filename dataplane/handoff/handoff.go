// Package handoff is the conversation between a data-plane process and the
// successor it starts to take over its work: a unix socket pair, whose
// child end the successor inherits as a descriptor named by an environment
// variable, carrying messages (a kind, JSON, and file descriptors passed
// with SCM_RIGHTS).
//
// The data plane's conversation (see cmd/4over6-dataplane) runs: the
// successor says hello; the predecessor sends its listeners and TUN; the
// successor prepares all it can and says so; the predecessor freezes and
// sends the sessions with their connections; the successor takes them and
// says it is ready; the predecessor commits (from then on it never serves
// again) and exits; the successor serves. Whoever does not hear the next
// step in time gives up: a successor that hears no commit exits without
// serving, a predecessor that hears no "ready" kills it and serves on.
package handoff

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable holding the successor's end of the
// socket (a descriptor number).
const EnvFD = "FOUROVER6_HANDOFF_FD"

// Kind is a message's kind.
type Kind uint8

// Kinds of message, in the order of the conversation.
const (
	KindHello    Kind = 1 + iota // successor: who it is
	KindFiles                    // predecessor: listeners, TUN
	KindPrepared                 // successor: ready for the sessions
	KindState                    // predecessor: the sessions and their connections
	KindReady                    // successor: took them, about to serve
	KindCommit                   // predecessor: stopped for good; serve
	KindFail                     // either side: gives up, with why (Failure)
)

func (k Kind) String() string {
	switch k {
	case KindHello:
		return "hello"
	case KindFiles:
		return "files"
	case KindPrepared:
		return "prepared"
	case KindState:
		return "state"
	case KindReady:
		return "ready"
	case KindCommit:
		return "commit"
	case KindFail:
		return "fail"
	}
	return "kind " + strconv.Itoa(int(k))
}

// Failure is the body of a KindFail message.
type Failure struct {
	Error string
}

// FailedError is Recv's error when the other side sent KindFail.
type FailedError struct{ Reason string }

func (e *FailedError) Error() string { return "the other process gave up: " + e.Reason }

// Limits of a message: what a successor accepts from its predecessor, and
// the other way round.
const (
	maxMeta     = 1 << 30
	maxFiles    = 1 << 22
	filesPerMsg = 250 // below the kernel's SCM_MAX_FD (253)
	headerLen   = 9
)

// Conn is one end of the hand-off socket.
type Conn struct {
	c *net.UnixConn
}

// Close closes this end.
func (c *Conn) Close() error { return c.c.Close() }

// Send sends one message: meta as JSON and files (their descriptors are
// duplicated into the other process; the caller keeps and closes its own).
func (c *Conn) Send(kind Kind, meta any, files []*os.File) error {
	return c.SendEach(kind, meta, len(files), func(i int) (*os.File, func(), error) { return files[i], func() {}, nil })
}

// SendEach is Send for n files made one at a time by file, which returns
// each with its release: called once the file's batch is sent, so that no
// more than a batch of extra descriptors is open at once (a hand-off of
// ten thousand connections must fit the descriptor limit).
func (c *Conn) SendEach(kind Kind, meta any, n int, file func(i int) (*os.File, func(), error)) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("hand-off %s: %w", kind, err)
	}
	var h [headerLen]byte
	h[0] = byte(kind)
	binary.BigEndian.PutUint32(h[1:], uint32(len(b)))
	binary.BigEndian.PutUint32(h[5:], uint32(n))
	if _, err := c.c.Write(append(h[:], b...)); err != nil {
		return fmt.Errorf("hand-off %s: %w", kind, err)
	}
	fds := make([]int, 0, filesPerMsg)
	releases := make([]func(), 0, filesPerMsg)
	done := func() {
		for _, r := range releases {
			r()
		}
		releases = releases[:0]
	}
	defer done()
	for i := 0; i < n; i += filesPerMsg {
		fds = fds[:0]
		for j := i; j < min(i+filesPerMsg, n); j++ {
			f, release, err := file(j)
			if err != nil {
				return fmt.Errorf("hand-off %s: descriptor %d: %w", kind, j, err)
			}
			releases = append(releases, release)
			fd, err := rawFD(f)
			if err != nil {
				return fmt.Errorf("hand-off %s: %w", kind, err)
			}
			fds = append(fds, fd)
		}
		if _, _, err := c.c.WriteMsgUnix([]byte{'F'}, unix.UnixRights(fds...), nil); err != nil {
			return fmt.Errorf("hand-off %s: passing descriptors: %w", kind, err)
		}
		done()
	}
	return nil
}

// rawFD is f's descriptor, without f.Fd's switch to blocking mode (the
// sender's files are in use: its TUN, listeners, connections).
func rawFD(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// Recv receives the next message, which must be of kind want (a KindFail
// is a *FailedError), within ctx; meta is filled from its JSON. The files
// are the caller's.
func (c *Conn) Recv(ctx context.Context, want Kind, meta any) ([]*os.File, error) {
	stop := context.AfterFunc(ctx, func() { c.c.SetReadDeadline(time.Now()) })
	defer func() {
		if !stop() {
			c.c.SetReadDeadline(time.Time{})
		}
	}()
	var files []*os.File
	err := c.recv(want, meta, func(f *os.File) error { files = append(files, f); return nil })
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		files = nil
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hand-off: no %s in time: %w", want, context.Cause(ctx))
		}
	}
	return files, err
}

// RecvEach is Recv handing each file to each as it arrives (each owns it,
// even when it fails): the receiver of ten thousand connections turns each
// into its own and closes the file at once, within the descriptor limit.
// meta is filled before the first call.
func (c *Conn) RecvEach(ctx context.Context, want Kind, meta any, each func(f *os.File) error) error {
	stop := context.AfterFunc(ctx, func() { c.c.SetReadDeadline(time.Now()) })
	defer func() {
		if !stop() {
			c.c.SetReadDeadline(time.Time{})
		}
	}()
	err := c.recv(want, meta, each)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("hand-off: no %s in time: %w", want, context.Cause(ctx))
	}
	return err
}

func (c *Conn) recv(want Kind, meta any, each func(*os.File) error) (err error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(c.c, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("hand-off: the other process went away before its %s", want)
		}
		return fmt.Errorf("hand-off: waiting for %s: %w", want, err)
	}
	kind := Kind(h[0])
	n := binary.BigEndian.Uint32(h[1:])
	nf := binary.BigEndian.Uint32(h[5:])
	if n > maxMeta || nf > maxFiles {
		return fmt.Errorf("hand-off: %s message too large (%d bytes, %d descriptors)", kind, n, nf)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.c, b); err != nil {
		return fmt.Errorf("hand-off: reading %s: %w", kind, err)
	}
	if kind == KindFail {
		var f Failure
		json.Unmarshal(b, &f)
		return &FailedError{Reason: f.Error}
	}
	if kind != want {
		return fmt.Errorf("hand-off: got %s, want %s", kind, want)
	}
	if meta != nil {
		if err := json.Unmarshal(b, meta); err != nil {
			return fmt.Errorf("hand-off: %s: %w", kind, err)
		}
	}
	oob := make([]byte, unix.CmsgSpace(filesPerMsg*4))
	var got uint32
	var eachErr error
	for got < nf {
		var one [1]byte
		_, oobn, _, _, err := c.c.ReadMsgUnix(one[:], oob)
		if err != nil {
			return fmt.Errorf("hand-off: reading %s's descriptors: %w", kind, err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return fmt.Errorf("hand-off: %s's descriptors: %w", kind, err)
		}
		batch := 0
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				f := os.NewFile(uintptr(fd), "handoff-"+strconv.Itoa(int(got)))
				got++
				batch++
				if eachErr != nil {
					f.Close() // the rest still arrive: read and drop them
					continue
				}
				eachErr = each(f)
			}
		}
		if batch == 0 {
			return fmt.Errorf("hand-off: %s: a descriptor batch without descriptors", kind)
		}
	}
	if got != nf {
		return fmt.Errorf("hand-off: %s: %d descriptors, %d announced", kind, got, nf)
	}
	return eachErr
}

// Fail tells the other side why this one gives up (best effort).
func (c *Conn) Fail(err error) {
	c.Send(KindFail, Failure{Error: err.Error()}, nil)
}

// Inherited returns the successor's end of the socket when this process
// was started by a predecessor (EnvFD is set), and nil otherwise. The
// variable is cleared so that this process's own successor does not see
// it.
func Inherited() (*Conn, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q is not a descriptor", EnvFD, v)
	}
	f := os.NewFile(uintptr(fd), "handoff")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s=%s: %w", EnvFD, v, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s=%s is not a unix socket", EnvFD, v)
	}
	return &Conn{c: uc}, nil
}

// FromFile makes a Conn of a unix stream socket's file (f stays the
// caller's): for tests and for callers that make their own socket pair.
func FromFile(f *os.File) (*Conn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s is not a unix socket", f.Name())
	}
	return &Conn{c: uc}, nil
}

// Child is a successor process and the predecessor's end of its socket.
type Child struct {
	*Conn
	Cmd    *exec.Cmd
	exited chan struct{}
	state  *os.ProcessState
	werr   error
}

// Start starts path with args (args[0] is the program's name) and env,
// giving it the socket's other end (EnvFD) and this process's stdout and
// stderr.
func Start(path string, args, env []string) (*Child, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("hand-off socket: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "handoff")
	theirs := os.NewFile(uintptr(fds[1]), "handoff-child")
	defer theirs.Close()
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("hand-off socket: %w", err)
	}
	cmd := &exec.Cmd{
		Path: path, Args: args,
		Env:        append(env, EnvFD+"=3"),
		Stdin:      nil,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		ExtraFiles: []*os.File{theirs},
		// Its own process group: a signal to ours (a terminal's ^C) is
		// not one to it.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		c.Close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	ch := &Child{Conn: &Conn{c: c.(*net.UnixConn)}, Cmd: cmd, exited: make(chan struct{})}
	go func() {
		ch.werr = cmd.Wait()
		ch.state = cmd.ProcessState
		close(ch.exited)
	}()
	return ch, nil
}

// PID is the successor's process id.
func (c *Child) PID() int { return c.Cmd.Process.Pid }

// Exited is closed when the successor has exited.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// ExitStatus says how the successor ended (after Exited).
func (c *Child) ExitStatus() string {
	if c.state == nil {
		if c.werr != nil {
			return c.werr.Error()
		}
		return "unknown"
	}
	return c.state.String()
}

// Kill ends a successor that failed or took too long, and waits for it.
func (c *Child) Kill() {
	c.Cmd.Process.Kill()
	<-c.exited
	c.Close()
}
