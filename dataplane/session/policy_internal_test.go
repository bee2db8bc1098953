package session

import (
	"testing"

	"github.com/fourover6/fourover6/dataplane/policy"
)

// TestPolicyDrops: every reason the policy gives has its own drop reason,
// named after it, and every policy drop reason is one of them.
func TestPolicyDrops(t *testing.T) {
	seen := map[Drop]bool{}
	for r := policy.Allow + 1; r < policy.NumReasons; r++ {
		d := policyDrops[r]
		if !d.byPolicy() || d.String() != "policy_"+r.String() || seen[d] {
			t.Errorf("policy reason %s maps to drop %s", r, d)
		}
		seen[d] = true
	}
	for d := range NumDrops {
		if d.byPolicy() && !seen[d] {
			t.Errorf("drop %s is no policy reason's", d)
		}
	}
}
