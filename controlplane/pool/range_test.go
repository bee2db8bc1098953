package pool

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// A range that would leave out a leased address is a conflict with the
// pool's state (ErrInUse), not a malformed range.
func TestSetRangeInUse(t *testing.T) {
	p := mustNew(t, "13.8.0.0/24", "")
	held := alloc(t, p, owner(1))
	r := Range{First: netip.MustParseAddr("13.8.0.100"), Last: netip.MustParseAddr("13.8.0.200")}
	_, err := p.SetRange(r)
	var ce *ConfigError
	if !errors.Is(err, ErrInUse) || !errors.As(err, &ce) || ce.Field != "range" || !strings.Contains(err.Error(), held) {
		t.Fatalf("SetRange leaving out %s = %v, want a range ConfigError matching ErrInUse", held, err)
	}
	_, err = p.SetRange(Range{First: netip.MustParseAddr("13.9.0.1"), Last: netip.MustParseAddr("13.9.0.2")})
	if err == nil || errors.Is(err, ErrInUse) {
		t.Fatalf("SetRange outside the prefix = %v, want an error that is not ErrInUse", err)
	}
}
