package tun

import (
	"fmt"
	"os"
	"time"

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
	dev, err := wgtun.CreateTUN(c.Name, mtu)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("open TUN %q: /dev/net/tun is missing (load the tun module: modprobe tun): %w", c.Name, err)
		}
		return nil, fmt.Errorf("open TUN %q with offloads: %w", c.Name, err)
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
