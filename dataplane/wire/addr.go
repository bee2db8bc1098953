package wire

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
)

// AddrResponse is the content of a 101: "IP ROUTE DNS1 DNS2 DNS3 ".
type AddrResponse struct {
	Addr  netip.Addr    // the client's IPv4 address
	Route netip.Addr    // 0.0.0.0 = default route through the tunnel
	DNS   [3]netip.Addr // exactly three servers
}

// AppendAddrResponse appends a complete 101 message (header included) to
// dst: the five addresses separated by single spaces, one trailing space, no
// NUL. All addresses must be IPv4.
func AppendAddrResponse(dst []byte, r AddrResponse) ([]byte, error) {
	addrs := [5]netip.Addr{r.Addr, r.Route, r.DNS[0], r.DNS[1], r.DNS[2]}
	for i, a := range addrs {
		if !a.Is4() {
			return dst, fmt.Errorf("101 field %d: %q is not an IPv4 address", i+1, a)
		}
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, byte(TypeAddrResponse))
	for _, a := range addrs {
		dst = a.AppendTo(dst)
		dst = append(dst, ' ')
	}
	PutHeader(dst[start:], TypeAddrResponse, len(dst)-start-HeaderLen)
	return dst, nil
}

// String renders the data part of the 101.
func (r AddrResponse) String() string {
	return fmt.Sprintf("%s %s %s %s %s ", r.Addr, r.Route, r.DNS[0], r.DNS[1], r.DNS[2])
}

// ParseAddrResponse parses the data of a 101. It is lenient the way clients
// must be: any run of spaces, tabs or NULs separates fields and trailing
// padding is ignored.
func ParseAddrResponse(data []byte) (AddrResponse, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	f := bytes.Fields(data)
	if len(f) < 5 {
		return AddrResponse{}, fmt.Errorf("101 %q: want 5 fields (IP ROUTE DNS DNS DNS), got %d", data, len(f))
	}
	var a [5]netip.Addr
	for i := range a {
		v, err := netip.ParseAddr(string(f[i]))
		if err != nil || !v.Is4() {
			return AddrResponse{}, fmt.Errorf("101 field %d %q: not an IPv4 address", i+1, f[i])
		}
		a[i] = v
	}
	if !a[0].IsValid() || a[0].IsUnspecified() {
		return AddrResponse{}, errors.New("101 carries the unspecified address")
	}
	return AddrResponse{Addr: a[0], Route: a[1], DNS: [3]netip.Addr{a[2], a[3], a[4]}}, nil
}
