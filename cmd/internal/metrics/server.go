// Package metrics serves a daemon's Prometheus metrics, liveness and
// readiness on one HTTP listener (the daemons' --metrics ADDR), and counts
// and times the daemon's gRPC requests.
//
//	GET /metrics   the registry, in the Prometheus text (or OpenMetrics) format
//	GET /healthz   200 "ok" while the process runs
//	GET /readyz    200 "ok" when the daemon's Ready func returns nil,
//	               else 503 with the reason
//
// Every series of this project is named fourover6_...; the Go runtime and
// process collectors (go_..., process_...) are added by NewRegistry.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fourover6/fourover6/controlplane/endpoint"
)

// Namespace prefixes every series of this project.
const Namespace = "fourover6"

// ReadyFunc says whether the daemon can do its job; a non-nil error is the
// reason it cannot, shown in the 503 body of /readyz. It is called once per
// /readyz request, with a context that ends after ReadyTimeout.
type ReadyFunc func(ctx context.Context) error

// DefaultReadyTimeout bounds one call of a ReadyFunc.
const DefaultReadyTimeout = 2 * time.Second

// NewRegistry returns a registry holding the Go runtime and process
// collectors (go_*, process_*). Register the daemon's own collectors on it.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Config configures a Server.
type Config struct {
	// Addr is where to listen: host:port (":9100", "[::1]:9100", port 0
	// picks one) or unix:///path/to.sock.
	Addr string
	// Registry is what /metrics serves; nil means NewRegistry().
	Registry *prometheus.Registry
	// Ready decides /readyz; nil means ready whenever the process runs.
	Ready ReadyFunc
	// ReadyTimeout bounds one call of Ready; 0 means DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Logger receives serving errors; nil discards them.
	Logger *slog.Logger
}

// Server is a running metrics listener. Create it with Start.
type Server struct {
	http     *http.Server
	ln       net.Listener
	ep       endpoint.Endpoint
	log      *slog.Logger
	notReady atomic.Pointer[string]
	done     chan struct{}
	err      error // set before done is closed
	once     sync.Once
}

// Start listens on cfg.Addr at once, so a bad or busy address is an error
// of the daemon's start, and serves in the background until Shutdown.
func Start(cfg Config) (*Server, error) {
	ep, err := endpoint.Parse(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %v", err)
	}
	ln, err := ep.Listen()
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	return Serve(ln, cfg), nil
}

// Serve serves on ln (already listening) until Shutdown. cfg.Addr is not
// used. Tests and daemons that open their own listener use it.
func Serve(ln net.Listener, cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{ln: ln, log: log, done: make(chan struct{})}
	if ln.Addr().Network() == "unix" {
		s.ep = endpoint.Endpoint{Network: "unix", Address: ln.Addr().String()}
	} else {
		s.ep = endpoint.Endpoint{Network: "tcp", Address: ln.Addr().String()}
	}
	s.http = &http.Server{
		Handler:           s.handler(cfg.Registry, cfg.Ready, cfg.ReadyTimeout),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		err := s.http.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			log.Error("metrics listener failed", "addr", s.ep.String(), "err", err)
		}
		s.err = err
		close(s.done)
	}()
	return s
}

// Listener is the server's listener (a hand-off passes it on).
func (s *Server) Listener() net.Listener { return s.ln }

func (s *Server) handler(reg *prometheus.Registry, ready ReadyFunc, readyTimeout time.Duration) http.Handler {
	if reg == nil {
		reg = NewRegistry()
	}
	if readyTimeout <= 0 {
		readyTimeout = DefaultReadyTimeout
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError, // a broken collector must not hide the others
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
		EnableOpenMetrics:   true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if why := s.notReady.Load(); why != nil {
			text(w, http.StatusServiceUnavailable, "not ready: "+*why)
			return
		}
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			if err := ready(ctx); err != nil {
				text(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
		}
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<html><head><title>fourover6</title></head><body>`+
			`<a href="metrics">/metrics</a> <a href="healthz">/healthz</a> <a href="readyz">/readyz</a>`+
			`</body></html>`+"\n")
	})
	return mux
}

func text(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// Addr is the address actually listened on, in the --metrics form
// (host:port with the real port, or unix:///path).
func (s *Server) Addr() string { return s.ep.String() }

// URL is the base URL of a TCP listener, e.g. "http://127.0.0.1:9100";
// empty for a unix socket.
func (s *Server) URL() string {
	if s.ep.Network != "tcp" {
		return ""
	}
	host, port, _ := net.SplitHostPort(s.ep.Address)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// NotReady makes /readyz answer 503 with reason from now on, whatever the
// Ready func says: call it when shutdown begins, so load balancers and
// probes stop sending work while in-flight work drains. /metrics and
// /healthz keep answering until Shutdown.
func (s *Server) NotReady(reason string) { s.notReady.Store(&reason) }

// Done is closed when the server has stopped serving (after Shutdown, or
// when the listener failed: then Err says why).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the server stopped on its own; nil after a Shutdown.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Shutdown stops accepting, waits for in-flight scrapes until ctx ends
// (then closes them), and removes a unix socket. It is safe to call more
// than once.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		reason := "shutting down"
		s.notReady.CompareAndSwap(nil, &reason)
		err = s.http.Shutdown(ctx)
		if err != nil {
			s.http.Close()
		}
		<-s.done
		if s.ep.Network == "unix" {
			if rerr := os.Remove(s.ep.Address); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = rerr
			}
		}
	})
	return err
}
