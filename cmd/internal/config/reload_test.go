package config

import (
	"context"
	"errors"
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

func TestReloaders(t *testing.T) {
	fs := pflag.NewFlagSet("d", pflag.ContinueOnError)
	fs.String("log-level", "info", "")
	fs.StringSlice("deny", nil, "")
	path := filepath.Join(t.TempDir(), "d.yaml")
	os.WriteFile(path, []byte("log-level: debug\ndeny: [198.51.100.0/24]\n"), 0o644)
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	var fail error
	calls := 0
	r := Reloader{Names: []string{"deny"}, Reload: func() error { calls++; return fail }}
	fail = errors.New("bad deny")
	if err := reload(fs, path, level, log, []Reloader{r}); err != fail || calls != 1 {
		t.Fatalf("reload = %v after %d calls, want the reloader's error", err, calls)
	}
	if level.Level() != slog.LevelInfo {
		t.Fatal("the level changed although a reloader failed")
	}
	fail = nil
	if err := reload(fs, path, level, log, []Reloader{r}); err != nil || calls != 2 {
		t.Fatalf("reload = %v after %d calls", err, calls)
	}
	if level.Level() != slog.LevelDebug {
		t.Fatal("the level did not change")
	}
	// A broken file stops before any reloader runs.
	os.WriteFile(path, []byte("log-level: loud\n"), 0o644)
	if err := reload(fs, path, level, log, []Reloader{r}); err == nil || calls != 2 {
		t.Fatalf("broken file: %v, reloader called %d times", err, calls)
	}
	// Without a file the reloaders still run (they read the command line).
	if err := reload(fs, "", level, log, []Reloader{r}); err != nil || calls != 3 {
		t.Fatalf("no file: %v after %d calls", err, calls)
	}
}
