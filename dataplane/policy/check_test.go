package policy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fourover6/fourover6/dataplane/packet"
)

// TestReloadUnderReads: readers checking packets while the rules and the
// host's addresses are replaced under them always see one whole table,
// the old or the new, never a mix (run with -race).
func TestReloadUnderReads(t *testing.T) {
	p, err := New(testConfig(Rules{}))
	if err != nil {
		t.Fatal(err)
	}
	deny := Rules{Deny: []netip.Prefix{prefix("203.0.113.0/24")}, ClientToClient: true}
	toNet := udp(addr("203.0.113.9"), 9)
	toClient := udp(addr("13.8.0.7"), 9)
	toHost := tcp(addr("198.51.100.1"), 22)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var checks atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// One table answers all three, as a session's packet sees
				// exactly one.
				tb := p.Table()
				net, cli, host := tb.Check(toNet, false), tb.Check(toClient, false), tb.Check(toHost, false)
				old := net == Allow && cli == ToClient
				nu := net == Denied && cli == Allow
				if !old && !nu {
					t.Errorf("mixed table: to the net %v, to a client %v", net, cli)
					return
				}
				if host != ToHost && host != Allow {
					t.Errorf("host address: %v", host)
					return
				}
				if r := p.Check(echo(gw), false); r != Allow {
					t.Errorf("echo to the gateway: %v", r)
					return
				}
				checks.Add(1)
			}
		}()
	}
	for i := range 2000 {
		r := Rules{}
		if i%2 == 0 {
			r = deny
		}
		if _, err := p.SetRules(r); err != nil {
			t.Fatal(err)
		}
		h := testHost
		if i%3 == 0 {
			h = Host{}
		}
		if _, _, err := p.SetHost(h); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if checks.Load() == 0 {
		t.Fatal("the readers never ran")
	}
}

// FuzzCheck: any packet that passes packet.CheckIPv4, to any destination,
// gets the answer of a plain model of the rules (the longest matching
// entry, and the gateway's two exceptions) without panicking.
func FuzzCheck(f *testing.F) {
	for _, p := range [][]byte{
		echo(gw), udp(gw, 53), tcp(gw, 53), tcp(gw, 22), fragment(echo(gw), 3, false),
		pkt(gw, packet.ProtoICMP, 0, 8), pkt(gw, packet.ProtoUDP, 53, 2),
		udp(addr("198.51.100.2"), 9), tcp(addr("169.254.169.254"), 80), udp(addr("13.8.0.7"), 9),
		udp(addr("13.8.0.255"), 137), udp(addr("255.255.255.255"), 67), udp(addr("224.0.0.251"), 5353),
		udp(addr("203.0.113.7"), 9), udp(addr("203.0.113.77"), 9),
	} {
		f.Add(p, false)
		f.Add(p, true)
	}
	withOpts := append(append([]byte{0x47}, echo(gw)[1:20]...), append([]byte{1, 1, 1, 1, 1, 1, 1, 1}, echo(gw)[20:]...)...)
	binary.BigEndian.PutUint16(withOpts[2:], uint16(len(withOpts)))
	f.Add(withOpts, false)
	tb := build(f, testConfig(Rules{
		Deny:  []netip.Prefix{prefix("203.0.113.0/24")},
		Allow: []netip.Prefix{prefix("203.0.113.64/26"), prefix("169.254.169.254/32")},
	}))
	entries := tb.Entries()
	f.Fuzz(func(t *testing.T, p []byte, dns bool) {
		n, prob := packet.CheckIPv4(p)
		if prob != packet.OK {
			return
		}
		p = p[:n]
		got := tb.Check(p, dns)
		if want := model(entries, p, dns); got != want {
			t.Fatalf("to %s (proto %d, dns %v): %v, the model says %v", packet.Dst(p), packet.Protocol(p), dns, got, want)
		}
	})
}

// model decides as the package doc says, the slow way.
func model(entries []Entry, p []byte, dns bool) Reason {
	dst := packet.Dst(p)
	best, found := Entry{}, false
	for _, e := range entries {
		if e.Prefix.Contains(dst) && (!found || e.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = e, true
		}
	}
	if !found {
		return Allow
	}
	if best.Gateway && binary.BigEndian.Uint16(p[6:8])&0x1fff == 0 {
		ihl := int(p[0]&0xf) * 4
		switch proto := p[9]; {
		case proto == 1 && len(p) >= ihl+8 && p[ihl] == 8:
			return Allow
		case (proto == 6 || proto == 17) && dns && len(p) >= ihl+4 && p[ihl+2] == 0 && p[ihl+3] == 53:
			return Allow
		}
	}
	return best.Reason
}

// benchTable is a table as a real host has it: a handful of addresses and
// some operator rules.
func benchTable(b *testing.B, operatorRules int) *Policy {
	h := testHost
	for i := range 8 {
		h.Local = append(h.Local, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 32))
	}
	var r Rules
	for i := range operatorRules {
		r.Deny = append(r.Deny, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i/256), byte(i), 0}), 24))
	}
	p, err := New(Config{Gateway: gw, Pool: prefix("13.8.0.0/24"), Rules: r, Host: h})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkCheck is the policy's cost per 102, as the session pays it
// (through the atomic pointer). One op is one packet.
func BenchmarkCheck(b *testing.B) {
	for _, rules := range []int{0, 1000} {
		p := benchTable(b, rules)
		for _, c := range []struct {
			name string
			pkt  []byte
			want Reason
		}{
			{"internet", tcp(addr("198.51.100.9"), 5201), Allow},
			{"gateway-echo", echo(gw), Allow},
			{"host-refused", tcp(gw, 9462), ToHost},
			{"client-refused", udp(addr("13.8.0.7"), 9), ToClient},
			{"operator-denied", udp(addr("100.64.3.9"), 9), Denied},
		} {
			if rules == 0 && c.want == Denied {
				continue
			}
			b.Run(fmt.Sprintf("rules=%d/%s", rules, c.name), func(b *testing.B) {
				if got := p.Check(c.pkt, false); got != c.want {
					b.Fatalf("%v, want %v", got, c.want)
				}
				b.ReportAllocs()
				for b.Loop() {
					p.Check(c.pkt, false)
				}
			})
		}
	}
}

// TestCheckAllocs: the check allocates nothing, whatever it decides.
func TestCheckAllocs(t *testing.T) {
	p, err := New(testConfig(Rules{Deny: []netip.Prefix{prefix("203.0.113.0/24")}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, pk := range [][]byte{tcp(addr("198.51.100.9"), 80), echo(gw), udp(gw, 53), tcp(gw, 22), udp(addr("203.0.113.1"), 9)} {
		if n := testing.AllocsPerRun(100, func() { p.Check(pk, true) }); n != 0 {
			t.Errorf("to %s: %v allocations per check", packet.Dst(pk), n)
		}
	}
}
