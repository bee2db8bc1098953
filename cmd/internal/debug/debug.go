// Package debug serves Go's profiling endpoints (net/http/pprof) on an
// address of the operator's choosing, for profiling a live daemon.
package debug

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
)

// ServePprof serves /debug/pprof/ on addr in the background. An empty addr
// does nothing. The listener is opened before returning, so a bad address
// is reported at startup.
func ServePprof(addr string, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("serving pprof", "addr", ln.Addr().String())
	go http.Serve(ln, mux)
	return nil
}
