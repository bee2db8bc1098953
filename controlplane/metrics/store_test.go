package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fourover6/fourover6/controlplane/metrics"
	"github.com/fourover6/fourover6/controlplane/store"
)

// failingSettings fails every PutSettings.
type failingSettings struct{ store.Store }

func (failingSettings) PutSettings(context.Context, store.Settings) error {
	return errors.New("disk full")
}

func TestStoreCollector(t *testing.T) {
	m := store.NewMonitor(failingSettings{store.NewMemory()}, store.MonitorOptions{ProbeEvery: -1})
	defer m.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.NewStoreCollector(m))
	m.PutSettings(t.Context(), store.Settings{})
	m.PutSettings(t.Context(), store.Settings{})
	want := `
# HELP fourover6_controller_store_write_ok 1 while the last store write succeeded, 0 after a failed one (until a write, or the store's probe, succeeds).
# TYPE fourover6_controller_store_write_ok gauge
fourover6_controller_store_write_ok 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fourover6_controller_store_write_ok"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(metrics.NewStoreCollector(m), "fourover6_controller_store_errors_total"); n != len(store.Ops()) {
		t.Fatalf("%d error series, want one per op (%d)", n, len(store.Ops()))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			if mf.GetName() == "fourover6_controller_store_errors_total" && s.GetLabel()[0].GetValue() == "put_settings" && s.GetCounter().GetValue() != 2 {
				t.Fatalf("put_settings errors = %v", s.GetCounter().GetValue())
			}
		}
	}
}
