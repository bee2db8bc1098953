package config

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/fourover6/fourover6/controlplane/loglevel"
)

// Reloader applies, on SIGHUP, settings beyond log-level that a daemon can
// change at run time.
type Reloader struct {
	Names []string // the flags it applies, for the log line
	// Reload reads the configuration again and applies it. It changes
	// nothing when it fails.
	Reload func() error
}

// ReloadOnHUP re-reads the config file at path on SIGHUP until ctx ends and
// applies what can change at run time: log-level, to level, and whatever
// the reloaders apply. Other settings take effect on restart, which the log
// line says rather than ignoring the edit silently. A bad file is logged
// and changes nothing; the log level changes only when every reloader
// succeeded.
func ReloadOnHUP(ctx context.Context, fs *pflag.FlagSet, path string, level *slog.LevelVar, log *slog.Logger, reloaders ...Reloader) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	live := []string{"log-level"}
	for _, r := range reloaders {
		live = append(live, r.Names...)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if path == "" && len(reloaders) == 0 {
			log.Info("SIGHUP: no --config file to reload")
			continue
		}
		if err := reload(fs, path, level, log, reloaders); err != nil {
			log.Error("SIGHUP: config not reloaded", "err", err)
			continue
		}
		log.Info("SIGHUP: config reloaded; settings other than "+strings.Join(live, ", ")+" take effect on restart", "file", path)
	}
}

func reload(fs *pflag.FlagSet, path string, level *slog.LevelVar, log *slog.Logger, reloaders []Reloader) error {
	l, ok := level.Level(), false
	if path != "" {
		var err error
		if l, ok, err = fileLevel(fs, path); err != nil {
			return err
		}
	}
	for _, r := range reloaders {
		if err := r.Reload(); err != nil {
			return err
		}
	}
	if prev := level.Level(); ok && prev != l {
		level.Set(l)
		log.Info("log level changed", "from", loglevel.Name(prev), "to", loglevel.Name(l))
	}
	return nil
}

// reloadLevel applies the file's log level alone.
func reloadLevel(fs *pflag.FlagSet, path string, level *slog.LevelVar, log *slog.Logger) error {
	return reload(fs, path, level, log, nil)
}

// fileLevel returns the log level the file sets (ok false: none).
func fileLevel(fs *pflag.FlagSet, path string) (l slog.Level, ok bool, err error) {
	settings, err := Read(fs, path)
	if err != nil {
		return l, false, err
	}
	for _, s := range settings {
		if s.Name != "log-level" || len(s.Values) != 1 {
			continue
		}
		if l, err = loglevel.Parse(s.Values[0]); err != nil {
			return l, false, &Error{Path: path, Line: s.Line, Key: s.Name, Msg: "want " + loglevel.Want()}
		}
		ok = true
	}
	return l, ok, nil
}
