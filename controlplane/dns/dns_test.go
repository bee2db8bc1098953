package dns

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestParse(t *testing.T) {
	cases := []struct {
		name, in string
		want     []netip.Addr
	}{
		{"empty", "", nil},
		{"one", "nameserver 1.2.3.4\n", addrs("1.2.3.4")},
		{"no trailing newline", "nameserver 1.2.3.4", addrs("1.2.3.4")},
		{"crlf", "nameserver 1.2.3.4\r\nnameserver 5.6.7.8\r\n", addrs("1.2.3.4", "5.6.7.8")},
		{"tabs and indent", "  nameserver\t\t1.2.3.4  \n", addrs("1.2.3.4")},
		{"comments", "# nameserver 9.9.9.9\n; nameserver 8.8.4.4\nnameserver 1.2.3.4\n", addrs("1.2.3.4")},
		{"trailing comment", "nameserver 1.2.3.4 # home router\nnameserver 5.6.7.8#x\nnameserver 9.8.7.6;y\n", addrs("1.2.3.4", "5.6.7.8", "9.8.7.6")},
		{"ipv6 ignored", "nameserver 2001:4860:4860::8888\nnameserver fe80::1%eth0\nnameserver ::ffff:1.2.3.4\nnameserver 1.2.3.4\n", addrs("1.2.3.4")},
		{"options and search", "search example.com\ndomain example.com\noptions ndots:2 edns0\nsortlist 130.155.160.0/255.255.240.0\nnameserver 1.2.3.4\n", addrs("1.2.3.4")},
		{"garbage", "nameserver\nnameserver \nnameserver 1.2.3\nnameserver 1.2.3.400\nnameserver 01.2.3.4\nnameserverx 5.5.5.5\nNAMESERVER 6.6.6.6\nnameserver1.1.1.1\n\x00\xff\xfe\nnameserver example.com\n", nil},
		{"duplicates", "nameserver 1.2.3.4\nnameserver 5.6.7.8\nnameserver 1.2.3.4\n", addrs("1.2.3.4", "5.6.7.8")},
		{"more than three kept", "nameserver 1.1.1.1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\nnameserver 4.4.4.4\n", addrs("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4")},
		{"systemd-resolved", "# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", addrs("127.0.0.53")},
		{"over-long line skipped", "nameserver " + strings.Repeat("1", 3*maxLine) + "\nnameserver 1.2.3.4\n", addrs("1.2.3.4")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			// Same result when the reader hands out one byte at a time.
			got, err = Parse(iotest.OneByteReader(strings.NewReader(c.in)))
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("one byte reader: got %v %v, want %v", got, err, c.want)
			}
		})
	}
}

func TestParseReadError(t *testing.T) {
	boom := errors.New("boom")
	got, err := Parse(iotest.ErrReader(boom))
	if !errors.Is(err, boom) || got != nil {
		t.Fatalf("got %v %v", got, err)
	}
}

func writeResolv(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServers(t *testing.T) {
	cases := []struct {
		name       string
		configured []netip.Addr
		resolv     string // "" means the file does not exist
		fallbacks  []netip.Addr
		want       []netip.Addr
		sources    []Source
		ignored    []netip.Addr
	}{
		{
			name:    "resolv.conf has three",
			resolv:  "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n",
			want:    addrs("10.0.0.1", "10.0.0.2", "10.0.0.3"),
			sources: []Source{FromResolvConf},
		},
		{
			name:    "resolv.conf has one",
			resolv:  "nameserver 10.0.0.1\n",
			want:    addrs("10.0.0.1", "8.8.8.8", "1.1.1.1"),
			sources: []Source{FromResolvConf, FromFallbacks},
		},
		{
			name:    "padding skips duplicates",
			resolv:  "nameserver 8.8.8.8\nnameserver 8.8.8.8\n",
			want:    addrs("8.8.8.8", "1.1.1.1", "9.9.9.9"),
			sources: []Source{FromResolvConf, FromFallbacks},
		},
		{
			name:    "loopback stub ignored",
			resolv:  "nameserver 127.0.0.53\nnameserver 169.254.169.253\nnameserver 0.0.0.0\nnameserver 10.0.0.1\n",
			want:    addrs("10.0.0.1", "8.8.8.8", "1.1.1.1"),
			sources: []Source{FromResolvConf, FromFallbacks},
			ignored: addrs("127.0.0.53", "169.254.169.253", "0.0.0.0"),
		},
		{
			name:    "only ipv6",
			resolv:  "nameserver 2001:db8::53\n",
			want:    addrs("8.8.8.8", "1.1.1.1", "9.9.9.9"),
			sources: []Source{FromFallbacks},
		},
		{
			name:       "configured wins over resolv.conf",
			configured: addrs("202.38.120.242", "8.8.8.8", "202.106.0.20"),
			resolv:     "nameserver 10.0.0.1\n",
			want:       addrs("202.38.120.242", "8.8.8.8", "202.106.0.20"),
			sources:    []Source{FromConfigured},
		},
		{
			name:       "configured one is padded",
			configured: addrs("1.1.1.1"),
			want:       addrs("1.1.1.1", "8.8.8.8", "9.9.9.9"),
			sources:    []Source{FromConfigured, FromFallbacks},
		},
		{
			name:      "custom fallbacks",
			resolv:    "nameserver 10.0.0.1\n",
			fallbacks: addrs("10.0.0.1", "2001:db8::1", "10.9.9.9", "10.8.8.8", "10.7.7.7"),
			want:      addrs("10.0.0.1", "10.9.9.9", "10.8.8.8"),
			sources:   []Source{FromResolvConf, FromFallbacks},
		},
		{
			name:      "short custom fallbacks repeat",
			fallbacks: addrs("10.9.9.9"),
			want:      addrs("10.9.9.9", "10.9.9.9", "10.9.9.9"),
			sources:   []Source{FromFallbacks},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "missing")
			if c.resolv != "" {
				path = writeResolv(t, c.resolv)
			}
			res, err := Servers(c.configured, path, c.fallbacks)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Servers[:], c.want) {
				t.Errorf("servers = %v, want %v", res.Servers, c.want)
			}
			if !slices.Equal(res.Sources, c.sources) {
				t.Errorf("sources = %v, want %v", res.Sources, c.sources)
			}
			if !slices.Equal(res.Ignored, c.ignored) {
				t.Errorf("ignored = %v, want %v", res.Ignored, c.ignored)
			}
			wantMissing := c.resolv == "" && len(c.configured) == 0
			if gotMissing := errors.Is(res.ResolvConfErr, fs.ErrNotExist); gotMissing != wantMissing {
				t.Errorf("ResolvConfErr = %v", res.ResolvConfErr)
			}
		})
	}
}

func TestServersConfiguredValidation(t *testing.T) {
	for _, c := range []struct {
		in   []netip.Addr
		want string
	}{
		{addrs("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"), "at most 3"},
		{addrs("2001:db8::53"), "not an IPv4 address"},
		{addrs("::ffff:1.2.3.4"), "not an IPv4 address"},
		{addrs("0.0.0.0"), "not a usable address"},
	} {
		if _, err := Servers(c.in, "/nonexistent", nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Servers(%v) err = %v, want %q", c.in, err, c.want)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList(" 8.8.8.8, 1.1.1.1 ,9.9.9.9")
	if err != nil || !slices.Equal(got, addrs("8.8.8.8", "1.1.1.1", "9.9.9.9")) {
		t.Fatalf("got %v %v", got, err)
	}
	if got, err := ParseList(""); err != nil || got != nil {
		t.Fatalf("empty: %v %v", got, err)
	}
	for _, bad := range []string{"8.8.8.8,", "dns.google", "1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4", "2001:db8::1", "1.2.3.4;5.6.7.8"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) succeeded", bad)
		}
	}
}
