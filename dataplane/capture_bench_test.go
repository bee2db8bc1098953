package dataplane_test

import (
	"testing"

	"github.com/fourover6/fourover6/dataplane/capture"
)

// The capture benchmarks run the forwarding benchmarks' paths with nobody
// capturing ("off": what every client pays, one atomic load per batch and
// no allocation), and while an operator captures the client ("on": every
// packet copied to a tap whose reader keeps up, or loses packets, never
// slowing the flow; lost/op says how many it lost).

// capturing attaches a tap to the bench client with a reader that drains
// it, and returns the function that detaches it and reports the packets
// the reader lost per op.
func (env *benchEnv) capturing(b *testing.B) func() {
	b.Helper()
	tap := capture.NewTap(0, 0)
	_, _, detach, err := env.dp.Capture(env.me, tap)
	if err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case p := <-tap.C():
				tap.Release(p)
			case <-stop:
				return
			}
		}
	}()
	lost0 := tap.Lost()
	return func() {
		detach()
		close(stop)
		<-done
		b.ReportMetric(float64(tap.Lost()-lost0)/float64(b.N), "lost/op")
	}
}

func BenchmarkCaptureToClient(b *testing.B) {
	backends(b, func(b *testing.B, env *benchEnv) {
		payload := make([]byte, toClientChunk*(benchPktLen-28))
		env.toClient(b, payload, warmUp)
		for _, on := range []bool{false, true} {
			b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
				if on {
					defer env.capturing(b)()
					env.toClient(b, payload, warmUp) // the tap's records grown
				}
				b.SetBytes(benchPktLen)
				b.ReportAllocs()
				b.ResetTimer()
				env.toClient(b, payload, b.N)
				b.StopTimer()
			})
		}
	})
}

func BenchmarkCaptureFromClient(b *testing.B) {
	backends(b, func(b *testing.B, env *benchEnv) {
		run := newTCPRun(env.me, fromClientBatch)
		env.fromClient(b, run, warmUp)
		for _, on := range []bool{false, true} {
			b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
				if on {
					defer env.capturing(b)()
					env.fromClient(b, run, warmUp)
				}
				b.SetBytes(benchPktLen)
				b.ReportAllocs()
				b.ResetTimer()
				env.fromClient(b, run, b.N)
				b.StopTimer()
			})
		}
	})
}
