package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ReadHost asks the kernel (of the calling thread's network namespace) what
// the host accepts as its own: the local and broadcast routes of its local
// routing table, which cover every interface address and its subnet's
// broadcast address as well as local prefixes routed to the host, and the
// interfaces' IPv4 addresses, which also covers addresses whose local
// routes live in another table (a VRF's).
func ReadHost() (Host, error) { return readHost(netlink.NewHandle) }

func readHost(handle func(...int) (*netlink.Handle, error)) (Host, error) {
	nl, err := handle(unix.NETLINK_ROUTE)
	if err != nil {
		return Host{}, err
	}
	defer nl.Close()
	var h Host
	var routes []netlink.Route
	for range 3 { // a dump interrupted by a concurrent change is retried
		routes, err = nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return h, fmt.Errorf("list local routes: %w", err)
	}
	for _, r := range routes {
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		switch r.Type {
		case unix.RTN_LOCAL:
			h.Local = append(h.Local, p)
		case unix.RTN_BROADCAST:
			h.Broadcast = append(h.Broadcast, p)
		}
	}
	var addrs []netlink.Addr
	for range 3 {
		addrs, err = nl.AddrList(nil, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return h, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			h.Local = append(h.Local, netip.PrefixFrom(ip, 32))
		}
		if ip, ok := netip.AddrFromSlice(a.Broadcast.To4()); ok && !ip.IsUnspecified() {
			h.Broadcast = append(h.Broadcast, netip.PrefixFrom(ip, 32))
		}
	}
	return h.normalize(), nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP.To4())
	ones, bits := n.Mask.Size()
	if !ok || bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// settle is how long a burst of address changes (an interface coming up
// brings several) is awaited before the host is read again.
const settle = 50 * time.Millisecond

// HostWatcher keeps a Policy's host addresses current, in the network
// namespace it was started in.
type HostWatcher struct {
	p   *Policy
	ns  netns.NsHandle
	log *slog.Logger
}

// WatchHost reads the host's addresses (in the calling thread's network
// namespace) into p now, and again whenever an IPv4 address or a route of
// the local table changes, until ctx ends. It returns once the first
// reading is in the table; an error means the kernel could not be asked.
func (p *Policy) WatchHost(ctx context.Context, log *slog.Logger) (*HostWatcher, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("watch host addresses: %w", err)
	}
	w := &HostWatcher{p: p, ns: ns, log: log}
	sub, err := w.subscribe()
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("watch host addresses: %w", err)
	}
	if err := w.Refresh(); err != nil {
		sub.close()
		ns.Close()
		return nil, err
	}
	go func() {
		defer ns.Close()
		w.watch(ctx, sub)
	}()
	return w, nil
}

// Refresh reads the host's addresses now and rebuilds the table when they
// changed.
func (w *HostWatcher) Refresh() error {
	h, err := readHost(func(fam ...int) (*netlink.Handle, error) { return netlink.NewHandleAt(w.ns, fam...) })
	if err != nil {
		return fmt.Errorf("read host addresses: %w", err)
	}
	t, changed, err := w.p.SetHost(h)
	if err != nil {
		return err
	}
	if changed {
		w.log.Info("destination policy: host addresses read", "local", t.cfg.Host.Local, "broadcast", t.cfg.Host.Broadcast)
	}
	return nil
}

func (w *HostWatcher) watch(ctx context.Context, sub *subscription) {
	defer func() { sub.close() }()
	for {
		if !sub.wait(ctx) {
			if ctx.Err() != nil {
				return
			}
			sub = w.resubscribe(ctx, sub)
			continue
		}
		// Let the rest of a burst arrive, then read once.
		t := time.NewTimer(settle)
	burst:
		for sub.alive() {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
				break burst
			case _, ok := <-sub.addrs:
				sub.check(ok)
			case _, ok := <-sub.routes:
				sub.check(ok)
			}
		}
		t.Stop()
		if err := w.Refresh(); err != nil {
			w.log.Error("destination policy: host addresses not re-read; the table keeps the previous ones", "err", err)
		}
	}
}

// resubscribe replaces a subscription the kernel ended (its socket overflowed
// or failed): changes may have been missed, so the host is read again. It
// returns nil when ctx ended first.
func (w *HostWatcher) resubscribe(ctx context.Context, old *subscription) *subscription {
	old.close()
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 10*time.Second) {
		sub, err := w.subscribe()
		if err == nil {
			if err := w.Refresh(); err != nil {
				w.log.Error("destination policy: host addresses not re-read; the table keeps the previous ones", "err", err)
			}
			return sub
		}
		w.log.Warn("destination policy: cannot watch host addresses; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return &subscription{done: make(chan struct{}), ended: true}
		case <-time.After(wait):
		}
	}
}

// subscription is a pair of netlink subscriptions: IPv4 address changes and
// route changes (of which the local table's matter).
type subscription struct {
	addrs          chan netlink.AddrUpdate
	routes         chan netlink.RouteUpdate
	done           chan struct{}
	addrOn, routOn bool // subscribed: their goroutines close the channels
	ended          bool // a channel closed: the kernel ended the subscription
}

func (w *HostWatcher) subscribe() (*subscription, error) {
	s := &subscription{
		addrs:  make(chan netlink.AddrUpdate, 64),
		routes: make(chan netlink.RouteUpdate, 64),
		done:   make(chan struct{}),
	}
	if err := netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{Namespace: &w.ns}); err != nil {
		s.close()
		return nil, err
	}
	s.addrOn = true
	if err := netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{Namespace: &w.ns}); err != nil {
		s.close()
		return nil, err
	}
	s.routOn = true
	return s, nil
}

// wait blocks until a change that matters arrives (true), or ctx ends or
// the kernel ends the subscription (false).
func (s *subscription) wait(ctx context.Context) bool {
	for s.alive() {
		select {
		case <-ctx.Done():
			return false
		case _, ok := <-s.addrs:
			if s.check(ok) {
				return true
			}
		case u, ok := <-s.routes:
			if s.check(ok) && u.Table == unix.RT_TABLE_LOCAL {
				return true
			}
		}
	}
	return false
}

func (s *subscription) alive() bool { return !s.ended }

// check notes a closed channel; it returns ok.
func (s *subscription) check(ok bool) bool {
	if !ok {
		s.ended = true
	}
	return ok
}

// close ends the subscriptions and drains what they still deliver, so that
// their goroutines (blocked on a full channel, maybe) can finish.
func (s *subscription) close() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	if s.addrOn {
		go func() {
			for range s.addrs {
			}
		}()
	}
	if s.routOn {
		go func() {
			for range s.routes {
			}
		}()
	}
}
