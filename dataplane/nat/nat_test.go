package nat_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/fourover6/fourover6/dataplane/nat"
	"github.com/fourover6/fourover6/test/netnstest"
)

var pool = netip.MustParsePrefix("13.8.0.0/24")

// inNS runs fn inside ns and fails the test on error.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	var err error
	netnstest.In(t, ns, func() { err = fn() })
	if err != nil {
		t.Fatal(err)
	}
}

func ipForward(t *testing.T, ns netns.NsHandle) string {
	t.Helper()
	var v string
	inNS(t, ns, func() error {
		b, err := os.ReadFile(nat.IPForwardPath)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v
}

func setIPForward(t *testing.T, ns netns.NsHandle, v string) {
	t.Helper()
	inNS(t, ns, func() error { return os.WriteFile(nat.IPForwardPath, []byte(v), 0o644) })
}

func conn(t *testing.T, ns netns.NsHandle) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ourRules returns the rules of our chain, or nil when the table is gone.
func ourRules(t *testing.T, ns netns.NsHandle, table string) (*nftables.Chain, []*nftables.Rule) {
	t.Helper()
	c := conn(t, ns)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var tab *nftables.Table
	for _, x := range tables {
		if x.Name == table {
			tab = x
		}
	}
	if tab == nil {
		return nil, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var ch *nftables.Chain
	for _, x := range chains {
		if x.Table.Name == table {
			names = append(names, x.Name)
			if x.Name == nat.ChainName {
				ch = x
			}
		}
	}
	if ch == nil || len(names) != 1 {
		t.Fatalf("chains of ip %s = %v, want only %s", table, names, nat.ChainName)
	}
	rules, err := c.GetRules(tab, ch)
	if err != nil {
		t.Fatal(err)
	}
	return ch, rules
}

// describe renders a rule's match as text: "saddr 13.8.0.0/24 oifname!=4o6 masq".
func describe(r *nftables.Rule) string {
	var parts []string
	var mask []byte
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			switch len(e.Data) {
			case 4:
				a := netip.AddrFrom4([4]byte(e.Data))
				bits := 0
				for _, b := range mask {
					for i := 7; i >= 0; i-- {
						if b&(1<<i) != 0 {
							bits++
						}
					}
				}
				parts = append(parts, "saddr "+netip.PrefixFrom(a, bits).String())
			case 16:
				op := "=="
				if e.Op == expr.CmpOpNeq {
					op = "!="
				}
				parts = append(parts, "oifname"+op+string(bytes.TrimRight(e.Data, "\x00")))
			}
		case *expr.Counter:
			parts = append(parts, "counter")
		case *expr.Masq:
			parts = append(parts, "masq")
		}
	}
	return strings.Join(parts, " ")
}

func emptyNS(t *testing.T) netns.NsHandle {
	return netnstest.Do(t, func(netns.NsHandle) {})
}

func enable(t *testing.T, ns netns.NsHandle, cfg nat.Config) func() error {
	t.Helper()
	var undo func() error
	inNS(t, ns, func() error {
		var err error
		undo, err = nat.Enable(cfg)
		return err
	})
	return undo
}

func TestEnableInstallsRulesAndUndoRemovesThem(t *testing.T) {
	ns := emptyNS(t)
	if v := ipForward(t, ns); v != "0" {
		t.Fatalf("a fresh namespace has ip_forward %s", v)
	}
	undo := enable(t, ns, nat.Config{Pool: netip.MustParsePrefix("13.8.0.1/24"), TUN: "4o6"})

	ch, rules := ourRules(t, ns, nat.DefaultTable)
	if ch == nil {
		t.Fatal("table ip fourover6 not installed")
	}
	if ch.Type != nftables.ChainTypeNAT || *ch.Hooknum != *nftables.ChainHookPostrouting || *ch.Priority != *nftables.ChainPriorityNATSource {
		t.Errorf("chain = type %s hook %v prio %v", ch.Type, *ch.Hooknum, *ch.Priority)
	}
	if len(rules) != 1 || describe(rules[0]) != "saddr 13.8.0.0/24 oifname!=4o6 counter masq" {
		for _, r := range rules {
			t.Logf("rule: %s", describe(r))
		}
		t.Fatalf("%d rules, want one masquerade of the pool out of all but the TUN", len(rules))
	}
	if v := ipForward(t, ns); v != "1" {
		t.Errorf("ip_forward = %s after Enable", v)
	}

	// Undo runs from another goroutine (not in the namespace) and still
	// cleans the right namespace.
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if ch, _ := ourRules(t, ns, nat.DefaultTable); ch != nil {
		t.Error("table still there after undo")
	}
	if v := ipForward(t, ns); v != "0" {
		t.Errorf("ip_forward = %s after undo, want 0 restored", v)
	}
	if err := undo(); err != nil {
		t.Errorf("second undo: %v", err)
	}
}

func TestForwardingAlreadyOnStaysOn(t *testing.T) {
	ns := emptyNS(t)
	setIPForward(t, ns, "1")
	undo := enable(t, ns, nat.Config{Pool: pool, TUN: "4o6"})
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if v := ipForward(t, ns); v != "1" {
		t.Errorf("ip_forward = %s, want 1 (it was on before)", v)
	}
}

func TestNamedInterfaces(t *testing.T) {
	ns := emptyNS(t)
	undo := enable(t, ns, nat.Config{Pool: pool, TUN: "4o6", Interfaces: []string{"eth0", "ppp0"}, Table: "fo6test"})
	defer undo()
	_, rules := ourRules(t, ns, "fo6test")
	var got []string
	for _, r := range rules {
		got = append(got, describe(r))
	}
	want := []string{"saddr 13.8.0.0/24 oifname==eth0 counter masq", "saddr 13.8.0.0/24 oifname==ppp0 counter masq"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("rules = %q, want %q", got, want)
	}
}

func TestStaleTableIsReplaced(t *testing.T) {
	ns := emptyNS(t)
	// A table of ours left by a crashed run, with a chain of its own.
	c := conn(t, ns)
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: nat.DefaultTable})
	old := c.AddChain(&nftables.Chain{Name: "leftover", Table: tab})
	c.AddRule(&nftables.Rule{Table: tab, Chain: old, Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	undo1 := enable(t, ns, nat.Config{Pool: pool, TUN: "4o6", Logger: log})
	if _, rules := ourRules(t, ns, nat.DefaultTable); len(rules) != 1 { // ourRules also checks the leftover chain is gone
		t.Fatalf("%d rules after replacing the stale table", len(rules))
	}
	if !strings.Contains(logs.String(), "replacing an nftables table left behind") {
		t.Errorf("no warning about the stale table: %s", logs.String())
	}
	// Enabling again (a restart without cleanup) replaces, never duplicates.
	undo2 := enable(t, ns, nat.Config{Pool: pool, TUN: "4o6"})
	if _, rules := ourRules(t, ns, nat.DefaultTable); len(rules) != 1 {
		t.Fatalf("%d rules after enabling twice", len(rules))
	}
	if err := undo2(); err != nil {
		t.Fatal(err)
	}
	// The table is gone already: the first undo still succeeds.
	if err := undo1(); err != nil {
		t.Errorf("undo of a table someone else removed: %v", err)
	}
	if v := ipForward(t, ns); v != "0" {
		t.Errorf("ip_forward = %s", v)
	}
}

func TestWarnsAboutForwardDropPolicy(t *testing.T) {
	ns := emptyNS(t)
	c := conn(t, ns)
	drop := nftables.ChainPolicyDrop
	accept := nftables.ChainPolicyAccept
	filter := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "filter"})
	c.AddChain(&nftables.Chain{Name: "forward", Table: filter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	c.AddChain(&nftables.Chain{Name: "input", Table: filter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	c.AddChain(&nftables.Chain{Name: "fwd-open", Table: filter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(10), Policy: &accept})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	undo := enable(t, ns, nat.Config{Pool: pool, TUN: "4o6", Logger: log})
	defer undo()
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if !strings.Contains(out, `chain="inet filter forward"`) {
		t.Errorf("no warning naming inet filter forward: %s", out)
	}
	if strings.Contains(out, "fwd-open") || strings.Contains(out, `"inet filter input"`) {
		t.Errorf("warned about a chain that does not drop forwarded packets: %s", out)
	}
	var chains []string
	inNS(t, ns, func() error {
		var err error
		chains, err = nat.ForwardDropChains(nat.DefaultTable)
		return err
	})
	if strings.Join(chains, ",") != "inet filter forward" {
		t.Errorf("ForwardDropChains = %q", chains)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestConfigErrors(t *testing.T) {
	ns := emptyNS(t)
	for _, tc := range []struct {
		cfg  nat.Config
		want string
	}{
		{nat.Config{TUN: "4o6"}, "not an IPv4 prefix"},
		{nat.Config{Pool: netip.MustParsePrefix("2001:db8::/64"), TUN: "4o6"}, "not an IPv4 prefix"},
		{nat.Config{Pool: pool}, "TUN"},
		{nat.Config{Pool: pool, TUN: "much-too-long-name0"}, "1 to 15 characters"},
		{nat.Config{Pool: pool, TUN: "4o6", Interfaces: []string{"4o6"}}, "is the TUN interface"},
		{nat.Config{Pool: pool, TUN: "4o6", Interfaces: []string{"eth0", "eth0"}}, "given twice"},
		{nat.Config{Pool: pool, TUN: "4o6", Interfaces: []string{""}}, "--nat-interface"},
	} {
		// In a namespace of our own: a config that were wrongly accepted
		// must not touch the host.
		var undo func() error
		var err error
		netnstest.In(t, ns, func() { undo, err = nat.Enable(tc.cfg) })
		if err == nil {
			undo()
			t.Errorf("Enable(%+v) succeeded", tc.cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Enable(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// tableNames lists the IPv4 tables of the calling thread's namespace.
func tableNames() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out, err
}
