package server

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/controlplane/store"
	pb "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// Trailers of a Backup stream: the whole backup's SHA-256 (hex) and size,
// so a client can tell a complete backup from a cut one. The SHA-256 is
// the ID --restore logs and the store remembers.
const (
	BackupSHA256Trailer = "fourover6-backup-sha256"
	BackupSizeTrailer   = "fourover6-backup-size"
)

// backupChunk is the data of one BackupResponse.
const backupChunk = 64 << 10

// Backup streams a consistent snapshot of the controller's store (see
// store.Backuper for the format). A standby answers too: with etcd, its
// snapshot is as good as the leader's.
func (s *ControllerServer) Backup(_ *pb.BackupRequest, stream grpc.ServerStreamingServer[pb.BackupResponse]) error {
	b, ok := s.c.Store().(store.Backuper)
	if !ok {
		return status.Errorf(codes.Unimplemented, "the store %s cannot be backed up", s.c.Store())
	}
	w := &chunkWriter{stream: stream, sum: sha256.New(), buf: make([]byte, 0, backupChunk)}
	_, err := b.Backup(stream.Context(), w)
	if err == nil {
		err = w.flush()
	}
	var se *store.StateError
	switch {
	case err == nil:
		stream.SetTrailer(metadata.Pairs(
			BackupSHA256Trailer, hex.EncodeToString(w.sum.Sum(nil)),
			BackupSizeTrailer, strconv.FormatInt(w.n, 10)))
		return nil
	case status.Code(err) != codes.Unknown:
		return err // a failed Send
	case errors.As(err, &se):
		return status.Errorf(codes.DataLoss, "backup: %v", err)
	}
	if st := status.FromContextError(err); st.Code() != codes.Unknown {
		return st.Err()
	}
	return status.Errorf(codes.Unavailable, "backup of %s: %v", s.c.Store(), err)
}

// chunkWriter sends what it is given in messages of backupChunk bytes.
type chunkWriter struct {
	stream grpc.ServerStreamingServer[pb.BackupResponse]
	sum    hash.Hash
	buf    []byte
	n      int64
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		written += k
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	w.sum.Write(w.buf)
	w.n += int64(len(w.buf))
	// Send marshals the message before returning: buf can be reused.
	err := w.stream.Send(&pb.BackupResponse{Data: w.buf})
	w.buf = w.buf[:0]
	return err
}
