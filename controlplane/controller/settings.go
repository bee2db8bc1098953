package controller

import (
	"net/netip"

	"github.com/fourover6/fourover6/controlplane/dns"
	"github.com/fourover6/fourover6/controlplane/pool"
)

// Settings are the values of the current term that can also be set at run
// time, and whether the store's value (dns set, pool set-range, apply)
// is the one in effect rather than the configuration's.
type Settings struct {
	DNS       [dns.Count]netip.Addr
	DNSStored bool
	// Range is the client range in effect (never zero).
	Range       pool.Range
	RangeStored bool
}

// Settings returns the settings in effect; a standby has none.
func (c *Controller) Settings() (Settings, error) {
	t, err := c.active()
	if err != nil {
		return Settings{}, err
	}
	t.smu.Lock()
	defer t.smu.Unlock()
	return Settings{DNS: t.dnsServers(), DNSStored: t.dnsStored, Range: t.idx.Range(), RangeStored: t.rangeStored}, nil
}

// from is where a configured value came from, for log lines.
func (c *Controller) from(s string) string {
	if s == "" {
		return "configuration"
	}
	return s
}

// rangeText is a configured range for log lines: the zero Range is the
// whole prefix.
func rangeText(r pool.Range) string {
	if r.IsZero() {
		return "whole prefix"
	}
	return r.String()
}
