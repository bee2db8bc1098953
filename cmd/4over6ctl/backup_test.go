package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// backupController answers Backup with data in chunks and a trailer.
type backupController struct {
	*fakeController
	data       []byte
	badSum     bool  // the trailer's sha256 does not match
	noTrailer  bool  // an older controller
	failMidway error // the stream ends with this after half the data
}

func (b *backupController) Backup(_ *cpv1.BackupRequest, stream grpc.ServerStreamingServer[cpv1.BackupResponse]) error {
	sum := sha256.Sum256(b.data)
	if b.badSum {
		sum[0] ^= 1
	}
	if !b.noTrailer {
		stream.SetTrailer(metadata.Pairs(backupSHA256Trailer, hex.EncodeToString(sum[:]), backupSizeTrailer, strconv.Itoa(len(b.data))))
	}
	for i := 0; i < len(b.data); i += 1000 {
		if b.failMidway != nil && i >= len(b.data)/2 {
			return b.failMidway
		}
		if err := stream.Send(&cpv1.BackupResponse{Data: b.data[i:min(i+1000, len(b.data))]}); err != nil {
			return err
		}
	}
	return nil
}

func TestBackup(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 5000)
	sum := sha256.Sum256(data)
	addr := serve(t, &backupController{fakeController: newController(), data: data}, nil)
	dir := t.TempDir()

	file := filepath.Join(dir, "b.db")
	mustWriteFile(t, file, "the previous backup")
	r := ctl(t, nil, "--controller", addr, "backup", "-o", file).expect(t, 0)
	if got, _ := os.ReadFile(file); !bytes.Equal(got, data) {
		t.Fatalf("file holds %d bytes, want the %d sent", len(got), len(data))
	}
	if !strings.Contains(r.stdout, hex.EncodeToString(sum[:])) || !strings.Contains(r.stdout, strconv.Itoa(len(data))+" bytes") {
		t.Fatalf("stdout %q", r.stdout)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	r = ctl(t, nil, "--controller", addr, "backup", "-o", "-").expect(t, 0)
	if r.stdout != string(data) || r.stderr != "" {
		t.Fatalf("-o -: %d bytes on stdout, stderr %q", len(r.stdout), r.stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("left in the directory: %v", entries)
	}
}

// A damaged or cut backup never replaces the file.
func TestBackupRefusesDamage(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("x"), 10000)
	for _, c := range []struct {
		name string
		b    *backupController
		code int
		msg  string
	}{
		{"wrong sha256", &backupController{data: data, badSum: true}, exitError, "the backup is damaged"},
		{"no trailer", &backupController{data: data, noTrailer: true}, exitError, "did not say"},
		{"cut", &backupController{data: data, failMidway: status.Error(codes.Unavailable, "store went away")}, exitError, "store went away"},
		{"corrupt store", &backupController{data: data, failMidway: status.Error(codes.DataLoss, "backup: state x is corrupt")}, exitError, "corrupt"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.b.fakeController = newController()
			addr := serve(t, c.b, nil)
			dir := t.TempDir()
			file := filepath.Join(dir, "b.db")
			mustWriteFile(t, file, "the previous backup")
			r := ctl(t, nil, "--controller", addr, "backup", "-o", file).expect(t, c.code)
			if !strings.Contains(r.stderr, c.msg) {
				t.Fatalf("stderr %q", r.stderr)
			}
			if got, _ := os.ReadFile(file); string(got) != "the previous backup" {
				t.Fatal("the previous backup was replaced")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Fatalf("left in the directory: %v", entries)
			}
		})
	}
	ctl(t, nil, "--controller", "unix:///nonexistent/c.sock", "backup", "-o", filepath.Join(t.TempDir(), "f")).expect(t, exitUnreachable)
	ctl(t, nil, "backup").expect(t, exitUsage)
	ctl(t, nil, "backup", "extra", "-o", "f").expect(t, exitUsage)
}

func mustWriteFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
