package main

import (
	"testing"
)

func TestParseIperf(t *testing.T) {
	out := `{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":6.2e9,"retransmits":17},"sum_received":{"bits_per_second":6.1e9}}}`
	g, r, err := parseIperf([]byte(out))
	if err != nil || g != 6.1 || r != 17 {
		t.Errorf("parseIperf = %v, %v, %v; want 6.1 Gbit/s (receiver), 17 retransmits", g, r, err)
	}
	if _, _, err := parseIperf([]byte(`{"start":{},"end":{},"error":"the server is busy running a test. try again later"}`)); err == nil || !retryable(err) {
		t.Errorf("busy server: err = %v, want a retryable error", err)
	}
	if _, _, err := parseIperf([]byte("iperf3: error - unable to connect to server: Connection refused\n")); err == nil {
		t.Error("non-JSON output accepted")
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 13.8.0.1 (13.8.0.1) 56(84) bytes of data.
64 bytes from 13.8.0.1: icmp_seq=1 ttl=64 time=0.120 ms
64 bytes from 13.8.0.1: icmp_seq=2 ttl=64 time=0.080 ms
64 bytes from 13.8.0.1: icmp_seq=3 ttl=64 time=1.00 ms
64 bytes from 13.8.0.1: icmp_seq=4 ttl=64 time=0.100 ms

--- 13.8.0.1 ping statistics ---
5 packets transmitted, 4 received, 20% packet loss, time 41ms
rtt min/avg/max/mdev = 0.080/0.325/1.000/0.389 ms
`
	s, err := parsePing(out)
	if err != nil {
		t.Fatal(err)
	}
	if s.sent != 5 || s.received != 4 || s.min != 80 || s.max != 1000 || s.avg != 325 || s.p50 != 100 {
		t.Errorf("parsePing = %+v", s)
	}
	if _, err := parsePing("5 packets transmitted, 0 received, 100% packet loss\n"); err == nil {
		t.Error("no replies accepted")
	}
}

func TestParseBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/fourover6/fourover6/dataplane/wire
cpu: Intel(R) Xeon(R) Processor
BenchmarkDecode-2         	 1000000	      1043 ns/op	 123.45 MB/s	       0 B/op	       0 allocs/op
BenchmarkPutHeader        	1000000000	         0.3000 ns/op
PASS
ok  	github.com/fourover6/fourover6/dataplane/wire	2.1s
pkg: github.com/fourover6/fourover6/dataplane/route
BenchmarkLookup/hit-2     	 5000000	       20.5 ns/op	       8 B/op	       1 allocs/op
`
	ms := parseBench(out)
	if len(ms) != 3 {
		t.Fatalf("got %d results: %+v", len(ms), ms)
	}
	d := ms[0]
	if d.Name != "BenchmarkDecode" || d.Package != module+"dataplane/wire" || d.NsPerOp != 1043 || d.Extra["MB/s"] != 123.45 ||
		d.AllocsPerOp == nil || *d.AllocsPerOp != 0 || d.BytesPerOp == nil {
		t.Errorf("Decode: %+v", d)
	}
	if ms[1].AllocsPerOp != nil || ms[1].NsPerOp != 0.3 {
		t.Errorf("PutHeader without -benchmem columns: %+v", ms[1])
	}
	if l := ms[2]; l.Name != "BenchmarkLookup/hit" || l.Package != module+"dataplane/route" || *l.AllocsPerOp != 1 {
		t.Errorf("Lookup: %+v", l)
	}
}

func TestParseStatTicks(t *testing.T) {
	// The command name may contain spaces and parentheses.
	stat := "1234 (4over6 (data) plane) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0"
	n, err := parseStatTicks(stat)
	if err != nil || n != 325 {
		t.Errorf("parseStatTicks = %d, %v; want 325", n, err)
	}
}

func TestPickSections(t *testing.T) {
	s, err := pickSections("rtt,throughput", "")
	if err != nil || len(s) != 2 || s[0] != secThroughput {
		t.Errorf("-only rtt,throughput = %v, %v (want run order)", s, err)
	}
	if s, err := pickSections("", "micro,scale"); err != nil || len(s) != 3 {
		t.Errorf("-skip micro,scale = %v, %v", s, err)
	}
	if _, err := pickSections("nope", ""); err == nil {
		t.Error("unknown section accepted")
	}
}

func TestNiceStep(t *testing.T) {
	for in, want := range map[float64]float64{4.3: 5, 0.7: 1, 1.2: 2, 26: 50, 0.03: 0.05} {
		if got := niceStep(in); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", in, got, want)
		}
	}
}
