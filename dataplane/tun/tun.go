// Package tun hides the TUN interface behind a small interface (batched
// reads in the shape of wireguard-go's tun.Device, and a Writer each backend
// makes its own), so the forwarding loops do not care which backend moves
// the packets. water is the plain backend named by the design; faster ones
// can sit beside it; auto picks offload where the kernel supports it.
package tun

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Device is an open TUN interface carrying raw IP packets (no packet-info
// prefix).
//
// Reads come in batches: packets land at bufs[i][offset:], the offset being
// headroom the caller keeps in front of every packet, so that a packet read
// from the TUN can be framed in place (the data plane keeps wire.HeaderLen
// bytes for the 103 header).
//
// Writes go through a Writer, one per writing goroutine, which each backend
// makes its own: water writes every packet with one system call, offload
// merges consecutive TCP segments of a flow into one super-packet.
type Device interface {
	// Name is the kernel's name of the interface.
	Name() string
	// BatchSize is the most packets one Read returns.
	BatchSize() int
	// Read reads one or more packets into bufs[i][offset:], setting
	// sizes[i], and returns how many it read. It blocks until at least one
	// packet is available or the device is closed (os.ErrClosed).
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// NewWriter returns a Writer of packets to the device, for one
	// goroutine; the writers of one device may write concurrently.
	NewWriter() Writer
	// Close closes the device; a blocked Read returns.
	Close() error
}

// Writer writes packets to a Device for one goroutine. It may keep copies
// of packets to write several as one (the caller may reuse a packet's
// buffer once WritePacket returns): callers Flush when they have nothing
// more to write for now.
type Writer interface {
	// WritePacket writes pkt, one IP packet of at most 64 KiB, or keeps a
	// copy of it to write with the packets that follow. An error is that
	// of a write WritePacket did: of pkt, or of packets kept before it.
	WritePacket(pkt []byte) error
	// Buffered is the number of packets kept and not yet written.
	Buffered() int
	// Flush writes the packets kept and lets go of the writer's buffers:
	// an idle writer holds no memory.
	Flush() error
}

// NewPacketWriter returns a Writer that writes each packet at once with one
// w.Write: the write path of devices that take a packet per system call
// (water), and of stand-ins for a device in tests.
func NewPacketWriter(w io.Writer) Writer { return packetWriter{w} }

type packetWriter struct{ w io.Writer }

func (p packetWriter) WritePacket(pkt []byte) error {
	_, err := p.w.Write(pkt)
	return err
}

func (packetWriter) Buffered() int { return 0 }
func (packetWriter) Flush() error  { return nil }

// Backend names a TUN implementation.
type Backend string

// Backends.
const (
	// BackendAuto: offload where the kernel supports it (IFF_VNET_HDR and
	// TUNSETOFFLOAD succeed), water otherwise. Open reports which.
	BackendAuto Backend = "auto"
	// BackendWater: github.com/songgao/water, one packet per system call.
	BackendWater Backend = "water"
	// BackendOffload: IFF_VNET_HDR with TSO/checksum offload through
	// wireguard-go's tun package; reads split the kernel's TCP
	// super-packets into MTU-sized packets, writes coalesce TCP segments
	// into super-packets (our own coalescer, gro.go).
	BackendOffload Backend = "offload"
)

// Backends lists the implementations Open can use (what auto picks from).
func Backends() []Backend { return []Backend{BackendWater, BackendOffload} }

// Choices lists the names Open takes, for flag help and validation: auto
// and every backend.
func Choices() []Backend { return []Backend{BackendAuto, BackendWater, BackendOffload} }

// Config describes the interface to create.
type Config struct {
	// Name of the interface; the kernel picks one when empty.
	Name string
	// Backend to use; water when empty (the daemons' flags default to
	// auto).
	Backend Backend
	// MTU, set by backends that configure it themselves (offload); others
	// leave it to netcfg.
	MTU int
}

// Opened says which backend Open used, and why, for the log.
type Opened struct {
	Backend Backend
	Reason  string
}

// Open creates (or attaches to) the TUN interface.
func Open(c Config) (Device, error) {
	dev, _, err := OpenReport(c)
	return dev, err
}

// openOffloadFn is openOffload; tests stand in a kernel without offloads.
var openOffloadFn = openOffload

// OpenReport is Open that also says which backend it used and why: with
// auto, offload when the kernel takes IFF_VNET_HDR and TUNSETOFFLOAD, water
// (one packet per system call, several times slower) when it does not.
func OpenReport(c Config) (Device, Opened, error) {
	switch c.Backend {
	case "", BackendWater:
		dev, err := openWater(c)
		return dev, Opened{BackendWater, "chosen by name"}, err
	case BackendOffload:
		dev, err := openOffloadFn(c)
		return dev, Opened{BackendOffload, "chosen by name"}, err
	case BackendAuto:
		dev, err := openOffloadFn(c)
		if err == nil {
			return dev, Opened{BackendOffload, "auto: the kernel takes IFF_VNET_HDR and TUNSETOFFLOAD (TSO, checksum offload)"}, nil
		}
		var nk *noOffloadError
		if !errors.As(err, &nk) {
			// Not about offloads (no /dev/net/tun, the name busy, no
			// permission): water would fail the same way.
			return nil, Opened{BackendAuto, ""}, err
		}
		dev, werr := openWater(c)
		if werr != nil {
			return nil, Opened{BackendWater, ""}, fmt.Errorf("%w (offload was tried first: %v)", werr, err)
		}
		return dev, Opened{BackendWater, "auto: offload unavailable (" + nk.Error() + "); water moves one packet per system call"}, nil
	}
	return nil, Opened{}, fmt.Errorf("unknown TUN backend %q (known: %v)", c.Backend, Choices())
}

// noOffloadError: the kernel refused what the offload backend needs.
type noOffloadError struct {
	what string
	err  error
}

func (e *noOffloadError) Error() string {
	if e.err == nil {
		return e.what
	}
	return e.what + ": " + e.err.Error()
}

func (e *noOffloadError) Unwrap() error { return e.err }

// IsClosed reports whether err means the device was closed.
func IsClosed(err error) bool { return errors.Is(err, os.ErrClosed) }
