package logging_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/fourover6/fourover6/cmd/internal/logging"
)

func TestLevels(t *testing.T) {
	cases := []struct {
		level string
		want  slog.Level
	}{
		{"", slog.LevelInfo},
		{"debug", slog.LevelDebug},
		{"info", slog.LevelInfo},
		{"warn", slog.LevelWarn},
		{"error", slog.LevelError},
		{"DEBUG", slog.LevelDebug},
		{"Warn", slog.LevelWarn},
		{"warning ", slog.LevelWarn},
	}
	for _, c := range cases {
		log, lv, err := logging.New(&bytes.Buffer{}, logging.Options{Level: c.level})
		if err != nil {
			t.Errorf("level %q: %v", c.level, err)
			continue
		}
		if log == nil || lv == nil {
			t.Errorf("level %q: nil logger or level", c.level)
			continue
		}
		if lv.Level() != c.want {
			t.Errorf("level %q = %v, want %v", c.level, lv.Level(), c.want)
		}
	}
	for _, bad := range []string{"loud", "trace", "verbose", "info+2", "1"} {
		log, lv, err := logging.New(&bytes.Buffer{}, logging.Options{Level: bad})
		if err == nil {
			t.Errorf("level %q accepted", bad)
			continue
		}
		if log != nil || lv != nil {
			t.Errorf("level %q: a logger came with the error", bad)
		}
		if msg := err.Error(); !strings.Contains(msg, "--log-level") || !strings.Contains(msg, bad) || !strings.Contains(msg, "debug, info, warn or error") {
			t.Errorf("level %q: error %q should name the flag, the value and the choices", bad, msg)
		}
	}
}

func TestFormats(t *testing.T) {
	for _, f := range []string{"", "text", "json"} {
		if _, _, err := logging.New(&bytes.Buffer{}, logging.Options{Format: f}); err != nil {
			t.Errorf("format %q: %v", f, err)
		}
	}
	for _, bad := range []string{"xml", "logfmt", "yaml"} {
		_, _, err := logging.New(&bytes.Buffer{}, logging.Options{Format: bad})
		if err == nil {
			t.Errorf("format %q accepted", bad)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "--log-format") || !strings.Contains(msg, bad) || !strings.Contains(msg, "text or json") {
			t.Errorf("format %q: error %q should name the flag, the value and the choices", bad, msg)
		}
	}
}

func TestJSONOutput(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := logging.New(&buf, logging.Options{Level: "debug", Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("first", "n", 1)
	log.With("dataplane", "dp1").Warn("second", "addr", "13.8.0.2", "quote", `say "hi"`)
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2: %q", len(lines), buf.String())
	}
	var recs []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		recs = append(recs, m)
	}
	if recs[0]["msg"] != "first" || recs[0]["level"] != "DEBUG" || recs[0]["n"] != float64(1) {
		t.Errorf("first record = %v", recs[0])
	}
	if recs[1]["msg"] != "second" || recs[1]["level"] != "WARN" || recs[1]["dataplane"] != "dp1" ||
		recs[1]["addr"] != "13.8.0.2" || recs[1]["quote"] != `say "hi"` {
		t.Errorf("second record = %v", recs[1])
	}
	if _, ok := recs[0]["time"]; !ok {
		t.Errorf("record without time: %v", recs[0])
	}
}

func TestTextOutputAndLevelFilter(t *testing.T) {
	var buf bytes.Buffer
	log, lv, err := logging.New(&buf, logging.Options{Level: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	out := buf.String()
	if strings.Contains(out, "hidden") {
		t.Errorf("info logged at level warn: %q", out)
	}
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "msg=shown") || !strings.Contains(out, "k=v") {
		t.Errorf("text output %q lacks level=WARN msg=shown k=v", out)
	}
	if strings.HasPrefix(strings.TrimSpace(out), "{") {
		t.Errorf("default format is not text: %q", out)
	}

	// The level can be changed while running.
	buf.Reset()
	lv.Set(slog.LevelDebug)
	log.Debug("now visible")
	if !strings.Contains(buf.String(), "msg=\"now visible\"") {
		t.Errorf("after lowering the level: %q", buf.String())
	}
}
