package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/fourover6/fourover6/dataplane"
	"github.com/fourover6/fourover6/dataplane/bgp"
	"github.com/spf13/pflag"
)

// bgpOptions are the --bgp-* flags: with --bgp-asn the data plane announces
// a /32 for each client it holds to the --bgp-peer routers.
type bgpOptions struct {
	asn          uint32
	routerID     string
	peers        []string
	nextHop      string
	communities  []string
	aggregate    bool
	listenPort   uint16
	holdTime     time.Duration
	restartTime  time.Duration
	connectRetry time.Duration
}

func (b *bgpOptions) addFlags(f *pflag.FlagSet) {
	f.Uint32Var(&b.asn, "bgp-asn", 0, "announce each client's /32 over BGP from this AS number (0: BGP off); needs --bgp-peer")
	f.StringVar(&b.routerID, "bgp-router-id", "", "BGP identifier `A.B.C.D` (default: the host's first global IPv4 address)")
	f.StringSliceVar(&b.peers, "bgp-peer", nil, "BGP neighbour `ADDR[:PORT]@ASN` to dial, IPv4 or IPv6, e.g. 198.51.100.2@65001 or [2001:db8::2]:179@65001 (comma separated, repeatable)")
	f.StringVar(&b.nextHop, "bgp-next-hop", "", "IPv4 next hop `A.B.C.D` of the announced routes (default: our address on the link toward each peer)")
	f.StringSliceVar(&b.communities, "bgp-communities", nil, "communities `ASN:VALUE` (or no-export, no-advertise) attached to every announced route (comma separated, repeatable)")
	f.BoolVar(&b.aggregate, "bgp-aggregate", false, "announce the pool as an aggregate too, besides the clients' /32s")
	// The same switch under the name it was first planned with.
	f.BoolVar(&b.aggregate, "bgp-announce-pool", false, "same as --bgp-aggregate")
	f.MarkHidden("bgp-announce-pool")
	f.Uint16Var(&b.listenPort, "bgp-listen-port", 0, "also accept sessions that the --bgp-peer routers open toward us on this TCP port (0: no listening socket, we dial out only)")
	f.DurationVar(&b.holdTime, "bgp-hold-time", bgp.DefaultHoldTime, "BGP hold time proposed to the peers (whole seconds, 3s or more; 0: none); keepalives go every third of it")
	f.DurationVar(&b.restartTime, "bgp-graceful-restart", bgp.DefaultRestartTime, "BGP graceful restart time: how long routers keep our routes when the process dies or hands off (whole seconds, at most 4095s; 0: off, routes go with the session)")
	f.DurationVar(&b.connectRetry, "bgp-connect-retry", bgp.DefaultConnectRetry, "pause between attempts to reach a peer that is not up (whole seconds)")
}

// bgpFlagNames are the --bgp-* flags other than --bgp-asn, for the message
// when one is given without it.
var bgpFlagNames = []string{"bgp-router-id", "bgp-peer", "bgp-next-hop", "bgp-communities", "bgp-aggregate", "bgp-listen-port"}

// config builds the speaker's configuration; ok is false when BGP is off.
// The error says which flag to fix.
func (b *bgpOptions) config() (cfg bgp.Config, ok bool, err error) {
	if b.asn == 0 {
		if set := b.setWithoutASN(); set != "" {
			return cfg, false, fmt.Errorf("--%s needs --bgp-asn (the AS number this data plane announces from)", set)
		}
		return cfg, false, nil
	}
	if len(b.peers) == 0 {
		return cfg, false, errors.New("--bgp-asn needs at least one --bgp-peer ADDR[:PORT]@ASN, e.g. --bgp-peer 198.51.100.2@65001")
	}
	cfg.ASN = b.asn
	for _, s := range b.peers {
		p, err := bgp.ParsePeer(s)
		if err != nil {
			return cfg, false, fmt.Errorf("--bgp-peer: %v", err)
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	if b.routerID != "" {
		if cfg.RouterID, err = netip.ParseAddr(strings.TrimSpace(b.routerID)); err != nil || !cfg.RouterID.Is4() {
			return cfg, false, fmt.Errorf("--bgp-router-id %q: want an IPv4 address A.B.C.D", b.routerID)
		}
	}
	if b.nextHop != "" {
		if cfg.NextHop, err = netip.ParseAddr(strings.TrimSpace(b.nextHop)); err != nil || !cfg.NextHop.Is4() {
			return cfg, false, fmt.Errorf("--bgp-next-hop %q: want an IPv4 address of this host, A.B.C.D", b.nextHop)
		}
	}
	if cfg.Communities, err = bgp.ParseCommunities(strings.Join(b.communities, ",")); err != nil {
		return cfg, false, fmt.Errorf("--bgp-communities: %v", err)
	}
	for name, d := range map[string]time.Duration{"--bgp-hold-time": b.holdTime, "--bgp-graceful-restart": b.restartTime, "--bgp-connect-retry": b.connectRetry} {
		if d < 0 || d%time.Second != 0 {
			return cfg, false, fmt.Errorf("%s %s: want whole seconds (e.g. 90s), 0 or more", name, d)
		}
	}
	switch {
	case b.holdTime == 0:
		cfg.HoldTime = -1 // the speaker's "none"
	case b.holdTime < 3*time.Second || b.holdTime > 65535*time.Second:
		return cfg, false, fmt.Errorf("--bgp-hold-time %s: want 3s to 65535s, or 0 for none", b.holdTime)
	default:
		cfg.HoldTime = b.holdTime
	}
	if b.restartTime > 4095*time.Second {
		return cfg, false, fmt.Errorf("--bgp-graceful-restart %s: at most 4095s (0: off)", b.restartTime)
	}
	cfg.RestartTime = b.restartTime
	if b.connectRetry == 0 {
		return cfg, false, fmt.Errorf("--bgp-connect-retry %s: want 1s or more", b.connectRetry)
	}
	cfg.ConnectRetry = b.connectRetry
	cfg.ListenPort = b.listenPort
	// The speaker's own checks (reserved ASNs, a peer given twice, the
	// next hop, the router id, which it defaults from the host's
	// addresses) run without opening anything.
	if _, err := bgp.New(cfg); err != nil {
		return cfg, false, err
	}
	return cfg, true, nil
}

func (b *bgpOptions) setWithoutASN() string {
	switch {
	case b.routerID != "":
		return bgpFlagNames[0]
	case len(b.peers) > 0:
		return bgpFlagNames[1]
	case b.nextHop != "":
		return bgpFlagNames[2]
	case len(b.communities) > 0:
		return bgpFlagNames[3]
	case b.aggregate:
		return bgpFlagNames[4]
	case b.listenPort != 0:
		return bgpFlagNames[5]
	}
	return ""
}

// newSpeaker builds the BGP speaker when --bgp-asn is set; it starts once
// the data plane is registered (startBGP). restarting: this process takes
// over from a predecessor whose routes the routers keep (graceful
// restart); the clients it takes over are announced before the start.
func (d *daemon) newSpeaker(restarting bool) error {
	cfg, ok, err := d.o.bgp.config()
	if err != nil || !ok {
		return err
	}
	cfg.Logger = d.log
	cfg.Restarting = restarting && cfg.RestartTime > 0
	if d.bgp, err = bgp.New(cfg); err != nil {
		return err
	}
	sp := d.bgp
	d.bgpHandoff = bgpHandoff{
		commit: func() error {
			if sp.Config().RestartTime == 0 {
				d.log.Warn("BGP: hand-off without graceful restart (--bgp-graceful-restart 0s): the routes are withdrawn, and announced again by the new process")
				d.stopBGP()
				return nil
			}
			return sp.Handoff()
		},
		rollback: func() {
			d.log.Info("BGP: the hand-off did not happen; the speaker serves on untouched")
		},
	}
	// However the daemon ends, the routes go: Stop is a no-op after a
	// stop or a hand-off.
	d.onClose(func() { d.stopBGP() })
	return nil
}

// startBGP starts the speaker once the TUN has the pool's gateway: before
// that no client holds an address, and the aggregate (the pool) is known.
func (d *daemon) startBGP(a dataplane.Assignment) error {
	if d.bgp == nil {
		return nil
	}
	if d.o.bgp.aggregate {
		if err := d.bgp.SetAggregate(a.Pool.Masked()); err != nil {
			return fmt.Errorf("--bgp-aggregate: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.bgp.Start(ctx); err != nil {
		if d.o.bgp.listenPort != 0 {
			return fmt.Errorf("--bgp-listen-port %d: %w", d.o.bgp.listenPort, err)
		}
		return err
	}
	return nil
}

// stopBGP withdraws every route and closes the sessions (bounded: a peer
// that does not answer does not hold the exit up).
func (d *daemon) stopBGP() {
	if d.bgp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.bgp.Stop(ctx); err != nil && !errors.Is(err, bgp.ErrStopped) {
		d.log.Warn("BGP: stop", "err", err)
	}
}
