package bgp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults for the zero values of Config.
const (
	DefaultHoldTime     = 90 * time.Second
	DefaultConnectRetry = 5 * time.Second
	// DefaultRestartTime is what the data plane's --bgp-graceful-restart
	// defaults to. It stays below the controller's default
	// dataplane-timeout + grace-period (45 s), after which a dead data
	// plane's addresses can go to clients elsewhere: a router must have
	// forgotten the stale /32s by then.
	DefaultRestartTime = 30 * time.Second
	// BGPPort is where peers are dialled unless a peer names its port.
	BGPPort = 179
)

// Limits of the protocol on the timers (RFC 4271 4.2, RFC 4724 3).
const (
	maxHoldTime    = 65535 * time.Second
	maxRestartTime = 4095 * time.Second
	asTrans        = 23456
)

// Config holds a speaker's settings. Zero durations take the defaults above;
// a zero RestartTime turns graceful restart off.
type Config struct {
	// ASN is the local autonomous system number (4-byte ASNs are fine).
	ASN uint32
	// RouterID is the BGP identifier; zero: DefaultRouterID at New.
	RouterID netip.Addr
	// Peers are dialled; none listens for us unless ListenPort is set.
	Peers []Peer
	// NextHop is the IPv4 next hop of every announced route. Zero: the
	// local address of each session, i.e. our address on the link toward
	// that peer (for an IPv6 peer this is an IPv6 next hop, RFC 8950: the
	// router must accept extended next hops, or NextHop must be set).
	NextHop netip.Addr
	// Communities are attached to every announced route.
	Communities []Community
	// Aggregate, when valid, is announced as well as the /32s: the pool
	// prefix, for routers that should reach the pool through this data
	// plane even before (or without) the /32 of an address. SetAggregate
	// changes it at run time.
	Aggregate netip.Prefix
	// ListenPort, when non-zero, accepts sessions that configured peers
	// open toward us on this port. Zero: no listening socket at all; we
	// only dial out.
	ListenPort uint16
	// HoldTime is proposed in our OPEN (the smaller of both sides wins);
	// keepalives go every third of it. Whole seconds, 0 or 3 s to 65535 s;
	// a negative value asks for 0 (no keepalives, no hold timer).
	HoldTime time.Duration
	// ConnectRetry is the pause between attempts to reach a peer that is
	// not up, and before dialling again after a session went down.
	ConnectRetry time.Duration
	// RestartTime enables graceful restart (RFC 4724) with this restart
	// time: when our sessions end without a NOTIFICATION (the process
	// died, or Handoff), the routers keep our routes this long as stale
	// while a successor takes over. Zero: off. Whole seconds, at most 4095.
	RestartTime time.Duration
	// Restarting marks this speaker as the successor of one that went away
	// with graceful restart negotiated (Handoff, or a crash): the OPEN
	// carries the Restart State and Forwarding State bits, so routers keep
	// the predecessor's routes until we have sent ours and End-of-RIB.
	// Announce every route the predecessor had before Start. Needs
	// RestartTime.
	Restarting bool
	// Logger receives our logs and GoBGP's (GoBGP's info messages at
	// debug level: the speaker logs session changes itself). Default
	// slog.Default().
	Logger *slog.Logger
}

// Peer is a BGP neighbour we dial.
type Peer struct {
	Addr netip.Addr
	Port uint16 // 0: 179
	ASN  uint32
}

// String formats the peer the way ParsePeer reads it.
func (p Peer) String() string {
	host := p.Addr.String()
	if p.Port != 0 && p.Port != BGPPort {
		host = netip.AddrPortFrom(p.Addr, p.Port).String()
	}
	return fmt.Sprintf("%s@%d", host, p.ASN)
}

func (p Peer) port() uint16 {
	if p.Port == 0 {
		return BGPPort
	}
	return p.Port
}

// ParsePeer reads "ADDR[:PORT]@ASN": 198.51.100.2@65001,
// 198.51.100.2:1179@65001, 2001:db8::2@65001 or [2001:db8::2]:1179@65001.
func ParsePeer(s string) (Peer, error) {
	const form = "want ADDR[:PORT]@ASN, e.g. 198.51.100.2@65001 or [2001:db8::2]:179@65001"
	host, asn, ok := strings.Cut(strings.TrimSpace(s), "@")
	if !ok || strings.Contains(asn, "@") {
		return Peer{}, fmt.Errorf("BGP peer %q: %s", s, form)
	}
	var p Peer
	var err error
	if p.ASN, err = parseASN(asn); err != nil {
		return Peer{}, fmt.Errorf("BGP peer %q: %v", s, err)
	}
	switch {
	case strings.HasPrefix(host, "["):
		ap, err := netip.ParseAddrPort(host)
		if err != nil {
			// "[2001:db8::2]" without a port
			if strings.HasSuffix(host, "]") {
				p.Addr, err = netip.ParseAddr(host[1 : len(host)-1])
			}
			if err != nil {
				return Peer{}, fmt.Errorf("BGP peer %q: bad address %q (%s)", s, host, form)
			}
			if !p.Addr.Is6() {
				return Peer{}, fmt.Errorf("BGP peer %q: brackets are for IPv6 addresses (%s)", s, form)
			}
		} else {
			p.Addr, p.Port = ap.Addr(), ap.Port()
			if p.Port == 0 {
				return Peer{}, fmt.Errorf("BGP peer %q: port 0 (%s)", s, form)
			}
		}
	case strings.Count(host, ":") == 1: // IPv4:port
		h, port, _ := strings.Cut(host, ":")
		if p.Addr, err = netip.ParseAddr(h); err != nil || !p.Addr.Is4() {
			return Peer{}, fmt.Errorf("BGP peer %q: bad IPv4 address %q (%s)", s, h, form)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Peer{}, fmt.Errorf("BGP peer %q: bad port %q: want 1-65535", s, port)
		}
		p.Port = uint16(n)
	default:
		if p.Addr, err = netip.ParseAddr(host); err != nil {
			return Peer{}, fmt.Errorf("BGP peer %q: bad address %q (%s)", s, host, form)
		}
	}
	if err := p.check(); err != nil {
		return Peer{}, fmt.Errorf("BGP peer %q: %v", s, err)
	}
	return p, nil
}

func (p Peer) check() error {
	a := p.Addr
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		return errors.New("link-local peers are not supported: use the router's global or ULA address")
	case a.Is4In6():
		return fmt.Errorf("write the IPv4-mapped address as plain IPv4 (%s)", a.Unmap())
	case a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not a unicast address", a)
	}
	if p.ASN == 0 || p.ASN == asTrans {
		return fmt.Errorf("ASN %d cannot be a peer's AS", p.ASN)
	}
	return nil
}

func parseASN(s string) (uint32, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad ASN %q: want a number 1-4294967295", s)
	}
	if n == 0 || n == asTrans {
		return 0, fmt.Errorf("ASN %d is reserved", n)
	}
	return uint32(n), nil
}

// Community is a standard BGP community (RFC 1997): ASN<<16 | VALUE.
type Community uint32

// Well-known communities that ParseCommunities reads by name.
const (
	NoExport    Community = 0xFFFFFF01
	NoAdvertise Community = 0xFFFFFF02
)

// String formats c as ASN:VALUE, or by name when it is well known.
func (c Community) String() string {
	switch c {
	case NoExport:
		return "no-export"
	case NoAdvertise:
		return "no-advertise"
	}
	return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xffff)
}

// ParseCommunity reads ASN:VALUE (each 0-65535), no-export or no-advertise.
func ParseCommunity(s string) (Community, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "no-export":
		return NoExport, nil
	case "no-advertise":
		return NoAdvertise, nil
	}
	hi, lo, ok := strings.Cut(s, ":")
	a, errA := strconv.ParseUint(hi, 10, 16)
	v, errV := strconv.ParseUint(lo, 10, 16)
	if !ok || errA != nil || errV != nil {
		return 0, fmt.Errorf("BGP community %q: want ASN:VALUE with both parts 0-65535 (e.g. 65000:100), no-export or no-advertise", s)
	}
	return Community(a<<16 | v), nil
}

// ParseCommunities reads a list separated by commas or spaces; an empty
// string is an empty list.
func ParseCommunities(s string) ([]Community, error) {
	var out []Community
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		c, err := ParseCommunity(f)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// DefaultRouterID is the first global unicast IPv4 address of the host's
// interfaces (in interface order), the usual choice of routing daemons.
func DefaultRouterID() (netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("BGP router id: list interfaces: %v; set --bgp-router-id", err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if ip = ip.Unmap(); ok && ip.Is4() && ip.IsGlobalUnicast() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, errors.New("BGP router id: this host has no global IPv4 address to take it from; set --bgp-router-id A.B.C.D")
}

// validate checks c and fills in the defaults (but not the router id).
func (c *Config) validate() error {
	if c.ASN == 0 || c.ASN == asTrans {
		return fmt.Errorf("BGP: local ASN %d is reserved; set --bgp-asn to your AS number", c.ASN)
	}
	if c.RouterID.IsValid() {
		if !c.RouterID.Is4() || c.RouterID.IsUnspecified() {
			return fmt.Errorf("BGP router id %s: want a non-zero IPv4 address (--bgp-router-id A.B.C.D)", c.RouterID)
		}
	}
	seen := make(map[netip.Addr]bool, len(c.Peers))
	for _, p := range c.Peers {
		if err := p.check(); err != nil {
			return fmt.Errorf("BGP peer %s: %v", p, err)
		}
		if seen[p.Addr] {
			return fmt.Errorf("BGP peer %s given twice: one session per peer address", p.Addr)
		}
		seen[p.Addr] = true
	}
	if nh := c.NextHop; nh.IsValid() {
		if !nh.Is4() || nh.IsUnspecified() || nh.IsMulticast() || nh.IsLoopback() {
			return fmt.Errorf("BGP next hop %s: want a unicast IPv4 address of this host (--bgp-next-hop A.B.C.D)", nh)
		}
	}
	if err := checkAggregate(c.Aggregate); err != nil {
		return err
	}
	switch {
	case c.HoldTime < 0:
		c.HoldTime = 0
	case c.HoldTime == 0:
		c.HoldTime = DefaultHoldTime
	case c.HoldTime < 3*time.Second || c.HoldTime > maxHoldTime || c.HoldTime%time.Second != 0:
		return fmt.Errorf("BGP hold time %v: want whole seconds, 3s to 65535s (or negative for none)", c.HoldTime)
	}
	if c.ConnectRetry <= 0 {
		c.ConnectRetry = DefaultConnectRetry
	} else if c.ConnectRetry < time.Second || c.ConnectRetry%time.Second != 0 {
		return fmt.Errorf("BGP connect retry %v: want whole seconds, at least 1s", c.ConnectRetry)
	}
	if c.RestartTime < 0 || c.RestartTime > maxRestartTime || c.RestartTime%time.Second != 0 {
		return fmt.Errorf("BGP graceful restart time %v: want whole seconds, 0 (off) to 4095s", c.RestartTime)
	}
	if c.Restarting && c.RestartTime == 0 {
		return errors.New("BGP: a restarting speaker needs graceful restart (a non-zero restart time)")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

func checkAggregate(p netip.Prefix) error {
	if !p.IsValid() {
		return nil
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("BGP aggregate %s: want an IPv4 prefix (the pool)", p)
	}
	if p.Bits() == 0 || p.Bits() == 32 {
		return fmt.Errorf("BGP aggregate %s: want a prefix between /1 and /31 (the pool)", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("BGP aggregate %s has host bits set; did you mean %s?", p, p.Masked())
	}
	return nil
}
