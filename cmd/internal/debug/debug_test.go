package debug

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func TestServePprof(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := ServePprof("", log); err != nil {
		t.Fatal(err)
	}
	if err := ServePprof("127.0.0.1:bad", log); err == nil {
		t.Fatal("bad address accepted")
	}
	// Find a free port by listening on :0 through the function itself is
	// not possible; use a fixed loopback port range attempt.
	for port := 36061; port < 36071; port++ {
		addr := "127.0.0.1:" + itoa(port)
		if ServePprof(addr, log) != nil {
			continue
		}
		resp, err := http.Get("http://" + addr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "goroutine") {
			t.Fatalf("index: %s", b)
		}
		return
	}
	t.Skip("no free port")
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	s := ""
	for ; i > 0; i /= 10 {
		s = string(rune('0'+i%10)) + s
	}
	return s
}
