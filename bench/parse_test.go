package main

import (
	"io"
	"strings"
	"testing"
	"time"
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
	if s.sent != 5 || s.received != 4 || s.min != 80 || s.max != 1000 || s.avg != 325 || s.p50 != 100 || s.p90 != 1000 || s.loss() != 20 {
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
	if s, err := pickSections("", "micro,scale"); err != nil || len(s) != len(allSections)-2 {
		t.Errorf("-skip micro,scale = %v, %v", s, err)
	}
	if _, err := pickSections("nope", ""); err == nil {
		t.Error("unknown section accepted")
	}
}

func TestPickBackendsAndRefs(t *testing.T) {
	for in, want := range map[string]string{"": "default,offload,water", "all": "default,offload,water", "both": "water,offload",
		"offload": "offload", "default, water,default": "default,water"} {
		got, err := pickBackends(in, false)
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("pickBackends(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if got, _ := pickBackends("", true); strings.Join(got, ",") != "default,offload" {
		t.Errorf("quick default backends = %v", got)
	}
	if _, err := pickBackends("auto,tap", false); err == nil {
		t.Error("unknown backend accepted")
	}
	if got, err := pickRefs(""); err != nil || strings.Join(got, ",") != "wireguard-go,openvpn" {
		t.Errorf("default refs = %v, %v", got, err)
	}
	if got, err := pickRefs("none"); err != nil || len(got) != 0 {
		t.Errorf("-refs none = %v, %v", got, err)
	}
	if _, err := pickRefs("ipsec"); err == nil {
		t.Error("unknown reference accepted")
	}
}

func TestParseOptionsLists(t *testing.T) {
	o, err := parseOptions([]string{"-alloc-callers", "8, 32", "-storm-n", "500"}, io.Discard)
	if err != nil || len(o.allocCallers) != 2 || o.allocCallers[1] != 32 || o.stormN != 500 {
		t.Fatalf("parseOptions = %+v, %v", o, err)
	}
	if q, _ := parseOptions([]string{"-quick"}, io.Discard); q.stormN != 200 || q.pingCount != 30 {
		t.Errorf("quick sizes: storm %d, pings %d", q.stormN, q.pingCount)
	}
	for _, bad := range [][]string{{"-alloc-callers", "8,x"}, {"-flood-size", "9000"}, {"-storm-n", "-1"}, {"-tun-backend", "nope"}} {
		if _, err := parseOptions(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	c := parseProcStat("cpu  100 5 50 1000 7 3 2 9 0 0\ncpu0 50 2 25 500 3 1 1 4 0 0\n")
	if !c.ok || c.user != 100 || c.nice != 5 || c.system != 50 || c.irq != 3 || c.softirq != 2 || c.steal != 9 {
		t.Errorf("parseProcStat = %+v", c)
	}
	if parseProcStat("intr 1 2 3\n").ok {
		t.Error("a file without the cpu line accepted")
	}
	b := c
	b.user += 300 // 3 s of task time on top of c
	u := cpuUsage(c, b, 10*time.Second, 2)
	if u == nil || u.BusyS != 3 || u.OthersS < 0 || u.OthersS > 3 || u.BusyPct != 15 {
		t.Errorf("cpuUsage = %+v", u)
	}
}

func TestRTTDirection(t *testing.T) {
	// Reports from before load_direction measured upload only.
	if d := (RTT{Load: "loaded"}).direction(); d != "upload" {
		t.Errorf("old loaded row: %q", d)
	}
	if d := (RTT{Load: "loaded", LoadDirection: "download"}).direction(); d != "download" {
		t.Errorf("download row: %q", d)
	}
	if d := (RTT{Load: "idle"}).direction(); d != "" {
		t.Errorf("idle row: %q", d)
	}
}

func TestNiceStep(t *testing.T) {
	for in, want := range map[float64]float64{4.3: 5, 0.7: 1, 1.2: 2, 26: 50, 0.03: 0.05} {
		if got := niceStep(in); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", in, got, want)
		}
	}
}

func TestIsNumeric(t *testing.T) {
	for s, want := range map[string]bool{"1.5": true, "37.5%": true, "2x": true, "29/30": true, "-": false,
		"1-stream upload": false, "0.51 vs 0.47 Gbit/s": false, "ERR": false, "": false} {
		if isNumeric(s) != want {
			t.Errorf("isNumeric(%q) = %v", s, !want)
		}
	}
}
