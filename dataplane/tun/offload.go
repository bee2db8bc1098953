package tun

import (
	"fmt"
	"os"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// offloadDevice wraps wireguard-go's Linux TUN: IFF_VNET_HDR with TSO4/6 and
// checksum offload. The kernel hands over TCP super-packets of up to 64 KiB
// in one read, which Read splits into MTU-sized packets (the protocol needs
// them small: lab clients drop messages over 2053 bytes), and Write
// coalesces consecutive TCP segments of a flow back into super-packets (GRO),
// so a batch costs one system call per flow instead of one per packet.
type offloadDevice struct {
	dev  wgtun.Device
	name string
}

// offloadHeadroom is the virtio-net header Write puts in front of packets
// (10 bytes), rounded up.
const offloadHeadroom = 16

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
	return &offloadDevice{dev: dev, name: name}, nil
}

func (d *offloadDevice) Name() string       { return d.name }
func (d *offloadDevice) BatchSize() int     { return d.dev.BatchSize() }
func (d *offloadDevice) WriteHeadroom() int { return offloadHeadroom }
func (d *offloadDevice) Close() error       { return d.dev.Close() }

func (d *offloadDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.dev.Read(bufs, sizes, offset)
}

func (d *offloadDevice) Write(bufs [][]byte, offset int) (int, error) {
	return d.dev.Write(bufs, offset)
}
