package config

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestReloadOnHUP(t *testing.T) {
	fs := pflag.NewFlagSet("d", pflag.ContinueOnError)
	fs.String("log-level", "info", "")
	fs.Int("send-queue", 1, "")
	path := filepath.Join(t.TempDir(), "d.yaml")
	os.WriteFile(path, []byte("log-level: info\nsend-queue: 5\n"), 0o644)
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { ReloadOnHUP(ctx, fs, path, level, log); close(done) }()
	time.Sleep(50 * time.Millisecond) // let Notify register

	os.WriteFile(path, []byte("log-level: debug\nsend-queue: 5\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for level.Level() != slog.LevelDebug {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not apply the new log level")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A broken file changes nothing.
	os.WriteFile(path, []byte("log-level: loud\n"), 0o644)
	if err := reloadLevel(fs, path, level, log); err == nil {
		t.Fatal("bad level accepted")
	}
	if level.Level() != slog.LevelDebug {
		t.Fatal("a bad file changed the level")
	}
	cancel()
	<-done
}
