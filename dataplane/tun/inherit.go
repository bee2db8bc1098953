package tun

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Filer is a device whose descriptor can be handed to another process
// (both backends are).
type Filer interface {
	File() *os.File
}

// FromFile makes a Device of a TUN another process opened and handed over
// (f, its descriptor): the interface stays as it was, with its address,
// routes and queue. name is its kernel name, backend how the predecessor
// opened it (the offload backend's virtio-net headers must go on).
func FromFile(f *os.File, name string, backend Backend, mtu int) (Device, error) {
	// A descriptor of our own, f's closed: the poller serves only
	// non-blocking descriptors, which makes a Read stoppable and keeps a
	// blocked Read from holding a thread.
	fd, err := dupRaw(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("TUN %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN %s: %w", name, err)
	}
	nf := os.NewFile(uintptr(fd), "/dev/net/tun")
	switch backend {
	case "", BackendWater:
		return &fileDevice{f: nf, name: name}, nil
	case BackendOffload:
		if mtu <= 0 {
			mtu = 1500
		}
		dev, err := wgtun.CreateTUNFromFile(nf, mtu)
		if err != nil {
			return nil, fmt.Errorf("TUN %s handed over with offloads: %w", name, err)
		}
		go func() {
			for range dev.Events() {
			}
		}()
		return &offloadDevice{dev: dev, file: dev.File(), name: name}, nil
	}
	return nil, fmt.Errorf("unknown TUN backend %q (known: %v)", backend, Backends())
}

// fileDevice is the water backend's TUN taken over from another process:
// one packet per system call on its file, as water does.
type fileDevice struct {
	f    *os.File
	name string
}

func (d *fileDevice) Name() string      { return d.name }
func (d *fileDevice) BatchSize() int    { return 1 }
func (d *fileDevice) Close() error      { return d.f.Close() }
func (d *fileDevice) NewWriter() Writer { return NewPacketWriter(d.f) }
func (d *fileDevice) File() *os.File    { return d.f }

func (d *fileDevice) SetReadDeadline(t time.Time) error { return d.f.SetReadDeadline(t) }

func (d *fileDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.f.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// dupRaw duplicates f's descriptor without touching its blocking mode
// (f.Fd would make it blocking).
func dupRaw(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}
