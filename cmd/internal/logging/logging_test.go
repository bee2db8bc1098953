package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
	if recs[0]["msg"] != "first" || recs[0]["level"] != "debug" || recs[0]["n"] != float64(1) {
		t.Errorf("first record = %v", recs[0])
	}
	if recs[1]["msg"] != "second" || recs[1]["level"] != "warn" || recs[1]["dataplane"] != "dp1" ||
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
	if !strings.Contains(out, "level=warn") || !strings.Contains(out, "msg=shown") || !strings.Contains(out, "k=v") {
		t.Errorf("text output %q lacks level=warn msg=shown k=v", out)
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

// TestOneStyle: levels are spelt as --log-level takes them and durations
// are Go duration strings, in text and JSON alike, nested ones included.
func TestOneStyle(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log, _, err := logging.New(&buf, logging.Options{Level: "debug", Format: format})
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("d", "took", 1500*time.Millisecond)
		log.Info("i", slog.Group("g", slog.Duration("wait", 2*time.Minute)))
		log.Warn("w", "d", time.Duration(0))
		log.Error("e", "d", 250*time.Microsecond)
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s: %d lines: %q", format, len(lines), buf.String())
		}
		wantLevel := []string{"debug", "info", "warn", "error"}
		wantDur := []string{"1.5s", "2m0s", "0s", "250µs"}
		for i, l := range lines {
			var level, dur string
			if format == "json" {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("%q: %v", l, err)
				}
				level, _ = m["level"].(string)
				if g, ok := m["g"].(map[string]any); ok {
					dur, _ = g["wait"].(string)
				} else {
					d, ok := m["took"]
					if !ok {
						d = m["d"]
					}
					dur, _ = d.(string)
				}
			} else {
				for _, f := range strings.Fields(l) {
					k, v, _ := strings.Cut(f, "=")
					switch k {
					case "level":
						level = v
					case "took", "g.wait", "d":
						dur = v
					}
				}
			}
			if level != wantLevel[i] || dur != wantDur[i] {
				t.Errorf("%s line %q: level %q duration %q, want %q %q", format, l, level, dur, wantLevel[i], wantDur[i])
			}
		}
	}
}

func TestPriorityPrefix(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log, _, err := logging.New(&buf, logging.Options{Level: "debug", Format: format, Priority: "on"})
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("d")
		log.With("k", "v").Info("i")
		log.WithGroup("g").Warn("w", "x", 1)
		log.Error("e")
		log.Log(context.Background(), slog.LevelInfo+2, "between info and warn")
		log.Log(context.Background(), slog.LevelError+4, "above error")
		want := []string{"<7>", "<6>", "<4>", "<3>", "<4>", "<3>"}
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		if len(lines) != len(want) {
			t.Fatalf("%s: %d lines: %q", format, len(lines), buf.String())
		}
		for i, l := range lines {
			rest, ok := strings.CutPrefix(l, want[i])
			if !ok {
				t.Errorf("%s line %q: want prefix %s", format, l, want[i])
				continue
			}
			if format == "json" && !json.Valid([]byte(rest)) {
				t.Errorf("line %q is not JSON after its prefix", l)
			}
		}
	}

	// Off, and auto on a writer that is not the journal: no prefix.
	for _, p := range []string{"off", "auto", ""} {
		var buf bytes.Buffer
		log, _, err := logging.New(&buf, logging.Options{Priority: p})
		if err != nil {
			t.Fatal(err)
		}
		log.Warn("w")
		if strings.HasPrefix(buf.String(), "<") {
			t.Errorf("priority %q: %q has a prefix", p, buf.String())
		}
	}
	if _, _, err := logging.New(&bytes.Buffer{}, logging.Options{Priority: "sometimes"}); err == nil ||
		!strings.Contains(err.Error(), "--log-priority-prefix") || !strings.Contains(err.Error(), "auto, on or off") {
		t.Errorf("bad priority setting: %v", err)
	}
}

// TestPriorityPrefixConcurrent: records logged at once never share a line
// nor lose their prefix.
func TestPriorityPrefixConcurrent(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := logging.New(&buf, logging.Options{Format: "json", Priority: "on"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("g", g)
			for i := range 200 {
				if i%2 == 0 {
					l.Warn("w", "i", i)
				} else {
					l.Info("i", "i", i)
				}
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 8*200 {
		t.Fatalf("%d lines, want %d", len(lines), 8*200)
	}
	for _, l := range lines {
		var m map[string]any
		switch {
		case strings.HasPrefix(l, "<4>"):
			if json.Unmarshal([]byte(l[3:]), &m) != nil || m["level"] != "warn" {
				t.Fatalf("line %q", l)
			}
		case strings.HasPrefix(l, "<6>"):
			if json.Unmarshal([]byte(l[3:]), &m) != nil || m["level"] != "info" {
				t.Fatalf("line %q", l)
			}
		default:
			t.Fatalf("line %q has no priority", l)
		}
	}
}

// TestJournalStream: the prefix comes on by itself when the output is the
// stream JOURNAL_STREAM names, and only then.
func TestJournalStream(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	stream := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	if !logging.IsJournal(f, stream) {
		t.Errorf("%s is the journal stream %s", f.Name(), stream)
	}
	for _, c := range []struct {
		w      io.Writer
		stream string
	}{{other, stream}, {f, ""}, {f, "garbage"}, {f, fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)}, {&bytes.Buffer{}, stream}} {
		if logging.IsJournal(c.w, c.stream) {
			t.Errorf("%v with JOURNAL_STREAM=%q taken for the journal", c.w, c.stream)
		}
	}

	t.Setenv("JOURNAL_STREAM", stream)
	for _, w := range []*os.File{f, other} {
		log, _, err := logging.New(w, logging.Options{})
		if err != nil {
			t.Fatal(err)
		}
		log.Warn("to " + filepath.Base(w.Name()))
	}
	offLog, _, _ := logging.New(f, logging.Options{Priority: "off"})
	offLog.Warn("forced off")
	got, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimRight(string(got), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "<4>time=") || !strings.Contains(lines[0], "msg=\"to journal\"") || strings.HasPrefix(lines[1], "<") {
		t.Errorf("journal stream got %q", got)
	}
	if got, _ := os.ReadFile(other.Name()); strings.HasPrefix(string(got), "<") || !strings.Contains(string(got), "to other") {
		t.Errorf("another file got %q", got)
	}
}
