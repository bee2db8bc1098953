// Package logging sets up the logs of the daemons and the client
// (log/slog), so every binary writes the same shape: level names as the
// --log-level flag spells them (debug, info, warn, error), durations as Go
// duration strings ("1.5s") in text and JSON alike, and, when stderr is
// the journal, a syslog priority prefix ("<4>") on every line so that
// `journalctl -p warning` finds the warnings.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/fourover6/fourover6/controlplane/loglevel"
)

// Options are the logging flags.
type Options struct {
	Level  string // debug, info, warn, error (see controlplane/loglevel)
	Format string // text or json
	// Priority is the syslog priority prefix: "auto" (or empty) adds it
	// when the output is the journal's stream (JOURNAL_STREAM), "on"
	// always, "off" never.
	Priority string
}

// Priority prefix settings.
const (
	PriorityAuto = "auto"
	PriorityOn   = "on"
	PriorityOff  = "off"
)

// PriorityFlag and PriorityUsage name the priority prefix flag, the same
// on every binary.
const (
	PriorityFlag  = "log-priority-prefix"
	PriorityUsage = "prefix log lines with their syslog priority (<3> error, <4> warn, <6> info, <7> debug) for journald: auto (when stderr is the journal), on or off"
)

// PriorityValues are the accepted values of PriorityFlag, for completions.
var PriorityValues = []string{PriorityAuto, PriorityOn, PriorityOff}

// New returns a logger writing to w, and the level variable so the level
// can be changed at run time.
func New(w io.Writer, o Options) (*slog.Logger, *slog.LevelVar, error) {
	l, err := loglevel.Parse(orDefault(o.Level, "info"))
	if err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: want %s", o.Level, loglevel.Want())
	}
	prefix, err := wantPrefix(w, o.Priority, os.Getenv("JOURNAL_STREAM"))
	if err != nil {
		return nil, nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	ho := &slog.HandlerOptions{Level: lv, ReplaceAttr: replaceAttr}
	var pw *priorityWriter
	if prefix {
		pw = &priorityWriter{w: w}
		w = pw
	}
	var h slog.Handler
	switch strings.ToLower(orDefault(o.Format, "text")) {
	case "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", o.Format)
	}
	if pw != nil {
		h = &priorityHandler{inner: h, pw: pw}
	}
	return slog.New(h), lv, nil
}

// replaceAttr writes levels as --log-level spells them and durations as
// Go duration strings (JSON would write integer nanoseconds).
func replaceAttr(groups []string, a slog.Attr) slog.Attr {
	switch {
	case len(groups) == 0 && a.Key == slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			a.Value = slog.StringValue(loglevel.Name(l))
		}
	case a.Value.Kind() == slog.KindDuration:
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// wantPrefix decides whether lines get a priority prefix.
func wantPrefix(w io.Writer, setting, journalStream string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(setting)) {
	case "", PriorityAuto:
		return IsJournal(w, journalStream), nil
	case PriorityOn:
		return true, nil
	case PriorityOff:
		return false, nil
	}
	return false, fmt.Errorf("--%s %q: want auto, on or off", PriorityFlag, setting)
}

// IsJournal reports whether w is the journal's stream: a file whose device
// and inode are those systemd put in JOURNAL_STREAM ("DEV:INODE") when it
// connected the service's stderr to journald. A pipe or a file the output
// was redirected to has another inode, so a redirected daemon writes plain
// lines.
func IsJournal(w io.Writer, journalStream string) bool {
	f, ok := w.(*os.File)
	if !ok || journalStream == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(journalStream, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	gotDev, gotIno, ok := fileID(f)
	return ok && gotDev == dev && gotIno == ino
}

// Priority is the syslog priority of a level: 7 debug, 6 info, 4 warn,
// 3 error; levels in between take the next more severe one's.
func Priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l > slog.LevelInfo:
		return 4
	case l > slog.LevelDebug:
		return 6
	}
	return 7
}

// priorityHandler prefixes each record with its priority. slog's handlers
// write a record with one Write; the prefix is passed to that Write
// through the shared writer, under its lock, so lines of concurrent
// records never mix.
type priorityHandler struct {
	inner slog.Handler
	pw    *priorityWriter
}

func (h *priorityHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.pw.mu.Lock()
	defer h.pw.mu.Unlock()
	h.pw.prio = Priority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *priorityHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &priorityHandler{inner: h.inner.WithAttrs(as), pw: h.pw}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{inner: h.inner.WithGroup(name), pw: h.pw}
}

// priorityWriter writes "<N>" and then the line, in one Write so the
// journal reads them as one line.
type priorityWriter struct {
	w    io.Writer
	mu   sync.Mutex // held by priorityHandler.Handle around the Write
	prio int
	buf  []byte
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf[:0], '<', byte('0'+p.prio), '>')
	p.buf = append(p.buf, b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
