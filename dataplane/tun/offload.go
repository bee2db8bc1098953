package tun

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// offloadDevice wraps wireguard-go's Linux TUN: IFF_VNET_HDR with TSO4/6 and
// checksum offload. The kernel hands over TCP super-packets of up to 64 KiB
// in one read, which Read splits into MTU-sized packets (the protocol needs
// them small: lab clients drop messages over 2053 bytes). Writes do not go
// through wireguard-go: each Writer is a coalescer (gro.go) that merges
// consecutive TCP segments of a flow back into super-packets and writes
// them, virtio-net header in front, to the TUN's file, so a run of a flow
// costs one system call instead of one per packet.
type offloadDevice struct {
	dev  wgtun.Device // nil in BenchmarkCoalesce, which writes to /dev/null
	file *os.File     // the TUN's file, written by the coalescers
	name string
}

func openOffload(c Config) (Device, error) {
	mtu := c.MTU
	if mtu <= 0 {
		mtu = 1500
	}
	// The descriptor is ours until wireguard-go has it: its CreateTUN keeps
	// a failed one open, and the interface attached to it, so falling back
	// to water under the same name would find it busy.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open TUN %q: /dev/net/tun is missing (load the tun module: modprobe tun): %w", c.Name, err)
		}
		return nil, fmt.Errorf("open TUN %q: %w", c.Name, err)
	}
	file, err := probeOffload(fd, c.Name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	dev, err := wgtun.CreateTUNFromFile(file, mtu)
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("open TUN %q with offloads: %w", c.Name, err)
	}
	if dev.BatchSize() < 2 {
		// wireguard-go found no virtio header after all: our writers
		// would write headers the kernel does not expect.
		dev.Close()
		return nil, &noOffloadError{what: "the kernel did not keep IFF_VNET_HDR"}
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, err
	}
	// Nobody needs link events; keep the listener from blocking on them.
	go func() {
		for range dev.Events() {
		}
	}()
	return &offloadDevice{dev: dev, file: dev.File(), name: name}, nil
}

// probeOffload attaches fd to the interface with a virtio-net header and
// asks for TCP segmentation and checksum offload, as wireguard-go does
// after it, so that a kernel refusing them is told apart (noOffloadError:
// auto takes water) from a TUN that cannot be had at all.
func probeOffload(fd int, name string) (*os.File, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("open TUN %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return nil, &noOffloadError{what: "TUNSETIFF with IFF_VNET_HDR", err: err}
		}
		return nil, fmt.Errorf("open TUN %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return nil, fmt.Errorf("open TUN %q: TUNGETIFF: %w", name, err)
	}
	if ifr.Uint16()&unix.IFF_VNET_HDR == 0 {
		return nil, &noOffloadError{what: "the kernel did not keep IFF_VNET_HDR"}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6); err != nil {
		return nil, &noOffloadError{what: "TUNSETOFFLOAD (checksum, TSO4, TSO6)", err: err}
	}
	// Non-blocking before the runtime's poller takes it.
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("open TUN %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

func (d *offloadDevice) Name() string   { return d.name }
func (d *offloadDevice) BatchSize() int { return d.dev.BatchSize() }
func (d *offloadDevice) Close() error   { return d.dev.Close() }

func (d *offloadDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.dev.Read(bufs, sizes, offset)
}

// NewWriter returns a coalescer writing to the TUN's file.
func (d *offloadDevice) NewWriter() Writer { return &coalescer{f: d.file} }

// SetReadDeadline stops a blocked Read (os.ErrDeadlineExceeded) at t.
func (d *offloadDevice) SetReadDeadline(t time.Time) error { return d.file.SetReadDeadline(t) }

// File returns the TUN's file, to hand over to another process.
func (d *offloadDevice) File() *os.File { return d.file }
