// Package nat gives the clients of a data plane the IPv4 internet, as the
// lab did by hand with
//
//	sysctl -w net.ipv4.ip_forward=1
//	iptables -t nat -A POSTROUTING -s 13.8.0.0/24 -j MASQUERADE
//
// but through nftables' netlink API (github.com/google/nftables), without
// running any command, and undone on exit.
//
// Enable turns IPv4 forwarding on (remembering the old value) and puts one
// table of our own in the kernel:
//
//	table ip fourover6 {
//	    chain postrouting {
//	        type nat hook postrouting priority srcnat; policy accept;
//	        ip saddr 13.8.0.0/24 oifname != "4o6" counter masquerade comment "fourover6: ..."
//	    }
//	}
//
// With Config.Interfaces set, there is one rule per uplink instead
// (oifname "eth0" ... masquerade), and pool traffic leaving through any
// other interface keeps its source address.
//
// Everything lives in that table, so undoing is deleting it. A table of the
// same name left by a run that crashed is replaced in the same atomic batch
// that creates ours.
//
// # Why there is no forward chain
//
// An accept verdict in one nftables base chain only ends that chain: the
// packet still goes through every other base chain on the same hook, in
// every other table (the firewall's inet filter, iptables-nft's ip filter,
// Docker's FORWARD with policy drop), and a drop in any of them is final. So
// a forward chain of ours that accepts the pool could not make forwarding
// work on a host whose firewall drops it; it would only suggest that it
// does. Enable looks for forward-hook chains with a drop policy in other
// tables instead and logs a warning naming each one (iptables-legacy rules
// are invisible to nftables and cannot be checked). On such a host the
// operator allows the pool in the firewall's own forward chain, e.g.
//
//	nft insert rule inet filter forward ip saddr 13.8.0.0/24 accept
//	nft insert rule inet filter forward ip daddr 13.8.0.0/24 ct state established,related accept
//
// or, with Docker, the same as iptables rules in the DOCKER-USER chain.
//
// # Namespaces and privileges
//
// Enable works in the network namespace of the calling OS thread (the
// process's, in a daemon); the undo function goes back to that namespace
// whatever thread runs it. It needs CAP_NET_ADMIN (nftables, and writing
// net.ipv4.ip_forward of the namespace), not full root, and a writable
// /proc/sys (systemd's ProtectKernelTunables= must stay off).
//
// If the process is killed (SIGKILL, a crash), the table stays until the
// next Enable replaces it, or until `nft delete table ip fourover6`; IPv4
// forwarding stays on.
package nat

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// DefaultTable is the name of our nftables table (family ip).
const DefaultTable = "fourover6"

// ChainName is the name of the NAT chain in our table.
const ChainName = "postrouting"

// IPForwardPath is the sysctl that turns IPv4 forwarding on.
const IPForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Config says what to masquerade.
type Config struct {
	// Pool is the clients' IPv4 prefix, e.g. 13.8.0.0/24: packets from it
	// are masqueraded.
	Pool netip.Prefix
	// TUN is the data plane's TUN interface: packets leaving through it
	// (client to client) keep their source.
	TUN string
	// Interfaces are the uplinks to masquerade out of. Empty means every
	// interface but the TUN. Names are matched when packets pass, so an
	// interface that appears later (ppp0) works.
	Interfaces []string
	// Table is the nftables table (family ip); empty means DefaultTable.
	Table string
	// Logger gets what was done and warnings; nil discards.
	Logger *slog.Logger
}

func (c *Config) check() error {
	if !c.Pool.IsValid() || !c.Pool.Addr().Is4() {
		return fmt.Errorf("nat: pool %q is not an IPv4 prefix", c.Pool)
	}
	c.Pool = c.Pool.Masked()
	if err := checkIfName("TUN", c.TUN); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, name := range c.Interfaces {
		if err := checkIfName("--nat-interface", name); err != nil {
			return err
		}
		if name == c.TUN {
			return fmt.Errorf("nat: --nat-interface %q is the TUN interface: masquerade out of the uplink instead", name)
		}
		if seen[name] {
			return fmt.Errorf("nat: --nat-interface %q given twice", name)
		}
		seen[name] = true
	}
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if len(c.Table) > 255 || strings.ContainsRune(c.Table, 0) {
		return fmt.Errorf("nat: table name %q is not a valid nftables name", c.Table)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func checkIfName(what, name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ || strings.ContainsAny(name, "/ \x00") {
		return fmt.Errorf("nat: %s %q is not an interface name (1 to 15 characters)", what, name)
	}
	return nil
}

// Enable turns IPv4 forwarding on and masquerades cfg.Pool, in the network
// namespace of the calling thread. undo deletes the table and puts
// ip_forward back to what it was; it is safe to call more than once and
// from any goroutine. On error nothing is left changed.
func Enable(cfg Config) (undo func() error, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Logger

	// A lasting netlink socket, opened now on this thread, stays in this
	// namespace: undo uses it from whatever thread runs it. (Entering a
	// namespace with setns would need CAP_SYS_ADMIN; this needs none.)
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nat: nftables netlink socket: %w", explainNft(err))
	}
	closeConn := func() { conn.CloseLasting() }

	// The sysctl file is opened here, in this namespace, and kept: writes
	// through it reach this namespace's setting from any thread.
	fwd, err := os.OpenFile(IPForwardPath, os.O_RDWR, 0)
	if err != nil {
		closeConn()
		return nil, fmt.Errorf("nat: IPv4 forwarding: %w", err)
	}
	old, err := readSysctl(fwd)
	if err != nil {
		fwd.Close()
		closeConn()
		return nil, fmt.Errorf("nat: read %s: %w", IPForwardPath, err)
	}

	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: cfg.Table}
	if stale, err := tableExists(conn, table); err != nil {
		fwd.Close()
		closeConn()
		return nil, fmt.Errorf("nat: list nftables tables: %w", err)
	} else if stale {
		log.Warn("replacing an nftables table left behind (by a data plane that did not stop cleanly?)", "table", "ip "+cfg.Table)
	}
	install(conn, table, cfg)
	if err := conn.Flush(); err != nil {
		fwd.Close()
		closeConn()
		return nil, fmt.Errorf("nat: install nftables table ip %s: %w", cfg.Table, explainNft(err))
	}

	changedFwd := old != "1"
	if changedFwd {
		if err := writeSysctl(fwd, "1"); err != nil {
			conn.DelTable(table)
			conn.Flush()
			fwd.Close()
			closeConn()
			return nil, fmt.Errorf("nat: enable IPv4 forwarding (%s): %w", IPForwardPath, err)
		}
	}

	uplinks := "every interface but " + cfg.TUN
	if len(cfg.Interfaces) > 0 {
		uplinks = strings.Join(cfg.Interfaces, ",")
	}
	log.Info("NAT on: masquerading the pool", "pool", cfg.Pool, "out_of", uplinks,
		"table", "ip "+cfg.Table, "ip_forward_was", old)
	if drops, err := forwardDropChains(conn, table); err != nil {
		log.Debug("cannot check other firewall chains", "err", err)
	} else {
		for _, c := range drops {
			log.Warn("a forward chain of another table drops by default: pool traffic is forwarded only if that chain accepts it (see package nat)",
				"chain", c, "pool", cfg.Pool)
		}
	}

	var once sync.Once
	var undoErr error
	return func() error {
		once.Do(func() {
			defer closeConn()
			defer fwd.Close()
			var errs []error
			conn.DelTable(table)
			if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("nat: delete nftables table ip %s: %w", cfg.Table, err))
			}
			if changedFwd {
				if err := writeSysctl(fwd, old); err != nil {
					errs = append(errs, fmt.Errorf("nat: restore %s to %s: %w", IPForwardPath, old, err))
				}
			}
			undoErr = errors.Join(errs...)
			if undoErr == nil {
				log.Info("NAT off", "table", "ip "+cfg.Table, "ip_forward", old)
			}
		})
		return undoErr
	}, nil
}

// install queues the batch that (re)creates our table: add (a no-op if it
// exists), delete (whatever a crashed run left), add, then the chain and
// rules. The kernel applies the batch atomically.
func install(conn *nftables.Conn, table *nftables.Table, cfg Config) {
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	policy := nftables.ChainPolicyAccept
	chain := conn.AddChain(&nftables.Chain{
		Name:     ChainName,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &policy,
	})
	if len(cfg.Interfaces) == 0 {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain,
			Exprs:    masqRule(cfg.Pool, expr.CmpOpNeq, cfg.TUN),
			UserData: comment("fourover6: masquerade the pool out of every interface but the TUN " + cfg.TUN),
		})
		return
	}
	for _, ifname := range cfg.Interfaces {
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain,
			Exprs:    masqRule(cfg.Pool, expr.CmpOpEq, ifname),
			UserData: comment("fourover6: masquerade the pool out of " + ifname),
		})
	}
}

// masqRule is: ip saddr POOL oifname (==|!=) IFNAME counter masquerade.
func masqRule(pool netip.Prefix, op expr.CmpOp, ifname string) []expr.Any {
	m := prefixMask(pool.Bits())
	addr := pool.Addr().As4()
	return []expr.Any{
		// ip saddr & mask == pool
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		// oifname
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: IfnameBytes(ifname)},
		&expr.Counter{},
		&expr.Masq{},
	}
}

func prefixMask(bits int) [4]byte {
	var m [4]byte
	for i := range 4 {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return m
}

// IfnameBytes is an interface name as nftables compares it: NUL padded to
// IFNAMSIZ.
func IfnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func comment(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

func tableExists(conn *nftables.Conn, t *nftables.Table) (bool, error) {
	tables, err := conn.ListTablesOfFamily(t.Family)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }), nil
}

// ForwardDropChains lists, as "family table chain", the base chains on the
// forward hook with a drop policy in the calling thread's namespace,
// other than in the table named ours.
func ForwardDropChains(ours string) ([]string, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, err
	}
	return forwardDropChains(conn, &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ours})
}

func forwardDropChains(conn *nftables.Conn, ours *nftables.Table) ([]string, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range chains {
		if c.Table == nil || c.Hooknum == nil || c.Policy == nil {
			continue
		}
		if c.Table.Family == ours.Family && c.Table.Name == ours.Name {
			continue
		}
		fam := familyName(c.Table.Family)
		if fam == "" || *c.Hooknum != *nftables.ChainHookForward || *c.Policy != nftables.ChainPolicyDrop {
			continue
		}
		out = append(out, fam+" "+c.Table.Name+" "+c.Name)
	}
	slices.Sort(out)
	return out, nil
}

// familyName names the families whose forward hook IPv4 packets pass.
func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return ""
}

func readSysctl(f *os.File) (string, error) {
	buf := make([]byte, 16)
	n, err := f.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

func writeSysctl(f *os.File, v string) error {
	_, err := f.WriteAt([]byte(v+"\n"), 0)
	return err
}

func explainNft(err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w (needs CAP_NET_ADMIN)", err)
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w (is another data plane running on this host?)", err)
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w (does the kernel have nf_tables and nft_masq?)", err)
	}
	return err
}
