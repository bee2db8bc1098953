// Package dns chooses the three IPv4 DNS servers every 101 message carries:
// the operator's list, else the host's resolv.conf, padded with public
// fallbacks. The controller never queries them; it only hands them out.
package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Count is how many servers a 101 message carries.
const Count = 3

// DefaultFallbacks returns the public resolvers used to pad to three.
func DefaultFallbacks() []netip.Addr {
	return []netip.Addr{
		netip.MustParseAddr("8.8.8.8"),
		netip.MustParseAddr("1.1.1.1"),
		netip.MustParseAddr("9.9.9.9"),
	}
}

// maxLine bounds one resolv.conf line; longer lines are skipped (glibc
// ignores such garbage too) instead of growing a buffer without limit.
const maxLine = 4096

// Parse returns the IPv4 addresses of the nameserver lines in resolv.conf
// content, in order, without duplicates. Everything else (comments, IPv6
// servers, options, search, malformed lines) is ignored, as the resolver
// does. Only a read error is an error.
func Parse(r io.Reader) ([]netip.Addr, error) {
	br := bufio.NewReaderSize(r, maxLine)
	var out []netip.Addr
	seen := make(map[netip.Addr]bool)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Skip the rest of an over-long line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			line = nil
		}
		if a, ok := nameserver(line); ok && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// nameserver parses one line the way glibc's res_init does: the keyword at
// the start of the line, then the address, which ends at whitespace, '#'
// or ';'.
func nameserver(line []byte) (netip.Addr, bool) {
	s := strings.TrimLeft(string(line), " \t")
	if s == "" || s[0] == '#' || s[0] == ';' {
		return netip.Addr{}, false
	}
	rest, ok := strings.CutPrefix(s, "nameserver")
	if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		return netip.Addr{}, false
	}
	rest = strings.TrimLeft(rest, " \t")
	if i := strings.IndexAny(rest, " \t\r\n#;"); i >= 0 {
		rest = rest[:i]
	}
	a, err := netip.ParseAddr(rest)
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}

// ParseList parses a comma-separated list of IPv4 addresses (the --dns
// flag), at most three.
func ParseList(s string) ([]netip.Addr, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address: want up to three IPv4 addresses separated by commas, e.g. 8.8.8.8,1.1.1.1", f)
		}
		out = append(out, a)
	}
	return out, validateConfigured(out)
}

func validateConfigured(addrs []netip.Addr) error {
	if len(addrs) > Count {
		return fmt.Errorf("%d DNS servers given: a 101 message carries exactly %d, give at most %d", len(addrs), Count, Count)
	}
	for _, a := range addrs {
		if !a.Is4() {
			return fmt.Errorf("DNS server %s is not an IPv4 address: clients of the lab protocol only take IPv4 servers", a)
		}
		if a.IsUnspecified() {
			return fmt.Errorf("DNS server %s is not a usable address", a)
		}
	}
	return nil
}

// Source says where the chosen servers came from.
type Source string

const (
	FromConfigured Source = "configured"
	FromResolvConf Source = "resolv.conf"
	FromFallbacks  Source = "fallbacks"
)

// Result is what Servers chose, with enough detail for the caller to log it.
type Result struct {
	Servers [Count]netip.Addr
	// Sources of the servers: the first source, plus FromFallbacks when
	// padding was needed, e.g. [resolv.conf fallbacks].
	Sources []Source
	// ResolvConfErr is set when resolv.conf was consulted but could not be
	// read (for example it does not exist). Not fatal: fallbacks were used.
	ResolvConfErr error
	// Ignored are resolv.conf servers a remote client cannot use (loopback
	// such as systemd-resolved's 127.0.0.53, link-local, unspecified,
	// multicast, broadcast): they are only meaningful on this host.
	Ignored []netip.Addr
}

// Servers returns exactly three IPv4 DNS servers: configured if any are given
// (at most three, all IPv4), else the first three usable ones in the file at
// resolvConfPath; then padded from fallbacks (DefaultFallbacks when empty),
// skipping duplicates. The error is only about configured.
func Servers(configured []netip.Addr, resolvConfPath string, fallbacks []netip.Addr) (Result, error) {
	var res Result
	if err := validateConfigured(configured); err != nil {
		return res, err
	}
	if len(fallbacks) == 0 {
		fallbacks = DefaultFallbacks()
	}
	var chosen []netip.Addr
	if len(configured) > 0 {
		// The operator's list is kept as given, duplicates included.
		chosen = append(chosen, configured...)
		res.Sources = append(res.Sources, FromConfigured)
	} else {
		found, err := readResolvConf(resolvConfPath)
		res.ResolvConfErr = err
		for _, a := range found {
			if !usableRemotely(a) {
				res.Ignored = append(res.Ignored, a)
				continue
			}
			if len(chosen) < Count {
				chosen = append(chosen, a)
			}
		}
		if len(chosen) > 0 {
			res.Sources = append(res.Sources, FromResolvConf)
		}
	}
	padded := false
	for _, f := range fallbacks {
		if len(chosen) == Count {
			break
		}
		if !f.Is4() || contains(chosen, f) {
			continue
		}
		chosen = append(chosen, f)
		padded = true
	}
	// Only possible with a short custom fallback list: repeat rather than
	// fail, since a 101 needs three entries and a repeat is harmless.
	for len(chosen) < Count {
		if len(chosen) == 0 {
			return res, errors.New("no IPv4 DNS server available: give --dns or IPv4 fallbacks")
		}
		chosen = append(chosen, chosen[len(chosen)-1])
	}
	if padded {
		res.Sources = append(res.Sources, FromFallbacks)
	}
	copy(res.Servers[:], chosen)
	return res, nil
}

func readResolvConf(path string) ([]netip.Addr, error) {
	if path == "" {
		return nil, errors.New("no resolv.conf path given")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	addrs, err := Parse(f)
	if err != nil {
		return addrs, fmt.Errorf("read %s: %w", path, err)
	}
	return addrs, nil
}

func usableRemotely(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() &&
		!a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func contains(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if a == b {
			return true
		}
	}
	return false
}
