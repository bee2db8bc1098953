package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

// The Backup stream's trailers (controlplane/server): the SHA-256 and size
// of the whole backup.
const (
	backupSHA256Trailer = "fourover6-backup-sha256"
	backupSizeTrailer   = "fourover6-backup-size"
)

func (a *app) backupCommand() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "backup -o FILE|-",
		Short: "Save a consistent snapshot of the controller's state",
		Long: `Save a consistent snapshot of the controller's whole state (leases, release
times, reservations, DNS and pool range settings, the data-plane registry) to
FILE, or to standard output with -o -.

The backup is a bbolt state file, the format of the controller's --state,
whichever store the controller uses (bbolt or etcd): a backup of either
restores into either, with 4over6-controller --restore FILE.

FILE is written under a temporary name and renamed into place once the whole
backup has arrived and its SHA-256 matches the controller's (an existing FILE
is replaced only then). The SHA-256 is printed: the controller logs the same
one when it restores the backup.

Here -o names the file: the output format is not selectable.`,
		Example: `  4over6ctl backup -o /var/backups/fourover6/controller-$(date +%F).db
  4over6ctl backup -o - | ssh backup-host 'cat > controller.db'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError(`"4over6ctl backup" needs -o FILE (or -o - for standard output)`)
			}
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			stream, err := a.ctrl().Backup(ctx, &cpv1.BackupRequest{})
			if err != nil {
				return a.rpcError(a.controller, err)
			}
			var w io.Writer = a.stdout
			var tmp *os.File
			if out != "-" {
				tmp, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
				if err != nil {
					return &cliError{code: exitError, msg: fmt.Sprintf("backup: %v", err)}
				}
				defer func() {
					if tmp != nil {
						tmp.Close()
						os.Remove(tmp.Name())
					}
				}()
				w = tmp
			}
			sum := sha256.New()
			n, err := receiveBackup(stream, io.MultiWriter(w, sum))
			if err != nil {
				var ce *cliError
				if errors.As(err, &ce) {
					return ce
				}
				return a.rpcError(a.controller, err)
			}
			hexSum := hex.EncodeToString(sum.Sum(nil))
			if err := checkTrailer(stream.Trailer().Get(backupSHA256Trailer), stream.Trailer().Get(backupSizeTrailer), hexSum, n); err != nil {
				return err
			}
			if tmp == nil {
				return nil
			}
			if err := finishFile(tmp, out); err != nil {
				return &cliError{code: exitError, msg: fmt.Sprintf("backup: %v", err)}
			}
			tmp = nil
			fmt.Fprintf(a.stdout, "backup: %d bytes written to %s (sha256 %s)\n", n, out, hexSum)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "`FILE` to write the backup to, or - for standard output")
	return needs(c, needController)
}

// receiveBackup copies the stream's data to w.
func receiveBackup(stream interface {
	Recv() (*cpv1.BackupResponse, error)
}, w io.Writer) (int64, error) {
	var n int64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		k, err := w.Write(m.GetData())
		n += int64(k)
		if err != nil {
			return n, &cliError{code: exitError, msg: fmt.Sprintf("backup: %v", err)}
		}
	}
}

// checkTrailer compares what arrived with what the controller sent.
func checkTrailer(sums, sizes []string, sum string, n int64) error {
	if len(sums) != 1 || len(sizes) != 1 {
		return &cliError{code: exitError, msg: "backup: the controller did not say how large the backup is (a controller older than this 4over6ctl?): nothing written"}
	}
	size, err := strconv.ParseInt(sizes[0], 10, 64)
	if err != nil || size != n || sums[0] != sum {
		return &cliError{code: exitError, msg: fmt.Sprintf("backup: received %d bytes with sha256 %s, the controller sent %s bytes with sha256 %s: the backup is damaged, nothing written", n, sum, sizes[0], sums[0])}
	}
	return nil
}

// finishFile makes tmp durable and renames it to path.
func finishFile(tmp *os.File, path string) error {
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
