// Package tun hides the TUN interface behind a small batch-shaped interface
// (the shape of wireguard-go's tun.Device), so the forwarding loops do not
// care which backend moves the packets. water is the plain backend named by
// the design; faster ones can sit beside it.
package tun

import (
	"errors"
	"fmt"
	"os"
)

// Device is an open TUN interface carrying raw IP packets (no packet-info
// prefix).
//
// Read and Write work on batches. Packets live at bufs[i][offset:]: the
// offset is headroom the caller keeps in front of every packet, so that a
// packet read from the TUN can be framed in place (the data plane keeps
// wire.HeaderLen bytes for the 103 header) and backends that need a header
// of their own have room for it.
type Device interface {
	// Name is the kernel's name of the interface.
	Name() string
	// BatchSize is the most packets one Read returns or one Write takes
	// at a time with benefit.
	BatchSize() int
	// Read reads one or more packets into bufs[i][offset:], setting
	// sizes[i], and returns how many it read. It blocks until at least one
	// packet is available or the device is closed (os.ErrClosed).
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes the packets bufs[i][offset:] and returns how many were
	// written. offset must be at least WriteHeadroom(). A backend may use
	// the headroom and, to coalesce packets, spare capacity after a packet:
	// the buffers are scratch for it. Safe for concurrent use.
	Write(bufs [][]byte, offset int) (int, error)
	// WriteHeadroom is the room a backend needs in front of each packet
	// given to Write.
	WriteHeadroom() int
	// Close closes the device; a blocked Read returns.
	Close() error
}

// Backend names a TUN implementation.
type Backend string

// Backends.
const (
	// BackendWater: github.com/songgao/water, one packet per system call.
	BackendWater Backend = "water"
	// BackendOffload: IFF_VNET_HDR with TSO/checksum offload through
	// wireguard-go's tun package; reads split the kernel's TCP
	// super-packets into MTU-sized packets, writes coalesce (GRO).
	BackendOffload Backend = "offload"
)

// Backends lists the backends Open knows, for flag help and validation.
func Backends() []Backend { return []Backend{BackendWater, BackendOffload} }

// Config describes the interface to create.
type Config struct {
	// Name of the interface; the kernel picks one when empty.
	Name string
	// Backend to use; water when empty.
	Backend Backend
	// MTU, set by backends that configure it themselves (offload); others
	// leave it to netcfg.
	MTU int
}

// Open creates (or attaches to) the TUN interface.
func Open(c Config) (Device, error) {
	switch c.Backend {
	case "", BackendWater:
		return openWater(c)
	case BackendOffload:
		return openOffload(c)
	}
	return nil, fmt.Errorf("unknown TUN backend %q (known: %v)", c.Backend, Backends())
}

// IsClosed reports whether err means the device was closed.
func IsClosed(err error) bool { return errors.Is(err, os.ErrClosed) }
