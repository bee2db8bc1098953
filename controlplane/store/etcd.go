package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Key layout in etcd, under a prefix (default "/fourover6/"):
//
//	leases/13.8.0.2                   lease (JSON): one key per address
//	owners/<dataplane>/<session>      "13.8.0.2": the session's lease
//	released/13.8.0.2                 release time (RFC 3339): orders reuse
//	holders/13.8.0.2                  last holder of a free address: client IPv6 (text)
//	reservations/<client prefix>      "13.8.0.9" (the prefix path-escaped)
//	settings                          settings (JSON)
//	dataplanes/<id>                   data plane (JSON)
//	election/...                      leader election (package leader)
//	meta/restoring                    set while a restore writes (Load refuses)
//	meta/restored_from                the backup last restored (sha256)
//	meta/probe                        written to check writes work again
//
// Data plane and session ids are path-escaped. An address is claimed with
// one transaction that requires both leases/<addr> and owners/<dp>/<session>
// to be absent, so no two controllers can hand out one address. While this
// controller leads, every write also requires its election key to be the
// one it created (the fence): a controller that lost the election without
// noticing yet cannot write.

// DefaultEtcdPrefix is where the state lives unless the URL has a path.
const DefaultEtcdPrefix = "/fourover6/"

// EtcdConfig configures OpenEtcd.
type EtcdConfig struct {
	Endpoints   []string // host:port or http://host:port
	Prefix      string   // default DefaultEtcdPrefix
	DialTimeout time.Duration
	// Logger receives the records Load skips; nil discards.
	Logger *slog.Logger
}

// ParseEtcdURL parses "etcd://host:2379[,host:2379][/prefix]".
func ParseEtcdURL(s string) (EtcdConfig, error) {
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return EtcdConfig{}, fmt.Errorf("%q: want etcd://host:port[,host:port][/prefix]", s)
	}
	hosts, path, _ := strings.Cut(rest, "/")
	var cfg EtcdConfig
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" || port == "" {
			return EtcdConfig{}, fmt.Errorf("%q: endpoint %q is not host:port", s, h)
		}
		cfg.Endpoints = append(cfg.Endpoints, "http://"+h)
	}
	if len(cfg.Endpoints) == 0 {
		return EtcdConfig{}, fmt.Errorf("%q: no etcd endpoint: want etcd://host:port[,host:port]", s)
	}
	if path != "" {
		cfg.Prefix = "/" + strings.Trim(path, "/") + "/"
	}
	return cfg, nil
}

// Etcd keeps the state in etcd v3.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	desc   string
	log    *slog.Logger

	fenceMu  sync.RWMutex
	fenceKey string
	fenceRev int64
}

var _ Store = (*Etcd)(nil)

// OpenEtcd connects to etcd and checks that it answers.
func OpenEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", cfg.Endpoints, err)
	}
	hosts := make([]string, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			hosts[i] = u.Host
		} else {
			hosts[i] = e
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Etcd{cli: cli, prefix: cfg.Prefix, desc: "etcd://" + strings.Join(hosts, ","), log: log}
	if cfg.Prefix != DefaultEtcdPrefix {
		e.desc += strings.TrimSuffix(cfg.Prefix, "/")
	}
	// Fail fast on a wrong address rather than at the first lease.
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, e.prefix+"settings"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %s does not answer: %w", strings.Join(hosts, ","), err)
	}
	return e, nil
}

// Client is the etcd client, for the leader election.
func (e *Etcd) Client() *clientv3.Client { return e.cli }

// Prefix is the key prefix of this store.
func (e *Etcd) Prefix() string { return e.prefix }

// SetFence makes every later write conditional on key still having
// CreateRevision rev (the election key this controller won with). An empty
// key removes the condition.
func (e *Etcd) SetFence(key string, rev int64) {
	e.fenceMu.Lock()
	e.fenceKey, e.fenceRev = key, rev
	e.fenceMu.Unlock()
}

func (e *Etcd) fence() (key string, rev int64) {
	e.fenceMu.RLock()
	defer e.fenceMu.RUnlock()
	return e.fenceKey, e.fenceRev
}

// txn runs If(fence && cmps) Then(ops) Else(get fence key, elseOps).
// fenced is true when it failed because of the fence.
func (e *Etcd) txn(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op, elseOps []clientv3.Op) (*clientv3.TxnResponse, bool, error) {
	fkey, frev := e.fence()
	if fkey != "" {
		cmps = append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(fkey), "=", frev)}, cmps...)
		elseOps = append([]clientv3.Op{clientv3.OpGet(fkey)}, elseOps...)
	}
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elseOps...).Commit()
	if err != nil {
		return nil, false, err
	}
	if !resp.Succeeded && fkey != "" {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 || kvs[0].CreateRevision != frev {
			return resp, true, nil
		}
		resp.Responses = resp.Responses[1:]
	}
	return resp, false, nil
}

func (e *Etcd) leaseKey(a netip.Addr) string    { return e.prefix + "leases/" + a.String() }
func (e *Etcd) releasedKey(a netip.Addr) string { return e.prefix + "released/" + a.String() }
func (e *Etcd) holderKey(a netip.Addr) string   { return e.prefix + "holders/" + a.String() }
func (e *Etcd) ownerKey(o Owner) string         { return e.prefix + "owners/" + e.ownerPath(o) }
func (e *Etcd) reservationKey(p netip.Prefix) string {
	return e.prefix + "reservations/" + url.PathEscape(p.String())
}
func (e *Etcd) dataplaneKey(id string) string { return e.prefix + "dataplanes/" + url.PathEscape(id) }
func (e *Etcd) settingsKey() string           { return e.prefix + "settings" }

// maxRetries bounds optimistic retries when a key changed between read and
// write (only possible with a second writer).
const maxRetries = 8

func (e *Etcd) Claim(ctx context.Context, l Lease) (Lease, bool, error) {
	if err := CheckLease(l); err != nil {
		return Lease{}, false, err
	}
	l.LeasedAt = l.LeasedAt.UTC()
	lk, ok := e.leaseKey(l.Addr), e.ownerKey(l.Owner)
	for range maxRetries {
		resp, fenced, err := e.txn(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(lk), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(ok), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpPut(lk, string(encodeLease(l))),
				clientv3.OpPut(ok, l.Addr.String()),
				clientv3.OpDelete(e.releasedKey(l.Addr)),
				clientv3.OpDelete(e.holderKey(l.Addr)),
			},
			[]clientv3.Op{clientv3.OpGet(ok)},
		)
		if err != nil {
			return Lease{}, false, err
		}
		if fenced {
			return Lease{}, false, ErrFenced
		}
		if resp.Succeeded {
			return l, false, nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return Lease{}, false, ErrTaken // the address is someone else's
		}
		a, err := netip.ParseAddr(string(kvs[0].Value))
		if err != nil {
			return Lease{}, false, fmt.Errorf("owner record %s: %w", ok, err)
		}
		held, found, err := e.Lease(ctx, a)
		if err != nil {
			return Lease{}, false, err
		}
		if found && held.Owner == l.Owner {
			return held, true, nil
		}
		// Released between the two reads: try again.
	}
	return Lease{}, false, fmt.Errorf("claim %s for %s: the state kept changing", l.Addr, l.Owner)
}

func (e *Etcd) Release(ctx context.Context, addr netip.Addr, owner Owner, at time.Time) (bool, error) {
	if !addr.Is4() {
		return false, nil
	}
	lk := e.leaseKey(addr)
	for range maxRetries {
		get, err := e.cli.Get(ctx, lk)
		if err != nil {
			return false, err
		}
		if len(get.Kvs) == 0 {
			return false, nil
		}
		l, err := decodeLease(get.Kvs[0].Value)
		if err != nil {
			return false, err
		}
		if l.Owner != owner {
			return false, nil
		}
		resp, fenced, err := e.txn(ctx,
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(lk), "=", get.Kvs[0].ModRevision)},
			[]clientv3.Op{
				clientv3.OpDelete(lk),
				clientv3.OpDelete(e.ownerKey(owner)),
				clientv3.OpPut(e.releasedKey(addr), at.UTC().Format(time.RFC3339Nano)),
				e.holderOp(l),
			}, nil)
		if err != nil {
			return false, err
		}
		if fenced {
			return false, ErrFenced
		}
		if resp.Succeeded {
			return true, nil
		}
	}
	return false, fmt.Errorf("release %s for %s: the state kept changing", addr, owner)
}

// releaseChunk bounds the releases of one etcd transaction: each takes
// four operations and a comparison, and etcd refuses transactions of more
// than 128 operations (its --max-txn-ops default).
const releaseChunk = 30

// ReleaseMany releases in transactions of releaseChunk: one read of the
// chunk's leases at one revision, then one transaction that requires each
// lease it frees to be unchanged since. When one of them changed (another
// writer), that chunk is released one lease at a time instead.
func (e *Etcd) ReleaseMany(ctx context.Context, rs []Release, at time.Time) ([]bool, error) {
	out := make([]bool, 0, len(rs))
	for start := 0; start < len(rs); start += releaseChunk {
		chunk := rs[start:min(start+releaseChunk, len(rs))]
		done, err := e.releaseChunk(ctx, chunk, at)
		out = append(out, done...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// releaseChunk returns, on error, the outcomes committed before it.
func (e *Etcd) releaseChunk(ctx context.Context, rs []Release, at time.Time) ([]bool, error) {
	out := make([]bool, len(rs))
	gets := make([]clientv3.Op, 0, len(rs))
	for _, r := range rs {
		if r.Addr.Is4() {
			gets = append(gets, clientv3.OpGet(e.leaseKey(r.Addr)))
		}
	}
	if len(gets) == 0 {
		return out, nil
	}
	resp, err := e.cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, err
	}
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	seen := make(map[netip.Addr]bool, len(rs))
	g := 0
	for i, r := range rs {
		if !r.Addr.Is4() {
			continue
		}
		kvs := resp.Responses[g].GetResponseRange().GetKvs()
		g++
		if len(kvs) == 0 || seen[r.Addr] {
			continue
		}
		l, err := decodeLease(kvs[0].Value)
		if err != nil {
			return nil, err
		}
		if l.Owner != r.Owner {
			continue
		}
		seen[r.Addr], out[i] = true, true
		lk := e.leaseKey(r.Addr)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(lk), "=", kvs[0].ModRevision))
		ops = append(ops,
			clientv3.OpDelete(lk),
			clientv3.OpDelete(e.ownerKey(r.Owner)),
			clientv3.OpPut(e.releasedKey(r.Addr), at.UTC().Format(time.RFC3339Nano)),
			e.holderOp(l))
	}
	if len(ops) == 0 {
		return out, nil
	}
	tr, fenced, err := e.txn(ctx, cmps, ops, nil)
	if err != nil {
		return nil, err
	}
	if fenced {
		return nil, ErrFenced
	}
	if tr.Succeeded {
		return out, nil
	}
	// A lease changed between the read and the write: one at a time.
	for i, r := range rs {
		if !out[i] {
			continue
		}
		if out[i], err = e.Release(ctx, r.Addr, r.Owner, at); err != nil {
			return out[:i], err
		}
	}
	return out, nil
}

// holderOp records l's client as the last holder of its address, or
// forgets the address's holder when l has none.
func (e *Etcd) holderOp(l Lease) clientv3.Op {
	if c, ok := holderOf(l); ok {
		return clientv3.OpPut(e.holderKey(l.Addr), string(encodeHolder(c)))
	}
	return clientv3.OpDelete(e.holderKey(l.Addr))
}

func (e *Etcd) Lease(ctx context.Context, addr netip.Addr) (Lease, bool, error) {
	if !addr.Is4() {
		return Lease{}, false, nil
	}
	resp, err := e.cli.Get(ctx, e.leaseKey(addr))
	if err != nil {
		return Lease{}, false, err
	}
	if len(resp.Kvs) == 0 {
		return Lease{}, false, nil
	}
	l, err := decodeLease(resp.Kvs[0].Value)
	return l, err == nil, err
}

// Load reads every key under the prefix at one revision, checking every
// record (see loader for what is fatal and what is skipped).
func (e *Etcd) Load(ctx context.Context) (State, error) {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return State{}, err
	}
	return e.decode(resp, e.log)
}

// decode builds the state from the keys of one revision.
func (e *Etcd) decode(resp *clientv3.GetResponse, log *slog.Logger) (State, error) {
	l := newLoader(e.desc, e.ownerPath, log)
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), e.prefix)
		val := kv.Value
		if val == nil {
			val = []byte{}
		}
		dir, name, _ := strings.Cut(k, "/")
		switch dir {
		case "leases":
			a, err := netip.ParseAddr(name)
			if err != nil || !a.Is4() {
				return State{}, l.fatal("lease key %s: %q is not an IPv4 address", kv.Key, name)
			}
			if err := l.lease(a, name, val); err != nil {
				return State{}, err
			}
		case "owners":
			a, err := netip.ParseAddr(string(val))
			if err != nil || !a.Is4() {
				return State{}, l.fatal("the owner index entry %s holds %q, not an IPv4 address", kv.Key, clipKey(val))
			}
			l.owner(name, a)
		case "released":
			a, err1 := netip.ParseAddr(name)
			t, err2 := time.Parse(time.RFC3339Nano, string(val))
			switch {
			case err1 != nil || !a.Is4():
				l.released(a, t, string(kv.Key), fmt.Errorf("%q is not an IPv4 address", name))
			default:
				l.released(a, t, name, err2)
			}
		case "holders":
			a, err := netip.ParseAddr(name)
			if err != nil || !a.Is4() {
				l.holder(a, string(kv.Key), val, fmt.Errorf("%q is not an IPv4 address", name))
				continue
			}
			l.holder(a, name, val, nil)
		case "reservations":
			p, err := url.PathUnescape(name)
			if err != nil {
				return State{}, l.fatal("reservation key %s: %v", kv.Key, err)
			}
			if err := l.reservation([]byte(p), val); err != nil {
				return State{}, err
			}
		case "settings":
			if name != "" {
				continue
			}
			if err := l.settings(val); err != nil {
				return State{}, err
			}
		case "dataplanes":
			id, err := url.PathUnescape(name)
			if err != nil {
				l.skip("data plane", string(kv.Key), err, "the data plane is unknown until it registers again")
				continue
			}
			l.dataplane(id, val)
		case "meta":
			if name == metaRestoring {
				return State{}, l.fatal("a restore into this store was interrupted (restoring %s): run the controller with --restore and --restore-replace again", val)
			}
		}
	}
	return l.finish()
}

// ownerPath is the owner index key of o below "owners/".
func (e *Etcd) ownerPath(o Owner) string {
	return url.PathEscape(o.Dataplane) + "/" + url.PathEscape(o.Session)
}

func (e *Etcd) put(ctx context.Context, key, val string) error {
	_, fenced, err := e.txn(ctx, nil, []clientv3.Op{clientv3.OpPut(key, val)}, nil)
	if err != nil {
		return err
	}
	if fenced {
		return ErrFenced
	}
	return nil
}

func (e *Etcd) PutReservation(ctx context.Context, r Reservation) (bool, error) {
	k := e.reservationKey(r.Client)
	get, err := e.cli.Get(ctx, k)
	if err != nil {
		return false, err
	}
	if len(get.Kvs) > 0 && string(get.Kvs[0].Value) == r.Addr.String() {
		return false, nil
	}
	return true, e.put(ctx, k, r.Addr.String())
}

func (e *Etcd) DeleteReservation(ctx context.Context, client netip.Prefix) (bool, error) {
	k := e.reservationKey(client)
	resp, fenced, err := e.txn(ctx,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), ">", 0)},
		[]clientv3.Op{clientv3.OpDelete(k)}, nil)
	if err != nil {
		return false, err
	}
	if fenced {
		return false, ErrFenced
	}
	return resp.Succeeded, nil
}

func (e *Etcd) PutSettings(ctx context.Context, s Settings) error {
	return e.put(ctx, e.settingsKey(), string(encodeSettings(s)))
}

func (e *Etcd) PutDataplane(ctx context.Context, d Dataplane) error {
	if d.ID == "" {
		return invalid("data plane without id")
	}
	return e.put(ctx, e.dataplaneKey(d.ID), string(encodeDataplane(d)))
}

func (e *Etcd) DeleteDataplane(ctx context.Context, id string) (bool, error) {
	k := e.dataplaneKey(id)
	resp, fenced, err := e.txn(ctx,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), ">", 0)},
		[]clientv3.Op{clientv3.OpDelete(k)}, nil)
	if err != nil {
		return false, err
	}
	if fenced {
		return false, ErrFenced
	}
	return resp.Succeeded, nil
}

func (e *Etcd) String() string { return e.desc }

func (e *Etcd) Close() error { return e.cli.Close() }
