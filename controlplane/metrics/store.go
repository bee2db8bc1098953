package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fourover6/fourover6/controlplane/store"
)

// Series of the store's health (a store.Monitor):
//
//	fourover6_controller_store_errors_total{op}   counter: store calls that failed (the store's fault), by operation
//	fourover6_controller_store_write_ok           gauge: 1 while the last store write succeeded, 0 after a failed one
var (
	descStoreErrors  = desc("store_errors_total", "Store calls that failed because of the store (a commit that did not reach the disk, etcd not answering in time, a damaged file), by operation.", "op")
	descStoreWriteOK = desc("store_write_ok", "1 while the last store write succeeded, 0 after a failed one (until a write, or the store's probe, succeeds).")
)

// StoreCollector exports a store.Monitor.
type StoreCollector struct{ m *store.Monitor }

// NewStoreCollector returns a collector over m.
func NewStoreCollector(m *store.Monitor) *StoreCollector { return &StoreCollector{m: m} }

// Describe implements prometheus.Collector.
func (c *StoreCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStoreErrors
	ch <- descStoreWriteOK
}

// Collect implements prometheus.Collector. Every operation is exported,
// zeros included, so rate() works from the first failure.
func (c *StoreCollector) Collect(ch chan<- prometheus.Metric) {
	for _, op := range store.Ops() {
		ch <- prometheus.MustNewConstMetric(descStoreErrors, prometheus.CounterValue, float64(c.m.Errors(op)), op.String())
	}
	ok := 1.0
	if c.m.LastWriteErr() != nil {
		ok = 0
	}
	ch <- prometheus.MustNewConstMetric(descStoreWriteOK, prometheus.GaugeValue, ok)
}
