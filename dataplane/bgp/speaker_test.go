package bgp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// The change set keeps one entry per prefix with the latest wish, and
// adding never waits for a reader.
func TestChangesCoalesce(t *testing.T) {
	c := newChanges()
	p := netip.MustParsePrefix("203.0.113.1/32")
	q := netip.MustParsePrefix("203.0.113.2/32")
	for i := range 100_000 { // nobody takes: set must not block
		c.set(p, i%2 == 0)
	}
	c.set(q, true)
	if c.len() != 2 {
		t.Fatalf("%d entries, want 2", c.len())
	}
	select {
	case <-c.kick:
	default:
		t.Fatal("no wake-up pending")
	}
	m := c.take()
	if len(m) != 2 || m[p] != false || m[q] != true {
		t.Fatalf("took %v", m)
	}
	if c.len() != 2 {
		t.Fatal("taken changes do not count as pending until done")
	}
	c.done()
	if c.len() != 0 || c.take() != nil {
		t.Fatal("take left entries behind")
	}
}

func TestChangesConcurrent(t *testing.T) {
	c := newChanges()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				c.set(netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 64)}), 32), g%2 == 0)
			}
		})
	}
	seen := map[netip.Prefix]bool{}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-c.kick:
				for p := range c.take() {
					seen[p] = true
				}
				c.done()
			case <-done:
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	<-exited
	for p := range c.take() {
		seen[p] = true
	}
	if len(seen) != 64 {
		t.Fatalf("saw %d prefixes, want 64", len(seen))
	}
}

// newLocal is a speaker without peers: GoBGP runs, opens no socket at all
// (no peers, no listener), and its table can be read.
func newLocal(t *testing.T, mod func(*Config)) (*Speaker, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	var mu sync.Mutex
	cfg := Config{
		ASN: ourASN, RouterID: netip.MustParseAddr("198.51.100.1"),
		Communities: []Community{65000<<16 | 7},
		Logger:      slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	return s, &logs
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// table lists GoBGP's IPv4 table: prefix -> next hop and communities.
func table(t *testing.T, s *Speaker) map[netip.Prefix]string {
	t.Helper()
	out := map[netip.Prefix]string{}
	err := s.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgppkt.RF_IPv4_UC},
		func(n bgppkt.NLRI, paths []*apiutil.Path) {
			p, err := netip.ParsePrefix(n.String())
			if err != nil {
				t.Errorf("GoBGP prefix %q: %v", n, err)
				return
			}
			var desc []string
			for _, a := range paths[0].Attrs {
				switch a := a.(type) {
				case *bgppkt.PathAttributeNextHop:
					desc = append(desc, "nh "+a.Value.String())
				case *bgppkt.PathAttributeCommunities:
					desc = append(desc, fmt.Sprint("comm ", a.Value))
				}
			}
			slices.Sort(desc)
			out[p] = strings.Join(desc, " ")
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func waitPending(t *testing.T, s *Speaker) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Status().Pending != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("changes still pending: %+v", s.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Routes asked for before Start are in the table when Start returns;
// churn afterwards ends in exactly the last state asked for.
func TestSpeakerTable(t *testing.T) {
	s, _ := newLocal(t, func(c *Config) { c.Aggregate = netip.MustParsePrefix("203.0.112.0/23") })
	for i := range 300 {
		if err := s.Announce(netip.AddrFrom4([4]byte{203, 0, 112 + byte(i/256), byte(i)})); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if !st.Running || st.Announced != 300 || st.Aggregate != netip.MustParsePrefix("203.0.112.0/23") || st.Pending != 0 {
		t.Fatalf("after Start: %+v", st)
	}
	tb := table(t, s)
	if len(tb) != 301 || tb[netip.MustParsePrefix("203.0.112.5/32")] != "comm [4259840007] nh 0.0.0.0" {
		t.Fatalf("table has %d prefixes; 203.0.112.5/32: %q", len(tb), tb[netip.MustParsePrefix("203.0.112.5/32")])
	}

	// Churn from several goroutines over 64 addresses; the last word on
	// each address is recorded and must be what the table ends with.
	want := make(map[netip.Addr]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 5000 {
				a := netip.AddrFrom4([4]byte{198, 18, 0, byte(r.IntN(64))})
				on := r.IntN(2) == 0
				mu.Lock() // makes "last" well defined across goroutines
				if on {
					s.Announce(a)
				} else {
					s.Withdraw(a)
				}
				want[a] = on
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s.Withdraw(netip.MustParseAddr("203.0.112.5"))
	s.SetAggregate(netip.MustParsePrefix("203.0.112.0/24"))
	waitPending(t, s)

	tb = table(t, s)
	n := 0
	for a, on := range want {
		_, in := tb[netip.PrefixFrom(a, 32)]
		if in != on {
			t.Errorf("%s: in table %v, last asked %v", a, in, on)
		}
		if on {
			n++
		}
	}
	if _, in := tb[netip.MustParsePrefix("203.0.112.5/32")]; in {
		t.Error("withdrawn 203.0.112.5 still in the table")
	}
	if _, in := tb[netip.MustParsePrefix("203.0.112.0/23")]; in {
		t.Error("replaced aggregate still in the table")
	}
	if _, in := tb[netip.MustParsePrefix("203.0.112.0/24")]; !in {
		t.Error("new aggregate not in the table")
	}
	if st := s.Status(); st.Announced != 299+n || len(tb) != 299+n+1 {
		t.Fatalf("status %+v, table %d, want %d /32s", st, len(tb), 299+n)
	}
	t.Logf("%d churned changes applied as %d table changes", 20000, s.Status().Applied-301)

	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Announce(netip.MustParseAddr("203.0.112.9")); !errors.Is(err, ErrStopped) {
		t.Fatalf("Announce after Stop: %v", err)
	}
	if err := s.Stop(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("second Stop: %v", err)
	}
	if st := s.Status(); st.Running || st.Announced != 0 {
		t.Fatalf("after Stop: %+v", st)
	}
}

func TestSpeakerInput(t *testing.T) {
	s, _ := newLocal(t, nil)
	for _, a := range []string{"2001:db8::1", "0.0.0.0"} {
		if err := s.Announce(netip.MustParseAddr(a)); err == nil {
			t.Errorf("Announce(%s) accepted", a)
		}
	}
	if err := s.Announce(netip.Addr{}); err == nil {
		t.Error("Announce(zero) accepted")
	}
	// An IPv4-mapped address is the IPv4 address.
	if err := s.Announce(netip.MustParseAddr("::ffff:203.0.113.9")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAggregate(netip.MustParsePrefix("203.0.113.9/24")); err == nil {
		t.Error("aggregate with host bits accepted")
	}
	if err := s.Handoff(); !errors.Is(err, ErrNoGracefulRestart) {
		t.Fatalf("Handoff without graceful restart: %v", err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("second Start accepted")
	}
	if _, in := table(t, s)[netip.MustParsePrefix("203.0.113.9/32")]; !in {
		t.Fatal("mapped address not announced as IPv4")
	}
	if err := s.Handoff(); !errors.Is(err, ErrNoGracefulRestart) || !s.Status().Running {
		t.Fatalf("Handoff without graceful restart: %v; it must leave the speaker running", err)
	}
}

// A speaker never started stops without fuss.
func TestSpeakerStopUnstarted(t *testing.T) {
	s, _ := newLocal(t, func(c *Config) { c.RestartTime = 30 * time.Second })
	s.Announce(netip.MustParseAddr("203.0.113.1"))
	if err := s.Handoff(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Handoff: %v", err)
	}
	if st := s.Status(); st.Running || st.Pending != 1 {
		t.Fatalf("%+v", st)
	}
}

// The configured next hop is the next hop of every path.
func TestSpeakerNextHop(t *testing.T) {
	s, _ := newLocal(t, func(c *Config) { c.NextHop = netip.MustParseAddr("198.51.100.3"); c.Communities = nil })
	s.Announce(netip.MustParseAddr("203.0.113.1"))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := table(t, s)[netip.MustParsePrefix("203.0.113.1/32")]; got != "nh 198.51.100.3" {
		t.Fatalf("path: %q", got)
	}
}

// GoBGP's info records reach our logger at debug level, tagged as ours;
// the speaker's own lines stay at info.
func TestSpeakerLogs(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	h := slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug})
	d := demoteInfo{h}
	slog.New(d).Info("Peer Up", "Key", "198.51.100.2")
	slog.New(d).Warn("failed to send")
	if d.Enabled(context.Background(), slog.LevelInfo) != h.Enabled(context.Background(), slog.LevelDebug) {
		t.Fatal("Enabled does not follow the demoted level")
	}
	out := buf.String()
	if !strings.Contains(out, `level=DEBUG msg="Peer Up"`) || !strings.Contains(out, `level=WARN msg="failed to send"`) {
		t.Fatalf("demoted logs:\n%s", out)
	}

	s, logs := newLocal(t, nil)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Stop(context.Background())
	mu.Lock()
	defer mu.Unlock()
	got := logs.String()
	if !strings.Contains(got, `level=INFO msg="BGP speaker started" component=bgp asn=65000 router_id=198.51.100.1`) ||
		!strings.Contains(got, `msg="BGP speaker stopped`) {
		t.Fatalf("speaker logs:\n%s", got)
	}
	// GoBGP's own info chatter ("Add a peer", "shutting down", ...) stays
	// out at info level.
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.Contains(line, "msg=\"BGP ") {
			t.Errorf("unexpected info line: %s", line)
		}
	}
}
