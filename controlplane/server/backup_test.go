package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/fourover6/fourover6/controlplane/controller"
	"github.com/fourover6/fourover6/controlplane/pool"
	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// serveBackupStore serves a controller over st on a unix socket.
func serveBackupStore(t *testing.T, st store.Store) pb.ControllerServiceClient {
	t.Helper()
	c, err := controller.New(controller.Config{Pool: pool.Config{Prefix: netip.MustParsePrefix("13.8.0.0/16")}, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(Options(nil)...)
	Register(s, c)
	go s.Serve(l)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); s.Stop() })
	return pb.NewControllerServiceClient(cc)
}

// receiveBackup reads a Backup stream and its trailer.
func receiveBackup(t *testing.T, api pb.ControllerServiceClient) ([]byte, metadata.MD, error) {
	t.Helper()
	stream, err := api.Backup(t.Context(), &pb.BackupRequest{})
	if err != nil {
		return nil, nil, err
	}
	var data []byte
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return data, stream.Trailer(), nil
		}
		if err != nil {
			return data, nil, err
		}
		if len(m.GetData()) > backupChunk {
			t.Fatalf("a message of %d bytes", len(m.GetData()))
		}
		data = append(data, m.GetData()...)
	}
}

// TestBackupRPC: the stream is the store's backup (a state file with every
// lease), in chunks, its trailer the SHA-256 and size of the whole.
func TestBackupRPC(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for i := range 2000 { // several chunks
		l := store.Lease{Addr: netip.AddrFrom4([4]byte{13, 8, byte(i >> 8), byte(i + 2)}),
			Owner: store.Owner{Dataplane: "dp1", Session: "session-" + strconv.Itoa(i)}}
		if _, _, err := st.Claim(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	api := serveBackupStore(t, st)
	data, tr, err := receiveBackup(t, api)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) <= 2*backupChunk {
		t.Fatalf("backup of %d bytes: want several chunks", len(data))
	}
	sum := sha256.Sum256(data)
	if got := tr.Get(BackupSHA256Trailer); len(got) != 1 || got[0] != hex.EncodeToString(sum[:]) {
		t.Fatalf("trailer sha256 %v", got)
	}
	if got := tr.Get(BackupSizeTrailer); len(got) != 1 || got[0] != strconv.Itoa(len(data)) {
		t.Fatalf("trailer size %v, got %d bytes", got, len(data))
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	snap, err := store.ReadSnapshot(path, nil)
	if err != nil || len(snap.State.Leases) != 2000 || snap.ID != hex.EncodeToString(sum[:]) {
		t.Fatalf("backup read back: %d leases, id %s, %v", len(snap.State.Leases), snap.ID, err)
	}
}

// A store damaged while running answers DATA_LOSS, not a cut backup.
func TestBackupRPCDamagedStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	api := serveBackupStore(t, st)
	if err := os.Truncate(path, 8192); err != nil {
		t.Fatal(err)
	}
	if _, _, err := receiveBackup(t, api); code(err) != codes.DataLoss {
		t.Fatalf("backup of a damaged store: %v", err)
	}
}
