// Command 4over6-client is the Linux client of the 4over6 tunnel: it
// connects over TCP/IPv6 to a 4over6 server (ours or the lab's), asks for an
// IPv4 address (100), applies the answer (101) to a TUN interface, and then
// carries IPv4 packets both ways (TUN -> 102, 103 -> TUN). It sends a 104
// every --keepalive-interval, drops a server silent for --keepalive-timeout
// and reconnects with exponential backoff. See PROTOCOL.md for the wire
// format.
//
// Usage:
//
//	4over6-client --server '[fd00:46::1]:5678' [--tun 4o6c] [--keep-default-route]
//
// The TUN gets the leased address as a /32 (it is point-to-point); routes
// decide what goes through it:
//
//   - ROUTE 0.0.0.0 in the 101: the IPv4 default route goes through the TUN,
//     replacing the host's (safe: the server is reached over IPv6). The old
//     default route is restored on disconnect and on exit.
//   - with --keep-default-route, or when ROUTE is anything else: the pool
//     (--pool, default the /24 holding the leased address) so the gateway and
//     the other clients are reachable, plus ROUTE itself: a bare address is a
//     host route (/32), "a.b.c.d/n" (not sent by known servers, but accepted)
//     that prefix.
//   - --route prefixes are added in every case.
//
// DNS is left alone unless --resolv-conf names a file: the three servers of
// the 101 are then written there as nameserver lines, and the file's old
// content is put back on exit.
//
// The TUN is created once and kept across reconnects; SIGINT or SIGTERM
// closes the connection, removes the routes, restores the default route and
// --resolv-conf, closes the TUN and exits 0. Bad flags exit 2; with --once a
// failed session exits 1.
//
// The flags are in flags.go; like the daemons, every flag can come from a
// YAML file (--config), and --check-config/--print-config validate without
// touching the network.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/debug"
	"github.com/fourover6/fourover6/cmd/internal/logging"
	"github.com/fourover6/fourover6/cmd/internal/nice"
	"github.com/fourover6/fourover6/cmd/internal/version"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// errStopped is a failed run that has been logged already.
var errStopped = errors.New("client stopped")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return execute(newCommand(func(cmd *cobra.Command, c config) error {
		return start(cmd, c, stderr)
	}), args, stdout, stderr)
}

// execute runs cmd on args and turns the outcome into an exit code,
// printing errors one line per problem.
func execute(cmd *cobra.Command, args []string, stdout, stderr io.Writer) int {
	cmd.InitDefaultHelpFlag()
	cmd.InitDefaultVersionFlag()
	cmd.SetArgs(singleDash(cmd.Flags(), args))
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.Execute()
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errStopped):
		return exitFailure
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "%s: %s\n", name, line)
	}
	if errors.As(err, new(usageError)) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", name)
		return exitUsage
	}
	return exitFailure
}

// start runs the client until SIGINT or SIGTERM (or, with --once, the end
// of the first session).
func start(cmd *cobra.Command, cfg config, stderr io.Writer) error {
	log, level, err := logging.New(stderr, cfg.log)
	if err != nil { // validated already
		return usageError{err}
	}
	nice.Apply(log, cfg.nice, cfg.rtPriority) // early: threads made later take it from their creators
	if err := debug.ServePprof(cfg.pprof, log); err != nil {
		return usageError{fmt.Errorf("--pprof: %v", err)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go cfgpkg.ReloadOnHUP(ctx, cmd.Flags(), cfg.configFile, level, log)
	log.Info("starting", "version", version.String(), "server", cfg.server, "tun", cfg.tunName)
	if err := newClient(cfg, log).run(ctx); err != nil {
		log.Error("client stopped", "err", err)
		return errStopped
	}
	log.Info("stopped")
	return nil
}
