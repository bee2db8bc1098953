package tun

import (
	"fmt"
	"os"

	"github.com/songgao/water"
)

// waterDevice moves one packet per system call: water has no batch I/O and
// no offloads, which is why the interface leaves room for other backends.
type waterDevice struct {
	ifce *water.Interface
}

func openWater(c Config) (Device, error) {
	cfg := water.Config{DeviceType: water.TUN}
	cfg.Name = c.Name
	ifce, err := water.New(cfg)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("open TUN %q: /dev/net/tun is missing (load the tun module: modprobe tun): %w", c.Name, err)
		}
		return nil, fmt.Errorf("open TUN %q: %w", c.Name, err)
	}
	return &waterDevice{ifce: ifce}, nil
}

func (d *waterDevice) Name() string   { return d.ifce.Name() }
func (d *waterDevice) BatchSize() int { return 1 }
func (d *waterDevice) Close() error   { return d.ifce.Close() }

// NewWriter writes each packet with one write(2) on the TUN's file.
func (d *waterDevice) NewWriter() Writer { return NewPacketWriter(d.ifce) }

func (d *waterDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.ifce.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}
