package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Reconnect storm settings of the load generator: the first attempt at
// once, then 250 ms doubling with jitter up to 2 s (4over6-client's policy,
// shorter, so that what is measured is the server, not the clients'
// patience).
const (
	stormReconnectMin = 250 * time.Millisecond
	stormReconnectMax = 2 * time.Second
	stormTimeout      = 60 * time.Second
	stormWithin       = 5.0 // seconds: the count served this soon is reported
)

// stormLimitsOff are the data plane flags of the storm, as in the scale
// runs: every load-generator client comes from one IPv6 address, which the
// per-address and accept-rate limits exist to stop.
var stormLimitsOff = []string{"--max-clients", "0", "--max-conns-per-ip", "0", "--max-conns-per-prefix", "0", "--accept-rate", "0", "--accept-rate-per-prefix", "0"}

// runStorm connects -storm-n load-generator clients to a fresh data plane,
// kills it with SIGKILL once all have their 101, starts it again (same id,
// same controller: the controller releases the dead instance's leases),
// and times every client's way back to a 101 from the restart.
func (l *lab) runStorm(ctx context.Context, rep *Report) {
	n := l.o.stormN
	s := &Storm{N: n, Backend: l.o.scaleBackend}
	rep.Storm = s
	defer func() {
		if s.Error != "" {
			rep.addError(secStorm, fmt.Sprintf("N=%d", n), fmt.Errorf("%s", s.Error))
		}
	}()
	l.log.Info("reconnect storm", "n", n, "backend", s.Backend)
	if err := l.ensureFDs(n); err != nil {
		s.Error = err.Error()
		return
	}
	if err := l.startController(ctx); err != nil {
		s.Error = err.Error()
		return
	}
	defer l.stopController()
	const id = "bench-storm"
	dp, err := l.startDataplane(ctx, id, s.Backend, stormLimitsOff...)
	if err != nil {
		s.Error = err.Error()
		return
	}
	defer func() { dp.stop(20 * time.Second) }()

	connectTimeout := 30*time.Second + time.Duration(n)*5*time.Millisecond
	args := []string{"netns", "exec", l.cli.Name, l.loadgen,
		"-server", "[" + serverV6 + "]:" + clientPort, "-gateway", gateway, "-n", strconv.Itoa(n),
		"-connect-timeout", connectTimeout.String(), "-keepalive", "20s", "-storm",
		"-storm-timeout", stormTimeout.String(), "-reconnect-min", stormReconnectMin.String(), "-reconnect-max", stormReconnectMax.String()}
	total := connectTimeout + stormTimeout + time.Minute
	ectx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	events, lg, err := l.startEvents(ectx, fmt.Sprintf("loadgen-storm-%d", n), args)
	if err != nil {
		s.Error = err.Error()
		return
	}
	defer lg.stop(10 * time.Second)

	var restart time.Time
	for e := range events {
		switch e.Event {
		case "connected":
			s.Connected = e.Connected
			l.log.Info("storm: all connected; killing the data plane", "connected", e.Connected, "seconds", round3(e.ConnectSeconds))
			if e.Connected < n {
				s.Error = fmt.Sprintf("only %d of %d clients connected before the kill: %s", e.Connected, n, e.FirstError)
				return
			}
			t := time.Now()
			dp.cmd.Process.Kill()
			<-dp.done
			s.KillS = round3(time.Since(t).Seconds())
			restart = time.Now()
			again, err := l.startDataplane(ctx, id, s.Backend, stormLimitsOff...)
			if err != nil {
				s.Error = "restarting the data plane: " + err.Error()
				return
			}
			dp = again
			s.DataplaneReadyS = round3(time.Since(restart).Seconds())
			l.log.Info("storm: data plane restarted", "ready_s", s.DataplaneReadyS)
		case "storm_done":
			s.Lost, s.Reconnected, s.ReconnectAttempts, s.FirstError = e.Lost, e.Reconnected, e.ReconnectAttempts, e.FirstError
			s.fill(e.ReconnectUnixNano, restart)
			l.log.Info("storm over", "reconnected", s.Reconnected, "within_5s", s.Within5s, "p50_s", s.P50S, "p99_s", s.P99S, "max_s", s.MaxS)
		case "error":
			s.Error = "loadgen: " + e.Error
		}
	}
	<-lg.done
	switch {
	case s.Error != "":
	case ectx.Err() != nil:
		s.Error = fmt.Sprintf("load generator did not finish within %s", total)
	case lg.err != nil:
		s.Error = lg.failure(fmt.Errorf("load generator: %v", lg.err)).Error()
	case restart.IsZero():
		s.Error = "the load generator never reported all clients connected"
	case s.Reconnected < n:
		s.Error = fmt.Sprintf("only %d of %d clients reconnected within %s: %s", s.Reconnected, n, stormTimeout, s.FirstError)
	}
}

// fill turns the moments each client had its 101 again into times since
// the restart.
func (s *Storm) fill(unixNano []int64, restart time.Time) {
	if len(unixNano) == 0 || restart.IsZero() {
		return
	}
	d := make([]float64, len(unixNano))
	for i, t := range unixNano {
		d[i] = float64(t-restart.UnixNano()) / 1e9
	}
	slices.Sort(d)
	s.FirstS, s.MaxS = round3(d[0]), round3(d[len(d)-1])
	s.P50S, s.P99S = round3(percentile(d, 50)), round3(percentile(d, 99))
	s.Within5s = 0
	for _, v := range d {
		if v <= stormWithin {
			s.Within5s++
		}
	}
}
