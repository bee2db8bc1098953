package loglevel

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"debug": slog.LevelDebug, "INFO": slog.LevelInfo, " warn ": slog.LevelWarn,
		"Warning": slog.LevelWarn, "error": slog.LevelError,
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "verbose", "info+2", "DEBUG-4", "4", strings.Repeat("x", 1000)} {
		_, err := Parse(bad)
		var le *Error
		if !errors.As(err, &le) || le.Value != bad {
			t.Errorf("Parse(%q) = %v, want an *Error", bad, err)
			continue
		}
		if !strings.Contains(err.Error(), "want debug, info, warn or error") || len(err.Error()) > 200 {
			t.Errorf("Parse(%q): message %q", bad, err)
		}
	}
}

func TestNameRoundTrips(t *testing.T) {
	for _, n := range Names {
		l, err := Parse(n)
		if err != nil || Name(l) != n {
			t.Errorf("%q: Parse = %v %v, Name = %q", n, l, err, Name(l))
		}
	}
	if Name(slog.LevelInfo+2) != "info+2" {
		t.Errorf("Name(info+2) = %q", Name(slog.LevelInfo+2))
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"debug", "WARNING", "info+1", "", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		if again, err := Parse(Name(l)); err != nil || again != l {
			t.Fatalf("Parse(%q) = %v, but Parse(Name) = %v, %v", s, l, again, err)
		}
	})
}
