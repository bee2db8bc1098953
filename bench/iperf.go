package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fourover6/fourover6/test/topo"
)

// iperfResult is the part of `iperf3 -J` output the report uses.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// parseIperf reads iperf3's JSON. The rate is the receiver's: what
// actually arrived, which is the honest number for a tunnel.
func parseIperf(out []byte) (gbps float64, retrans int, err error) {
	var r iperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, fmt.Errorf("iperf3 output is not JSON: %v: %q", err, oneLine(string(out)))
	}
	if r.Error != "" {
		return 0, 0, &iperfError{msg: r.Error}
	}
	bps := r.End.SumReceived.BitsPerSecond
	if bps == 0 {
		return 0, 0, errors.New("iperf3 reported no received bytes")
	}
	return bps / 1e9, r.End.SumSent.Retransmits, nil
}

// iperfError is the failure iperf3 reported in its JSON output.
type iperfError struct{ msg string }

func (e *iperfError) Error() string { return "iperf3: " + e.msg }

// iperfServer is an iperf3 server in the server namespace, bound to the
// path's server address; one per path, serving its runs one after another.
type iperfServer struct {
	p    *proc
	addr string
	port int
}

func (l *lab) startIperfServer(addr string, port int) (*iperfServer, error) {
	p, err := l.start(l.srv, "iperf3-server-"+strconv.Itoa(port), "iperf3", "-s", "-B", addr, "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	return &iperfServer{p: p, addr: addr, port: port}, nil
}

func (s *iperfServer) stop() { s.p.stop(5 * time.Second) }

// iperfRun is one client run against a server.
type iperfRun struct {
	seconds, omit, streams int
	reverse                bool
}

// runIperf runs the iperf3 client in the client namespace.
func (l *lab) runIperf(ctx context.Context, s *iperfServer, r iperfRun) (gbps float64, retrans int, err error) {
	return l.runIperfFrom(ctx, l.cli, s, r)
}

// runIperfFrom runs the iperf3 client in ns. The server may not listen
// yet, or still be tearing down the previous test ("busy"): those are
// retried for a few seconds.
func (l *lab) runIperfFrom(ctx context.Context, ns *topo.NS, s *iperfServer, r iperfRun) (gbps float64, retrans int, err error) {
	args := []string{"-c", s.addr, "-p", strconv.Itoa(s.port), "-J", "-t", strconv.Itoa(r.seconds),
		"-P", strconv.Itoa(r.streams), "--connect-timeout", "3000"}
	if r.omit > 0 {
		args = append(args, "-O", strconv.Itoa(r.omit))
	}
	if r.reverse {
		args = append(args, "-R")
	}
	timeout := time.Duration(r.seconds+r.omit)*time.Second + 20*time.Second
	for attempt := 1; ; attempt++ {
		out, runErr := output(ctx, ns, timeout, "iperf3", args...)
		gbps, retrans, err = parseIperf([]byte(out))
		if err == nil {
			return gbps, retrans, nil
		}
		var reported *iperfError
		if runErr != nil && !errors.As(err, &reported) {
			err = runErr // no JSON at all: the command's own error says more
		}
		if attempt >= 5 || ctx.Err() != nil || !retryable(err) || s.p.exited() {
			if s.p.exited() {
				err = s.p.failure(err)
			}
			return 0, 0, err
		}
		l.log.Debug("iperf3 retry", "err", err)
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(time.Duration(attempt) * 300 * time.Millisecond):
		}
	}
}

// retryable: a busy server or a refused connection. iperf3 says which
// only in words (it exits 1 for every failure), so its text is all there is
// to go by; this reads another program's output, not an error of ours.
func retryable(err error) bool {
	s := err.Error()
	return strings.Contains(s, "busy") || strings.Contains(s, "refused") || strings.Contains(s, "unable to connect")
}
