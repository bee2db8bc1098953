package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// CaptureRun is one iperf3 cell through our tunnel without a capture and
// with "4over6ctl clients capture" of the client running all along: what a
// capture costs the client (it loses capture packets rather than slow the
// client down).
type CaptureRun struct {
	Backend          string  `json:"backend"`
	Direction        string  `json:"direction"`
	Streams          int     `json:"streams"`
	GbpsNoCapture    float64 `json:"gbps_no_capture"`
	GbpsCapture      float64 `json:"gbps_capture"`
	Ratio            float64 `json:"ratio"` // gbps_capture / gbps_no_capture
	CapturedPackets  uint64  `json:"captured_packets"`
	LostPackets      uint64  `json:"lost_packets"` // lost by the capture (its reader was too slow)
	CaptureSummaryOK bool    `json:"capture_summary_ok"`
	Error            string  `json:"error,omitempty"`
}

// capturePort is the capture section's iperf3 port.
const capturePort = 5230

// runCapture measures each direction with one stream, without and then
// with a capture writing to /dev/null, on the first backend measured.
func (l *lab) runCapture(ctx context.Context, rep *Report) {
	backend := l.o.backends[0]
	fail := func(step string, err error) {
		rep.addError(secCapture, step, err)
		rep.Capture = append(rep.Capture, CaptureRun{Backend: backend, Error: step + ": " + err.Error()})
	}
	ctl := l.bin("4over6ctl")
	if !fileExists(ctl) {
		fail("4over6ctl", fmt.Errorf("%s missing: run make build", ctl))
		return
	}
	teardown, err := l.setupPath(ctx, path{name: "ours-" + backend, kind: KindOurs, backend: backend}, rep)
	if err != nil {
		fail("setup", err)
		return
	}
	defer teardown()
	srv, err := l.startIperfServer(gateway, capturePort)
	if err != nil {
		fail("iperf3 server", err)
		return
	}
	defer srv.stop()
	addr, err := l.clientAddr(ctx, ctl)
	if err != nil {
		fail("client address", err)
		return
	}
	for _, dir := range []string{"upload", "download"} {
		if ctx.Err() != nil {
			return
		}
		r := CaptureRun{Backend: backend, Direction: dir, Streams: 1}
		run := iperfRun{seconds: l.o.iperfSeconds, omit: l.o.iperfOmit, streams: 1, reverse: dir == "download"}
		g, _, err := l.runIperf(ctx, srv, run)
		if err != nil {
			r.Error = "without capture: " + err.Error()
			rep.addError(secCapture, dir+" without capture", err)
			rep.Capture = append(rep.Capture, r)
			continue
		}
		r.GbpsNoCapture = g
		l.log.Info("capture bench", "direction", dir, "gbps_no_capture", round2(g))
		capt, err := l.start(l.srv, "capture-"+dir, ctl, "--controller", "unix://"+l.ctlSock,
			"clients", "capture", addr, "-w", "/dev/null", "-o", "json")
		if err == nil {
			// The capture is attached once the data plane answered it:
			// its start is quick; a short wait keeps the run honest.
			time.Sleep(500 * time.Millisecond)
			if capt.exited() {
				err = capt.failure(fmt.Errorf("capture exited"))
			}
		}
		if err == nil {
			g, _, err = l.runIperf(ctx, srv, run)
			capt.stop(10 * time.Second) // SIGTERM: the capture ends as on Ctrl-C
			r.GbpsCapture = g
			if b, rerr := os.ReadFile(capt.log); rerr == nil {
				var s struct {
					Captured uint64 `json:"captured"`
					Lost     uint64 `json:"lost"`
				}
				if json.Unmarshal([]byte(strings.TrimSpace(string(b))), &s) == nil {
					r.CapturedPackets, r.LostPackets, r.CaptureSummaryOK = s.Captured, s.Lost, true
				}
			}
		}
		if err != nil {
			r.Error = "with capture: " + err.Error()
			rep.addError(secCapture, dir+" with capture", err)
		} else if r.GbpsNoCapture > 0 {
			r.Ratio = round3(r.GbpsCapture / r.GbpsNoCapture)
		}
		l.log.Info("capture bench", "direction", dir, "gbps_capture", round2(r.GbpsCapture), "ratio", r.Ratio,
			"captured", r.CapturedPackets, "lost", r.LostPackets)
		rep.Capture = append(rep.Capture, r)
	}
}

// clientAddr is the address of the one client in the client table.
func (l *lab) clientAddr(ctx context.Context, ctl string) (string, error) {
	var addr string
	err := waitFor(ctx, 20*time.Second, "the client in the client table", func() bool {
		out, err := output(ctx, l.srv, 5*time.Second, ctl, "--controller", "unix://"+l.ctlSock, "clients", "list", "-o", "json")
		if err != nil {
			return false
		}
		var cs []struct {
			IPv4 string `json:"ipv4"`
		}
		if json.Unmarshal([]byte(out), &cs) != nil || len(cs) == 0 {
			return false
		}
		addr = cs[0].IPv4
		return true
	})
	return addr, err
}

func captureTable(rep *Report) table {
	t := table{title: "Capture: iperf3 -P1 through our tunnel, without and with 4over6ctl clients capture of the client running",
		header: []string{"backend", "direction", "Gbit/s without", "Gbit/s with capture", "ratio", "captured", "lost by the capture"}}
	for _, r := range rep.Capture {
		if r.Error != "" && r.GbpsNoCapture == 0 {
			t.rows = append(t.rows, []string{r.Backend, r.Direction, "ERR", "", "", "", ""})
			continue
		}
		t.rows = append(t.rows, []string{r.Backend, r.Direction, f2(r.GbpsNoCapture), f2(r.GbpsCapture), f3(r.Ratio),
			fmt.Sprint(r.CapturedPackets), fmt.Sprint(r.LostPackets)})
	}
	t.notes = []string{"the capture goes to /dev/null through the data plane's API and 4over6ctl on the same host: the machine's CPUs are shared by forwarding and the capture; a reader that cannot keep up loses capture packets, never the client's"}
	return t
}
