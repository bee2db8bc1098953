package config

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/fourover6/fourover6/controlplane/loglevel"
)

// ReloadOnHUP re-reads the config file at path on SIGHUP until ctx ends and
// applies what can change at run time: log-level, to level. Other settings
// take effect on restart, which the log line says rather than ignoring the
// edit silently. A bad file is logged and changes nothing.
func ReloadOnHUP(ctx context.Context, fs *pflag.FlagSet, path string, level *slog.LevelVar, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if path == "" {
			log.Info("SIGHUP: no --config file to reload")
			continue
		}
		if err := reloadLevel(fs, path, level, log); err != nil {
			log.Error("SIGHUP: config not reloaded", "err", err)
			continue
		}
		log.Info("SIGHUP: config reloaded; settings other than log-level take effect on restart", "file", path)
	}
}

func reloadLevel(fs *pflag.FlagSet, path string, level *slog.LevelVar, log *slog.Logger) error {
	settings, err := Read(fs, path)
	if err != nil {
		return err
	}
	for _, s := range settings {
		if s.Name != "log-level" || len(s.Values) != 1 {
			continue
		}
		l, err := loglevel.Parse(s.Values[0])
		if err != nil {
			return &Error{Path: path, Line: s.Line, Key: s.Name, Msg: "want " + loglevel.Want()}
		}
		if prev := level.Level(); prev != l {
			level.Set(l)
			log.Info("log level changed", "from", loglevel.Name(prev), "to", loglevel.Name(l))
		}
	}
	return nil
}
