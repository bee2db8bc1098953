package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// maxSnaplen is the longest IPv4 packet: a larger --snaplen keeps it whole.
const maxSnaplen = 65535

type captureFlags struct {
	file     string
	count    uint64
	duration time.Duration
	snaplen  int
	format   string
}

func (a *app) clientsCaptureCommand() *cobra.Command {
	var f captureFlags
	cmd := &cobra.Command{
		Use:   "capture ADDR",
		Short: "Capture the packets of the client holding an IPv4 address, to pcapng",
		Long: `Capture the IPv4 packets of the client holding ADDR, both ways, on the data
plane that holds it: the packets it sends (102s) as the data plane received
them, those the data plane dropped included, and the packets sent to it
(103s). The output is pcapng (--format pcap for the older format) to -w FILE,
or to standard output, for tcpdump -r - or Wireshark; each packet records its
direction (pcapng flags: inbound = from the client, outbound = to it) and,
when the data plane dropped it, a comment "dropped: REASON" (a drop reason of
"dataplane status").

The data plane is found through the controller (the client table names it,
the data plane registry its API address), unless --dataplane or
$FOUROVER6_DATAPLANE names it. The capture ends after -c packets, after
--duration, when the client disconnects, or on Ctrl-C; then a summary goes to
stderr (in the -o format): packets captured, and packets lost because this
reader was too slow (the capture never slows the client's traffic: it loses
packets instead). Capturing needs the operator role on the data plane, and
each capture is audited there.

--timeout applies to finding the client and starting the capture, not to the
capture itself.`,
		Example: `  4over6ctl clients capture 13.8.0.2 -c 4 -w ping.pcapng
  4over6ctl clients capture 13.8.0.2 | tcpdump -n -r -
  4over6ctl clients capture 13.8.0.2 --duration 30s --snaplen 128 -w head.pcapng`,
		Args: ipv4Arg,
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, _ := parseIPv4(args[0])
			return a.capture(cmd, addr, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "write", "w", "-", "write the capture to this file (- for standard output)")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many packets (0: no limit)")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this long, e.g. 30s (0: no limit)")
	fl.IntVar(&f.snaplen, "snaplen", 0, "bytes kept of each packet (0: all of it)")
	fl.StringVar(&f.format, "format", "pcapng", "file format: pcapng (directions and drop reasons per packet) or pcap")
	return needs(cmd, needController)
}

func (f *captureFlags) check() error {
	if f.snaplen < 0 {
		return usageErrorf("invalid --snaplen %d: give a number of bytes, or 0 for whole packets", f.snaplen)
	}
	if f.duration < 0 {
		return usageErrorf("invalid --duration %v: must not be negative", f.duration)
	}
	switch f.format {
	case "pcapng", "pcap":
	default:
		return usageErrorf("invalid --format %q: want pcapng or pcap", f.format)
	}
	if f.file == "" {
		return usageError("invalid -w \"\": give a file name, or - for standard output")
	}
	return nil
}

func (a *app) capture(cmd *cobra.Command, addr netip.Addr, f captureFlags) error {
	if err := f.check(); err != nil {
		return err
	}
	var out io.Writer = a.stdout
	if f.file == "-" {
		if isTerminal(a.stdout) {
			return usageError("refusing to write a binary capture to a terminal: give -w FILE, or pipe it (| tcpdump -n -r -)")
		}
	} else {
		file, err := os.OpenFile(f.file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return &cliError{code: exitError, msg: fmt.Sprintf("cannot write the capture: %v", err)}
		}
		defer file.Close()
		out = file
	}
	if err := a.captureDataplane(cmd, addr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(cmd.Context())
	defer cancel(nil)
	// --timeout bounds the start only: the wait for the first message.
	var timer *time.Timer
	if a.timeout > 0 {
		timer = time.AfterFunc(a.timeout, func() { cancel(errNoFirstEvent) })
		defer timer.Stop()
	}
	snaplen := min(f.snaplen, maxSnaplen)
	stream, err := a.dp().CaptureClient(ctx, &dpv1.CaptureClientRequest{
		Address: addr.String(), Snaplen: uint32(snaplen), Count: f.count, DurationMs: uint64(f.duration.Milliseconds()),
	})
	var first *dpv1.CaptureClientResponse
	if err == nil {
		first, err = stream.Recv()
	}
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errNoFirstEvent) {
			return &cliError{code: exitError, msg: fmt.Sprintf("dataplane at %s did not start the capture within %v", a.dataplane.addressText(), a.timeout)}
		}
		return notFound(a.rpcError(a.dataplane, err), "no client holds %s on the data plane at %s", addr, a.dataplane.addressText())
	}
	st := first.GetStart()
	if st == nil {
		return &cliError{code: exitError, msg: fmt.Sprintf("dataplane at %s: the capture did not start with its description", a.dataplane.addressText())}
	}
	w, err := newCaptureWriter(out, f.format, st)
	if err != nil {
		return &cliError{code: exitError, msg: fmt.Sprintf("cannot write the capture: %v", err)}
	}
	sum := CaptureSummary{
		IPv4: addr.String(), Dataplane: st.GetDataplaneId(), Session: st.GetSessionId(),
		File: f.file, Format: f.format, StartedAt: timestamp(st.GetStartedAt()),
	}
	var recvErr error
	for {
		m, err := stream.Recv()
		if err != nil {
			recvErr = err
			break
		}
		for _, p := range m.GetPackets() {
			if err := w.write(p); err != nil {
				return &cliError{code: exitError, msg: fmt.Sprintf("cannot write the capture: %v", err)}
			}
			sum.add(p)
		}
		if err := w.flush(); err != nil {
			if isBrokenPipe(err) {
				cancel(nil) // the reader (tcpdump -c) is done: so are we
				recvErr = io.EOF
				sum.Ended = "reader_closed"
				break
			}
			return &cliError{code: exitError, msg: fmt.Sprintf("cannot write the capture: %v", err)}
		}
		if e := m.GetEnd(); e != nil {
			sum.Ended, sum.Lost = e.GetReason(), e.GetLost()
		}
	}
	_ = w.finish(sum)
	sum.EndedAt = a.now().UTC().Format(time.RFC3339)
	switch {
	case errors.Is(recvErr, io.EOF):
	case cmd.Context().Err() != nil:
		sum.Ended = "interrupted" // Ctrl-C: the usual end of a capture
	default:
		a.captureSummary(sum)
		return a.rpcError(a.dataplane, recvErr)
	}
	a.captureSummary(sum)
	return nil
}

// captureDataplane points a.dataplane at the data plane holding addr: the
// one --dataplane or $FOUROVER6_DATAPLANE names, else the one the
// controller says holds the client.
func (a *app) captureDataplane(cmd *cobra.Command, addr netip.Addr) error {
	a.resolve(cmd.Flags(), a.dataplane)
	if a.dataplane.source != "default" {
		a.dataplane.eps = nil
		return a.connect(cmd.Flags(), a.dataplane)
	}
	ctx, cancel := a.callContext(cmd)
	defer cancel()
	resp, err := a.ctrl().GetClient(ctx, &cpv1.GetClientRequest{Address: addr.String()})
	if err != nil {
		return notFound(a.rpcError(a.controller, err), "no client holds %s", addr)
	}
	id := resp.GetClient().GetDataplaneId()
	if id == "" {
		return &cliError{code: exitNotFound, msg: fmt.Sprintf("no client holds %s", addr)}
	}
	dps, err := a.listDataplanes(ctx)
	if err != nil {
		return err
	}
	api := ""
	for _, d := range dps {
		if d.ID == id {
			api = d.APIAddress
		}
	}
	if api == "" {
		return &cliError{code: exitError, msg: fmt.Sprintf("%s is on data plane %s, which registered no API address: give it with --dataplane", addr, id)}
	}
	eps, err := endpoint.ParseList(api)
	if err != nil || len(eps) != 1 {
		return &cliError{code: exitError, msg: fmt.Sprintf("%s is on data plane %s, whose API address %q cannot be dialed: give it with --dataplane", addr, id, api)}
	}
	what := fmt.Sprintf("data plane %s's API address %s (from the controller)", id, eps[0])
	if err := a.tls.RequireForDial(what, eps[0], "--tls-cert, --tls-key and --tls-ca (or $FOUROVER6_TLS_CERT, $FOUROVER6_TLS_KEY and $FOUROVER6_TLS_CA)"); err != nil {
		return usageError(err.Error())
	}
	d := a.dataplane
	d.addr, d.source, d.eps, d.probeTimeout = api, "the controller's registry (data plane "+id+")", eps, maxProbeTimeout
	return nil
}

func (s *CaptureSummary) add(p *dpv1.CapturedPacket) {
	s.Captured++
	if p.GetDirection() == dpv1.CaptureDirection_CAPTURE_DIRECTION_TO_CLIENT {
		s.ToClient++
	} else {
		s.FromClient++
	}
	if p.GetDropReason() != "" {
		s.Dropped++
	}
	s.Lost = max(s.Lost, p.GetLost())
}

// captureSummary writes the summary to stderr: standard output may be the
// capture itself.
func (a *app) captureSummary(s CaptureSummary) {
	_ = writeFormatted(a.stderr, a.format, s, func(w io.Writer) {
		where := s.File
		if where == "-" {
			where = "standard output"
		}
		fmt.Fprintf(w, "%d packets captured (%d from the client, %d to it; %d dropped by the data plane) to %s; %d lost (this reader was too slow); ended: %s\n",
			s.Captured, s.FromClient, s.ToClient, s.Dropped, where, s.Lost, orDash(s.Ended))
	})
}

// captureWriter writes the packets as pcapng or pcap.
type captureWriter struct {
	ng      *pcapgo.NgWriter
	pcap    *pcapgo.Writer
	lost    uint64 // lost before the last packet written
	started time.Time
}

func newCaptureWriter(out io.Writer, format string, st *dpv1.CaptureStart) (*captureWriter, error) {
	snaplen := st.GetSnaplen()
	w := &captureWriter{started: st.GetStartedAt().AsTime()}
	if format == "pcap" {
		w.pcap = pcapgo.NewWriterNanos(out)
		return w, w.pcap.WriteFileHeader(snaplen, layers.LinkTypeRaw)
	}
	client := st.GetClientIpv6()
	if client != "" {
		client = netip.AddrPortFrom(netip.MustParseAddr(client), uint16(st.GetClientPort())).String()
	}
	intf := pcapgo.DefaultNgInterface
	intf.Name = "4o6:" + st.GetAddress()
	intf.Description = fmt.Sprintf("client %s (%s), session %s on data plane %s; inbound = from the client, outbound = to it",
		st.GetAddress(), orDash(client), st.GetSessionId(), st.GetDataplaneId())
	intf.LinkType = layers.LinkTypeRaw
	intf.SnapLength = snaplen
	opts := pcapgo.DefaultNgWriterOptions
	opts.SectionInfo.Application = "4over6ctl " + version.String()
	ng, err := pcapgo.NewNgWriterInterface(out, intf, opts)
	w.ng = ng
	return w, err
}

func (w *captureWriter) write(p *dpv1.CapturedPacket) error {
	data := p.GetData()
	ci := gopacket.CaptureInfo{
		Timestamp: p.GetTime().AsTime(), CaptureLength: len(data), Length: max(int(p.GetLength()), len(data)),
	}
	if w.pcap != nil {
		return w.pcap.WritePacket(ci, data)
	}
	flags := &pcapgo.NgEpbFlags{Direction: pcapgo.NgEpbFlagDirectionInbound}
	if p.GetDirection() == dpv1.CaptureDirection_CAPTURE_DIRECTION_TO_CLIENT {
		flags.Direction = pcapgo.NgEpbFlagDirectionOutbound
	}
	opts := pcapgo.NgPacketOptions{Flags: flags}
	if r := p.GetDropReason(); r != "" {
		opts.Comments = []string{"dropped: " + r}
	}
	if lost := p.GetLost(); lost > w.lost {
		// pcapng's own count of packets lost since the previous one.
		n := lost - w.lost
		opts.DropCount = &n
		w.lost = lost
	}
	return w.ng.WritePacketWithOptions(ci, data, opts)
}

func (w *captureWriter) flush() error {
	if w.ng != nil {
		return w.ng.Flush()
	}
	return nil
}

// finish ends a pcapng file with the interface's statistics: packets
// captured and lost.
func (w *captureWriter) finish(s CaptureSummary) error {
	if w.ng == nil {
		return nil
	}
	now := time.Now()
	err := w.ng.WriteInterfaceStats(0, pcapgo.NgInterfaceStatistics{
		LastUpdate: now, StartTime: w.started, EndTime: now,
		PacketsReceived: s.Captured + s.Lost, PacketsDropped: s.Lost,
	})
	if err != nil {
		return err
	}
	return w.ng.Flush()
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func isBrokenPipe(err error) bool {
	return errors.Is(err, unix.EPIPE) || strings.Contains(err.Error(), "broken pipe")
}
