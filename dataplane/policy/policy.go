// Package policy decides which destinations a client may reach through the
// tunnel. The data plane checks every 102's packet against it before the
// packet goes to the TUN, and drops (and counts) what it refuses.
//
// A client may reach the IPv4 world beyond the data plane. Built in, it may
// not reach:
//
//   - the data-plane host itself: the gateway and every other address the
//     host accepts as its own (its services bound to 0.0.0.0 would answer),
//     except ICMP echo requests to the gateway, and DNS (UDP and TCP port 53)
//     to the gateway when the client's 101 names the gateway as a DNS server;
//   - link-local 169.254.0.0/16 (cloud metadata services live there);
//   - broadcast: 255.255.255.255, the pool's network and broadcast addresses,
//     the host's subnets' broadcast addresses; multicast 224.0.0.0/4;
//   - loopback 127.0.0.0/8, "this network" 0.0.0.0/8, reserved 240.0.0.0/4;
//   - other clients (the pool), unless Rules.ClientToClient.
//
// Operators add prefixes to allow and to deny (Rules). The most specific
// prefix decides. At equal length (the same prefix) an operator's rule beats
// a built-in one; a prefix cannot be both allowed and denied (Validate
// refuses it as the mistake it is). An address no rule covers is allowed.
//
// A Table is immutable once built, so every session reads it at once without
// locks; a Policy holds the current Table behind an atomic pointer and swaps
// in a new one when the rules or the host's addresses change.
package policy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fourover6/fourover6/dataplane/packet"
)

// Reason says why a destination is refused; Allow is no reason at all.
type Reason uint8

// Reasons. Their names are stable: the data plane's drop reasons are
// "policy_" followed by them.
const (
	Allow         Reason = iota
	ToHost               // an address of the data-plane host
	ToClient             // another client's address (the pool)
	ToLinkLocal          // 169.254.0.0/16
	ToBroadcast          // 255.255.255.255, the pool's and the host's subnets' broadcast addresses
	ToMulticast          // 224.0.0.0/4
	ToLoopback           // 127.0.0.0/8
	ToUnspecified        // 0.0.0.0/8
	ToReserved           // 240.0.0.0/4
	Denied               // an operator's deny prefix
	NumReasons
)

var reasonNames = [NumReasons]string{
	Allow:         "allow",
	ToHost:        "host",
	ToClient:      "client",
	ToLinkLocal:   "link_local",
	ToBroadcast:   "broadcast",
	ToMulticast:   "multicast",
	ToLoopback:    "loopback",
	ToUnspecified: "unspecified",
	ToReserved:    "reserved",
	Denied:        "denied",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// builtins are the special-purpose ranges no client has business reaching
// through the tunnel. Operators can still allow (part of) any of them.
var builtins = []Entry{
	{Prefix: netip.MustParsePrefix("0.0.0.0/8"), Reason: ToUnspecified},
	{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Reason: ToLoopback},
	{Prefix: netip.MustParsePrefix("169.254.0.0/16"), Reason: ToLinkLocal},
	{Prefix: netip.MustParsePrefix("224.0.0.0/4"), Reason: ToMulticast},
	{Prefix: netip.MustParsePrefix("240.0.0.0/4"), Reason: ToReserved},
	{Prefix: netip.MustParsePrefix("255.255.255.255/32"), Reason: ToBroadcast},
}

// Rules are an operator's additions to the built-in rules.
type Rules struct {
	Allow []netip.Prefix // destinations clients may reach although a built-in rule refuses them
	Deny  []netip.Prefix // destinations clients may not reach
	// ClientToClient lets clients reach each other's addresses (when the
	// host forwards IPv4): the pool is then no longer refused.
	ClientToClient bool
}

// Validate checks that every prefix is IPv4 in canonical form and that no
// prefix is both allowed and denied (that is a mistake, whichever should
// win).
func (r Rules) Validate() error {
	for _, list := range [][]netip.Prefix{r.Allow, r.Deny} {
		for _, p := range list {
			if err := checkPrefix(p); err != nil {
				return err
			}
		}
	}
	for _, p := range r.Deny {
		if slices.Contains(r.Allow, p) {
			return fmt.Errorf("%s is both allowed and denied: keep it in one list", p)
		}
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("invalid prefix")
	case !p.Addr().Is4():
		return fmt.Errorf("%s is IPv6: clients reach IPv4 destinations only; want an IPv4 prefix such as 198.51.100.0/24", p)
	case p != p.Masked():
		return fmt.Errorf("%s has bits set beyond its /%d: did you mean %s?", p, p.Bits(), p.Masked())
	}
	return nil
}

// ParsePrefix reads an operator's prefix: CIDR (198.51.100.0/24) or a
// single address (198.51.100.7, a /32). The error says what to write.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, errors.New("empty prefix (a stray comma?)")
	}
	var p netip.Prefix
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%q is neither a prefix nor an address: want CIDR such as 198.51.100.0/24, or one address such as 198.51.100.7", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	} else {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%q is not a prefix: want CIDR such as 198.51.100.0/24, or one address such as 198.51.100.7", s)
		}
	}
	if err := checkPrefix(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// Host is what the data-plane host accepts as its own, as the kernel says.
type Host struct {
	Local     []netip.Prefix // its addresses (and any local prefix routed to itself)
	Broadcast []netip.Prefix // the broadcast addresses of its subnets
}

func (h Host) equal(o Host) bool {
	return slices.Equal(h.Local, o.Local) && slices.Equal(h.Broadcast, o.Broadcast)
}

// normalize keeps the IPv4 prefixes, canonical, sorted and unique, so that
// two readings of the same host compare equal.
func (h Host) normalize() Host {
	norm := func(in []netip.Prefix) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range in {
			if p.IsValid() && p.Addr().Unmap().Is4() {
				out = append(out, netip.PrefixFrom(p.Addr().Unmap(), min(p.Bits(), 32)).Masked())
			}
		}
		slices.SortFunc(out, comparePrefix)
		return slices.Compact(out)
	}
	return Host{Local: norm(h.Local), Broadcast: norm(h.Broadcast)}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// Config is everything a Table is built from.
type Config struct {
	Gateway netip.Addr   // the TUN's address: the host, where echo (and DNS) pass
	Pool    netip.Prefix // the clients' addresses; the gateway is one of them
	Rules   Rules
	Host    Host
}

// Entry is one prefix of a Table and what it decides.
type Entry struct {
	Prefix   netip.Prefix
	Reason   Reason // Allow, or why destinations under Prefix are refused
	Operator bool   // from Rules rather than built in
	// Gateway marks the gateway's own entry: ICMP echo requests pass, and
	// DNS when the client's 101 names the gateway as a DNS server.
	Gateway bool
}

func (e Entry) String() string {
	src := "built-in"
	if e.Operator {
		src = "operator"
	}
	s := fmt.Sprintf("%s %s (%s)", e.Prefix, e.Reason, src)
	if e.Gateway {
		s += ", echo and DNS pass"
	}
	return s
}

// Table is an immutable destination policy: build it with Build, read it
// from any number of goroutines.
type Table struct {
	entries []Entry // ordered by prefix
	lpm     ranges  // which of entries decides for an address
	cfg     Config
}

// Build checks c and compiles its table.
func Build(c Config) (*Table, error) {
	if err := c.Rules.Validate(); err != nil {
		return nil, err
	}
	if c.Gateway.IsValid() && !c.Gateway.Is4() {
		return nil, fmt.Errorf("gateway %s is not IPv4", c.Gateway)
	}
	if c.Pool.IsValid() && !c.Pool.Addr().Is4() {
		return nil, fmt.Errorf("pool %s is not IPv4", c.Pool)
	}
	c.Host = c.Host.normalize()
	m := make(map[netip.Prefix]Entry)
	// A built-in entry never replaces another: the first one for a prefix
	// (in this order, most telling first) names the reason.
	builtin := func(e Entry) {
		if _, ok := m[e.Prefix]; !ok {
			m[e.Prefix] = e
		}
	}
	if c.Gateway.IsValid() {
		builtin(Entry{Prefix: netip.PrefixFrom(c.Gateway, 32), Reason: ToHost, Gateway: true})
	}
	for _, e := range builtins {
		builtin(e)
	}
	if c.Pool.IsValid() {
		pool := c.Pool.Masked()
		if pool.Bits() <= 30 { // a /31 or /32 has no network or broadcast address
			builtin(Entry{Prefix: netip.PrefixFrom(pool.Addr(), 32), Reason: ToBroadcast})
			builtin(Entry{Prefix: netip.PrefixFrom(lastAddr(pool), 32), Reason: ToBroadcast})
		}
		if !c.Rules.ClientToClient {
			builtin(Entry{Prefix: pool, Reason: ToClient})
		}
	}
	for _, p := range c.Host.Local {
		// The host's loopback and link-local addresses are refused as
		// such already, under the more telling name.
		if !inBuiltin(p) {
			builtin(Entry{Prefix: p, Reason: ToHost})
		}
	}
	for _, p := range c.Host.Broadcast {
		builtin(Entry{Prefix: p, Reason: ToBroadcast})
	}
	// Operators' rules beat built-in ones of the same length. Validate
	// refuses a prefix both allowed and denied; were there one, the deny
	// would win.
	for _, p := range c.Rules.Allow {
		if e, ok := m[p]; !ok || !e.Operator {
			m[p] = Entry{Prefix: p, Reason: Allow, Operator: true}
		}
	}
	for _, p := range c.Rules.Deny {
		m[p] = Entry{Prefix: p, Reason: Denied, Operator: true}
	}

	t := &Table{cfg: c, entries: make([]Entry, 0, len(m))}
	for _, e := range m {
		t.entries = append(t.entries, e)
	}
	slices.SortFunc(t.entries, func(a, b Entry) int { return comparePrefix(a.Prefix, b.Prefix) })
	t.lpm = flatten(t.entries)
	return t, nil
}

func inBuiltin(p netip.Prefix) bool {
	for _, b := range builtins {
		if b.Prefix.Bits() <= p.Bits() && b.Prefix.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func lastAddr(p netip.Prefix) netip.Addr {
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, last(p))))
}

// Check decides on a packet that passed packet.CheckIPv4, cut to its total
// length: Allow, or why it must be dropped. gatewayDNS says whether the
// sending client's 101 names the gateway as a DNS server. It takes no lock
// and allocates nothing.
func (t *Table) Check(p []byte, gatewayDNS bool) Reason {
	i := t.lpm.find(packet.Dst4(p))
	if i < 0 {
		return Allow
	}
	e := &t.entries[i]
	if e.Gateway && gatewayService(p, gatewayDNS) {
		return Allow
	}
	return e.Reason
}

const icmpEchoRequest = 8

// gatewayService reports whether p is one of the two things a client may
// send the host: an ICMP echo request and, when its 101 names the gateway
// as a DNS server, DNS over UDP or TCP. Only a first fragment carries the
// header this reads, so later fragments to the host are refused (a DNS
// query or a ping to the gateway fits one packet).
func gatewayService(p []byte, dns bool) bool {
	if packet.LaterFragment(p) {
		return false
	}
	tr := packet.Transport(p)
	switch packet.Protocol(p) {
	case packet.ProtoICMP:
		return len(tr) >= 8 && tr[0] == icmpEchoRequest
	case packet.ProtoUDP, packet.ProtoTCP:
		return dns && len(tr) >= 4 && binary.BigEndian.Uint16(tr[2:4]) == 53
	}
	return false
}

// Lookup returns the entry that decides for dst (ok false: none does, and
// dst is allowed), without the echo and DNS exceptions: for explanations.
func (t *Table) Lookup(dst netip.Addr) (e Entry, ok bool) {
	if dst = dst.Unmap(); !dst.Is4() {
		return Entry{}, false
	}
	if i := t.lpm.find(u32(dst)); i >= 0 {
		return t.entries[i], true
	}
	return Entry{}, false
}

// Entries returns the table's entries, ordered by prefix.
func (t *Table) Entries() []Entry { return slices.Clone(t.entries) }

// Config returns what t was built from.
func (t *Table) Config() Config { return t.cfg }

// Policy is the live destination policy of a data plane: the current Table,
// replaced as a whole when the rules or the host's addresses change. A nil
// *Policy allows everything.
type Policy struct {
	cur atomic.Pointer[Table]
	mu  sync.Mutex // serializes rebuilds
}

// New builds the first table.
func New(c Config) (*Policy, error) {
	t, err := Build(c)
	if err != nil {
		return nil, err
	}
	p := new(Policy)
	p.cur.Store(t)
	return p, nil
}

// Check decides on a packet with the current table (see Table.Check).
func (p *Policy) Check(pkt []byte, gatewayDNS bool) Reason {
	if p == nil {
		return Allow
	}
	return p.cur.Load().Check(pkt, gatewayDNS)
}

// Table returns the current table.
func (p *Policy) Table() *Table { return p.cur.Load() }

// GatewayDNS reports whether servers (a 101's DNS servers) name the gateway:
// then that client's DNS to the gateway passes.
func (p *Policy) GatewayDNS(servers []netip.Addr) bool {
	if p == nil {
		return false
	}
	gw := p.cur.Load().cfg.Gateway
	return gw.IsValid() && slices.Contains(servers, gw)
}

// SetRules replaces the operator's rules. On error nothing changes.
func (p *Policy) SetRules(r Rules) (*Table, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cur.Load().cfg
	c.Rules = r
	t, err := Build(c)
	if err != nil {
		return nil, err
	}
	p.cur.Store(t)
	return t, nil
}

// SetPool sets the gateway and the clients' pool (what the controller
// assigned). On error nothing changes.
func (p *Policy) SetPool(gateway netip.Addr, pool netip.Prefix) (*Table, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cur.Load().cfg
	c.Gateway, c.Pool = gateway, pool
	t, err := Build(c)
	if err != nil {
		return nil, err
	}
	p.cur.Store(t)
	return t, nil
}

// SetHost replaces the host's addresses; changed is false (and the table
// stays) when they are what the table has already.
func (p *Policy) SetHost(h Host) (t *Table, changed bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.cur.Load()
	h = h.normalize()
	if h.equal(cur.cfg.Host) {
		return cur, false, nil
	}
	c := cur.cfg
	c.Host = h
	if t, err = Build(c); err != nil {
		return nil, false, err
	}
	p.cur.Store(t)
	return t, true, nil
}
