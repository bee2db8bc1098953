// Package logging sets up the daemons' structured logs (log/slog).
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Options are the logging flags.
type Options struct {
	Level  string // debug, info, warn, error
	Format string // text or json
}

// New returns a logger writing to w, and the level variable so the level
// can be changed at run time.
func New(w io.Writer, o Options) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(strings.ToUpper(orDefault(o.Level, "info")))); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.Level)
	}
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
