package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// path is one way from the client namespace to the server namespace that
// iperf3 and ping measure.
type path struct {
	name    string // raw, kernel, ours-<backend>, wireguard-go, openvpn-tcp
	kind    string
	backend string // ours only: default (no flag), offload, water
	ref     string // reference only: refWireguardGo, refOpenVPN
	bin     string // ours only: where the binaries are (empty: -bin)
	target  string // server address: iperf3 binds to it, the client dials it
	port    int    // iperf3 port: one per path, so a slow teardown never collides
}

// cells are the iperf3 runs of every path, in table order.
var cells = []struct {
	direction string
	streams   int
}{{"upload", 1}, {"upload", 4}, {"download", 1}, {"download", 4}}

func (l *lab) paths() []path {
	ps := []path{
		{name: "raw", kind: KindRaw, target: serverV6, port: 5201},
		{name: "kernel", kind: KindKernel, target: kernelSrvV4, port: 5202},
	}
	for i, b := range l.o.backends {
		ps = append(ps, path{name: "ours-" + b, kind: KindOurs, backend: b, target: gateway, port: 5203 + i})
	}
	if l.o.baselineBin != "" {
		ps = append(ps, path{name: baselinePath, kind: KindOurs, backend: backendDefault, bin: l.o.baselineBin, target: gateway, port: 5209})
	}
	for i, r := range l.o.refs {
		ps = append(ps, path{name: refPath(r), kind: KindRef, ref: r, target: refServerV4(r), port: 5210 + i})
	}
	return ps
}

// runPaths measures throughput and RTT on every path. A path that cannot
// be set up gets error rows; the others still run.
func (l *lab) runPaths(ctx context.Context, rep *Report) {
	for _, p := range l.paths() {
		if ctx.Err() != nil {
			return
		}
		l.log.Info("path", "name", p.name)
		teardown, err := l.setupPath(ctx, p, rep)
		var skip *skipError
		if errors.As(err, &skip) {
			// A reference tunnel that cannot be had here is left out
			// with its reason; it is not a failure of ours.
			l.log.Warn("reference tunnel skipped", "path", p.name, "reason", skip.reason)
			rep.Skipped = append(rep.Skipped, Skip{Section: "paths", Path: p.name, Reason: skip.reason})
			continue
		}
		if err != nil {
			l.failPath(p, rep, "setup", err)
			continue
		}
		srv, err := l.startIperfServer(p.target, p.port)
		if err != nil {
			rep.addError("throughput", p.name+" iperf3 server", err)
		}
		if l.o.has(secThroughput) {
			for _, c := range cells {
				t := Through{Path: p.name, Kind: p.kind, Backend: p.backend, Direction: c.direction, Streams: c.streams}
				if srv == nil {
					t.Error = "no iperf3 server"
				} else {
					l.log.Info("iperf3", "path", p.name, "direction", c.direction, "streams", c.streams)
					err = l.runCell(ctx, srv, &t)
					if err != nil {
						t.Error = err.Error()
						rep.addError(secThroughput, fmt.Sprintf("%s %s x%d", p.name, c.direction, c.streams), err)
					} else {
						l.log.Info("iperf3 result", "path", p.name, "direction", c.direction, "streams", c.streams, "gbps", round2(t.Gbps))
					}
				}
				rep.Throughput = append(rep.Throughput, t)
			}
		}
		if l.o.has(secRTT) {
			for _, r := range l.measureRTT(ctx, p, srv) {
				if r.Error != "" {
					rep.addError(secRTT, strings.TrimSpace(p.name+" "+r.Load+" "+r.LoadDirection), fmt.Errorf("%s", r.Error))
				}
				rep.RTT = append(rep.RTT, r)
			}
		}
		if srv != nil {
			srv.stop()
		}
		teardown()
	}
	if l.o.has(secRTT) && ctx.Err() == nil {
		r := l.measureGoEcho(ctx)
		if r.Error != "" {
			rep.addError(secRTT, r.Path, fmt.Errorf("%s", r.Error))
		}
		rep.RTT = append(rep.RTT, r)
	}
	computeRatios(rep)
}

// runCell runs one iperf3 cell -repeat times and keeps the median run.
func (l *lab) runCell(ctx context.Context, srv *iperfServer, t *Through) error {
	type sample struct {
		gbps    float64
		retrans int
	}
	var ss []sample
	for range l.o.repeat {
		g, r, err := l.runIperf(ctx, srv, iperfRun{
			seconds: l.o.iperfSeconds, omit: l.o.iperfOmit, streams: t.Streams, reverse: t.Direction == "download"})
		if err != nil {
			return err
		}
		ss = append(ss, sample{g, r})
		t.SamplesGbps = append(t.SamplesGbps, round3(g))
	}
	slices.SortFunc(ss, func(a, b sample) int { return cmp.Compare(a.gbps, b.gbps) })
	m := ss[len(ss)/2] // the upper median for an even count: a real run, not an average
	t.Gbps, t.Retransmits = m.gbps, m.retrans
	return nil
}

// setupPath brings a path up and returns how to take it down again.
func (l *lab) setupPath(ctx context.Context, p path, rep *Report) (func(), error) {
	switch p.kind {
	case KindRaw:
		return func() {}, nil
	case KindKernel:
		kind, note, err := l.kernelEncap()
		rep.Config.KernelEncap, rep.Config.KernelEncapNote = kind, note
		if err != nil {
			return nil, err
		}
		l.log.Info("kernel encapsulation", "kind", kind)
		// A first packet resolves the inner neighbour (vxlan) before timing.
		output(ctx, l.cli, 5*time.Second, "ping", "-n", "-c", "1", "-W", "2", p.target)
		return l.kernelTeardown, nil
	case KindRef:
		return l.setupRef(ctx, p, rep)
	}
	if l.ctl == nil || l.ctl.exited() {
		if err := l.startController(ctx); err != nil {
			return nil, err
		}
	}
	bin := cmp.Or(p.bin, l.o.bin)
	dp, err := l.startDataplaneBin(ctx, bin, "bench-"+p.backend, p.backend)
	if err != nil {
		return nil, err
	}
	cl, err := l.startClientIn(ctx, bin, l.cli, "client-"+p.backend, serverV6, p.backend)
	if err != nil {
		dp.stop(10 * time.Second)
		return nil, err
	}
	return func() {
		cl.stop(10 * time.Second)
		dp.stop(10 * time.Second)
	}, nil
}

func (l *lab) failPath(p path, rep *Report, step string, err error) {
	rep.addError("paths", p.name+" "+step, err)
	if l.o.has(secThroughput) {
		for _, c := range cells {
			rep.Throughput = append(rep.Throughput, Through{Path: p.name, Kind: p.kind, Backend: p.backend,
				Direction: c.direction, Streams: c.streams, Error: "path setup failed: " + err.Error()})
		}
	}
	if l.o.has(secRTT) {
		for _, ld := range rttLoads {
			rep.RTT = append(rep.RTT, RTT{Path: p.name, Kind: p.kind, Backend: p.backend, Load: ld.load, LoadDirection: ld.direction,
				Error: "path setup failed: " + err.Error()})
		}
	}
}

// computeRatios fills ours/raw and ours/kernel (and the same for the
// reference tunnels) for every cell, and the idle RTT added over raw.
func computeRatios(rep *Report) {
	find := func(kind, dir string, streams int) *Through {
		for i := range rep.Throughput {
			t := &rep.Throughput[i]
			if t.Kind == kind && t.Direction == dir && t.Streams == streams && t.Error == "" && t.Gbps > 0 {
				return t
			}
		}
		return nil
	}
	for i := range rep.Throughput {
		t := &rep.Throughput[i]
		if (t.Kind != KindOurs && t.Kind != KindRef) || t.Error != "" {
			continue
		}
		if r := find(KindRaw, t.Direction, t.Streams); r != nil {
			t.RatioRaw = ptr(round3(t.Gbps / r.Gbps))
		}
		if k := find(KindKernel, t.Direction, t.Streams); k != nil {
			t.RatioKernel = ptr(round3(t.Gbps / k.Gbps))
		}
	}
	var raw *RTT
	for i := range rep.RTT {
		if r := &rep.RTT[i]; r.Kind == KindRaw && r.Load == "idle" && r.Error == "" {
			raw = r
		}
	}
	if raw == nil {
		return
	}
	for i := range rep.RTT {
		r := &rep.RTT[i]
		if r.Kind != KindRaw && r.Load == "idle" && r.Error == "" {
			r.AddedAvgUs = ptr(round1(r.AvgUs - raw.AvgUs))
			r.AddedP50Us = ptr(round1(r.P50Us - raw.P50Us))
		}
	}
}

func ptr[T any](v T) *T { return &v }

func round2(v float64) float64 { return math.Round(v*100) / 100 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func (rep *Report) addError(section, step string, err error) {
	rep.Errors = append(rep.Errors, RunError{Section: section, Step: step, Error: err.Error()})
}
