// Package logging sets up the daemons' structured logs (log/slog).
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/fourover6/fourover6/controlplane/loglevel"
)

// Options are the logging flags.
type Options struct {
	Level  string // debug, info, warn, error (see controlplane/loglevel)
	Format string // text or json
}

// New returns a logger writing to w, and the level variable so the level
// can be changed at run time.
func New(w io.Writer, o Options) (*slog.Logger, *slog.LevelVar, error) {
	l, err := loglevel.Parse(orDefault(o.Level, "info"))
	if err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: want %s", o.Level, loglevel.Want())
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	ho := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch strings.ToLower(orDefault(o.Format, "text")) {
	case "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", o.Format)
	}
	return slog.New(h), lv, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
