// Package loglevel holds the names of the log levels an operator can set:
// debug, info, warn and error. The daemons' --log-level flag and config
// file, their SetLogLevel RPCs and 4over6ctl all parse with Parse and
// print with Name, so every place accepts and shows the same words.
//
// It lives under controlplane/ because the data plane's API server needs
// it too, and the data plane already depends on the control plane's API
// (the reverse never happens); cmd/internal cannot be imported from there.
package loglevel

import (
	"fmt"
	"log/slog"
	"strings"
)

// Names are the accepted levels, from the most to the least verbose.
var Names = []string{"debug", "info", "warn", "error"}

var levels = []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}

// Parse reads a level name: one of Names in any case, blanks around it
// ignored, "warning" for "warn". slog's own offsets ("info+2") are not
// levels an operator sets, so they are refused.
func Parse(s string) (slog.Level, error) {
	n := strings.ToLower(strings.TrimSpace(s))
	if n == "warning" {
		n = "warn"
	}
	for i, name := range Names {
		if n == name {
			return levels[i], nil
		}
	}
	return 0, &Error{Value: s}
}

// Name is the lower-case name of l ("info"); a level between the named
// ones is shown as slog shows it ("info+2").
func Name(l slog.Level) string {
	return strings.ToLower(l.String())
}

// Error is the error of Parse.
type Error struct {
	Value string // as given
}

func (e *Error) Error() string {
	return fmt.Sprintf("log level %q: want %s", clip(e.Value), Want())
}

// Want is the accepted names for a message: "debug, info, warn or error".
func Want() string {
	return strings.Join(Names[:len(Names)-1], ", ") + " or " + Names[len(Names)-1]
}

// clip bounds a value quoted in a message: it may come from the network.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
