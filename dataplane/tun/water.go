package tun

import (
	"errors"
	"fmt"
	"os"
	"time"

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

// file is the TUN's descriptor: water opens it non-blocking, so the
// runtime's poller serves it and a read deadline can stop a Read.
func (d *waterDevice) file() *os.File {
	f, _ := d.ifce.ReadWriteCloser.(*os.File)
	return f
}

// SetReadDeadline stops a blocked Read (os.ErrDeadlineExceeded) at t.
func (d *waterDevice) SetReadDeadline(t time.Time) error {
	f := d.file()
	if f == nil {
		return errors.New("the TUN has no file")
	}
	return f.SetReadDeadline(t)
}

// File returns the TUN's file, to hand over to another process.
func (d *waterDevice) File() *os.File { return d.file() }
