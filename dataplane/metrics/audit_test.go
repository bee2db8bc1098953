package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fourover6/fourover6/controlplane/authz"
)

type auditCounts []authz.AuditCount

func (a auditCounts) AuditCounts() []authz.AuditCount { return a }

func TestAuditCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewAudit(auditCounts{{Method: "SetDraining", Result: "ok", N: 2}, {Method: "SetDraining", Result: "permission_denied", N: 1}, {Method: "KickSession", Result: "ok"}}))
	want := `
# HELP fourover6_dataplane_audit_total State-changing calls of the data plane's API (each is an audit line), by method and result (ok or the gRPC code, e.g. permission_denied).
# TYPE fourover6_dataplane_audit_total counter
fourover6_dataplane_audit_total{method="KickSession",result="ok"} 0
fourover6_dataplane_audit_total{method="SetDraining",result="ok"} 2
fourover6_dataplane_audit_total{method="SetDraining",result="permission_denied"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Fatalf("lint: %v %v", err, probs)
	}
}
