package server

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// failingSettings fails every PutSettings, as a full disk would.
type failingSettings struct{ store.Store }

func (failingSettings) PutSettings(context.Context, store.Settings) error {
	return errors.New("disk full")
}

// GetStatus says why the store is failing once a write failed (what
// 4over6ctl check reports), and nothing while writes succeed.
func TestStatusStoreError(t *testing.T) {
	m := store.NewMonitor(failingSettings{store.NewMemory()}, store.MonitorOptions{ProbeEvery: -1})
	defer m.Close()
	api := serveBackupStore(t, m)
	st, err := api.GetStatus(t.Context(), &pb.GetStatusRequest{})
	if err != nil || st.GetStatus().GetStoreError() != "" {
		t.Fatalf("status before a failed write: %v %v", st, err)
	}
	if _, err := api.SetDNS(t.Context(), &pb.SetDNSRequest{Servers: []string{"192.0.2.1"}}); err == nil {
		t.Fatal("SetDNS succeeded on a failing store")
	}
	st, err = api.GetStatus(t.Context(), &pb.GetStatusRequest{})
	if err != nil || !strings.Contains(st.GetStatus().GetStoreError(), "disk full") {
		t.Fatalf("status after a failed write: %v %v", st, err)
	}
}
