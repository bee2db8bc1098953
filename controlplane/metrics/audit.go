package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/controlplane/authz"
)

// AuditSource gives the audit counters of the operators' calls
// (*authz.Guard is one).
type AuditSource interface {
	AuditCounts() []authz.AuditCount
}

var descAudit = desc("audit_total", "State-changing calls of the controller's API (each is an audit line), by method and result (ok or the gRPC code, e.g. permission_denied).", "method", "result")

// AuditCollector exports fourover6_controller_audit_total.
type AuditCollector struct{ src AuditSource }

// NewAudit returns the collector of src's audit counters.
func NewAudit(src AuditSource) *AuditCollector { return &AuditCollector{src: src} }

// Describe implements prometheus.Collector.
func (c *AuditCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descAudit }

// Collect implements prometheus.Collector.
func (c *AuditCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.src.AuditCounts() {
		ch <- prometheus.MustNewConstMetric(descAudit, prometheus.CounterValue, float64(a.N), a.Method, a.Result)
	}
}
