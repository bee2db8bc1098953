package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// captureDataplane is a data plane whose CaptureClient plays a canned
// capture of 13.8.0.2.
type captureDataplane struct {
	*fakeDataplane
	got chan *dpv1.CaptureClientRequest
}

var (
	capIn      = []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 13, 8, 0, 2, 198, 51, 100, 2}
	capOut     = []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 198, 51, 100, 2, 13, 8, 0, 2}
	capSpoofed = []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 13, 8, 0, 99, 198, 51, 100, 2}
)

func (f *captureDataplane) CaptureClient(r *dpv1.CaptureClientRequest, stream grpc.ServerStreamingServer[dpv1.CaptureClientResponse]) error {
	f.got <- r
	if r.GetAddress() != "13.8.0.2" {
		return status.Error(codes.NotFound, "no client holds "+r.GetAddress())
	}
	ts := timestamppb.New(t0)
	msgs := []*dpv1.CaptureClientResponse{
		{Start: &dpv1.CaptureStart{DataplaneId: "dp1", SessionId: "s-2", Address: "13.8.0.2", ClientIpv6: "fd00:46::2",
			ClientPort: 51234, Snaplen: 65535, StartedAt: ts}},
		{Packets: []*dpv1.CapturedPacket{
			{Time: ts, Direction: dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT, Length: 20, Data: capIn},
			{Time: ts, Direction: dpv1.CaptureDirection_CAPTURE_DIRECTION_TO_CLIENT, Length: 20, Data: capOut},
		}},
		{Packets: []*dpv1.CapturedPacket{
			{Time: ts, Direction: dpv1.CaptureDirection_CAPTURE_DIRECTION_FROM_CLIENT, DropReason: "spoofed_source", Length: 20, Data: capSpoofed, Lost: 3},
		}},
		{End: &dpv1.CaptureEnd{Reason: "count", Captured: 3, Lost: 3, EndedAt: ts}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func newCaptureDataplane() *captureDataplane {
	return &captureDataplane{fakeDataplane: newDataplane("dp1"), got: make(chan *dpv1.CaptureClientRequest, 4)}
}

type readPacket struct {
	data     []byte
	dir      pcapgo.NgEpbFlag
	comments []string
	dropped  uint64
}

func readPcapng(t *testing.T, b []byte) ([]readPacket, pcapgo.NgInterface) {
	t.Helper()
	r, err := pcapgo.NewNgReader(bytes.NewReader(b), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("not pcapng: %v", err)
	}
	var out []readPacket
	for {
		data, _, opts, err := r.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading packet %d: %v", len(out), err)
		}
		p := readPacket{data: data, comments: opts.Comments}
		if opts.Flags != nil {
			p.dir = opts.Flags.Direction
		}
		if opts.DropCount != nil {
			p.dropped = *opts.DropCount
		}
		out = append(out, p)
	}
	intf, err := r.Interface(0)
	if err != nil {
		t.Fatal(err)
	}
	return out, intf
}

func TestClientsCapture(t *testing.T) {
	t.Parallel()
	dp := newCaptureDataplane()
	ctrl := newController()
	addr := serve(t, ctrl, dp)
	for _, d := range ctrl.dataplanes {
		if d.GetDataplaneId() == "dp1" {
			d.ApiAddress = addr // the controller names the data plane holding the client
		}
	}
	file := filepath.Join(t.TempDir(), "c.pcapng")
	r := ctl(t, nil, "--controller", addr, "clients", "capture", "13.8.0.2", "-c", "3", "--duration", "1m", "--snaplen", "100000", "-w", file).expect(t, 0)
	req := <-dp.got
	if req.GetCount() != 3 || req.GetDurationMs() != 60000 || req.GetSnaplen() != 65535 {
		t.Errorf("request = %v, want count 3, 60000 ms, snaplen cut to 65535", req)
	}
	for _, s := range []string{"3 packets captured", "2 from the client", "1 to it", "1 dropped", "3 lost", "ended: count"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("summary lacks %q: %s", s, r.stderr)
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pkts, intf := readPcapng(t, b)
	if intf.LinkType != layers.LinkTypeRaw || !strings.Contains(intf.Description, "13.8.0.2") || !strings.Contains(intf.Description, "dp1") {
		t.Errorf("interface = %+v", intf)
	}
	want := []readPacket{
		{data: capIn, dir: pcapgo.NgEpbFlagDirectionInbound},
		{data: capOut, dir: pcapgo.NgEpbFlagDirectionOutbound},
		{data: capSpoofed, dir: pcapgo.NgEpbFlagDirectionInbound, comments: []string{"dropped: spoofed_source"}, dropped: 3},
	}
	if len(pkts) != len(want) {
		t.Fatalf("%d packets in the file, want %d", len(pkts), len(want))
	}
	for i, w := range want {
		p := pkts[i]
		if !bytes.Equal(p.data, w.data) || p.dir != w.dir || strings.Join(p.comments, "|") != strings.Join(w.comments, "|") || p.dropped != w.dropped {
			t.Errorf("packet %d = %+v, want %+v", i, p, w)
		}
	}

	// To standard output, as pcap, with the summary as JSON on stderr; the
	// data plane given directly.
	r = ctl(t, nil, "--dataplane", addr, "clients", "capture", "13.8.0.2", "--format", "pcap", "-o", "json").expect(t, 0)
	pr, err := pcapgo.NewReader(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("stdout is not pcap: %v", err)
	}
	n := 0
	for {
		if _, _, err := pr.ReadPacketData(); err != nil {
			break
		}
		n++
	}
	if n != 3 || pr.LinkType() != layers.LinkTypeRaw {
		t.Errorf("pcap: %d packets, link type %v; want 3, raw", n, pr.LinkType())
	}
	var sum CaptureSummary
	if err := json.Unmarshal([]byte(r.stderr), &sum); err != nil {
		t.Fatalf("summary: %v\n%s", err, r.stderr)
	}
	if sum.Captured != 3 || sum.Lost != 3 || sum.Ended != "count" || sum.Dataplane != "dp1" || sum.Session != "s-2" || sum.File != "-" || sum.Format != "pcap" {
		t.Errorf("summary = %+v", sum)
	}
	<-dp.got

	// Nobody holds the address: exit 4, from the controller.
	ctl(t, nil, "--controller", addr, "clients", "capture", "13.8.0.77").expect(t, 4)
	// ... or from the data plane.
	ctl(t, nil, "--dataplane", addr, "clients", "capture", "13.8.0.77", "-w", filepath.Join(t.TempDir(), "x")).expect(t, 4)
	<-dp.got
	for _, bad := range [][]string{
		{"clients", "capture", "fd00::1"},
		{"clients", "capture", "13.8.0.2", "--format", "json"},
		{"clients", "capture", "13.8.0.2", "--snaplen", "-1"},
		{"clients", "capture", "13.8.0.2", "-w", ""},
	} {
		ctl(t, nil, append([]string{"--controller", addr}, bad...)...).expect(t, 2)
	}
	select {
	case r := <-dp.got:
		t.Errorf("a bad command reached the data plane: %v", r)
	case <-time.After(10 * time.Millisecond):
	}
}
