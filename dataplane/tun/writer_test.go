package tun

import (
	"bytes"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/fourover6/fourover6/dataplane/netcfg"
	"github.com/fourover6/fourover6/test/netnstest"
	"github.com/vishvananda/netns"
)

// TestWritersIntoKernel: each backend's own Writer, on a real TUN, as the
// data plane and the client use it. The kernel's receive counters of the
// interface show what it took: water one write per packet, offload one
// super-packet for a run of a flow, every payload byte either way.
func TestWritersIntoKernel(t *testing.T) {
	for _, backend := range Backends() {
		t.Run(string(backend), func(t *testing.T) {
			var dev Device
			var netDev *os.File
			netnstest.Do(t, func(netns.NsHandle) {
				var err error
				if dev, err = Open(Config{Name: "t4o6w", Backend: backend, MTU: 1500}); err != nil {
					t.Errorf("open: %v", err)
					return
				}
				if err := netcfg.Configure(netcfg.LinkConfig{Name: dev.Name(), MTU: 1500, Addr: netip.MustParsePrefix("13.8.0.1/24")}); err != nil {
					t.Errorf("configure: %v", err)
				}
				if netDev, err = os.Open("/proc/thread-self/net/dev"); err != nil {
					t.Errorf("open /proc/net/dev: %v", err)
				}
			})
			if t.Failed() {
				return
			}
			defer dev.Close()
			defer netDev.Close()
			bytes0, writes0 := rxCounters(t, netDev, dev.Name())

			const segs, mss = 10, 1400
			w := dev.NewWriter()
			for i := range segs {
				if err := w.WritePacket(tcpSeg(uint32(1000+i*mss), tcpFlagACK, mss, 4000)); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if n := w.Buffered(); n != 0 {
				t.Fatalf("Buffered = %d after Flush", n)
			}
			bytes1, writes1 := rxCounters(t, netDev, dev.Name())
			const hdrs = 20 + 32 // tcpSeg's IPv4 and TCP headers
			wantWrites := int64(segs)
			if backend == BackendOffload {
				wantWrites = 1
			}
			if got := writes1 - writes0; got != wantWrites {
				t.Errorf("%d writes reached the kernel, want %d", got, wantWrites)
			}
			if got := (bytes1 - bytes0) - (writes1-writes0)*hdrs; got != segs*mss {
				t.Errorf("%d payload bytes reached the kernel, want %d", got, segs*mss)
			}
		})
	}
}

// rxCounters reads an interface's receive bytes and packets from
// /proc/net/dev (for a TUN: what user space wrote to it).
func rxCounters(t *testing.T, f *os.File, name string) (rxBytes, rxPackets int64) {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, _ := f.ReadAt(buf, 0)
	for line := range bytes.SplitSeq(buf[:n], []byte("\n")) {
		dev, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(bytes.TrimSpace(dev)) != name {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) < 2 {
			break
		}
		b, err1 := strconv.ParseInt(string(f[0]), 10, 64)
		p, err2 := strconv.ParseInt(string(f[1]), 10, 64)
		if err1 != nil || err2 != nil {
			break
		}
		return b, p
	}
	t.Fatalf("no counters for %s in /proc/net/dev", name)
	return 0, 0
}
