// Command 4over6-controller is the control plane: it owns the IPv4 address
// pool, the DNS servers and route handed out in 101 messages, and the client
// table. Data planes lease addresses from it over gRPC (LeaseService);
// operators query it with 4over6ctl (ControllerService).
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

	"github.com/fourover6/fourover6/cmd/internal/clidoc"
	cfgpkg "github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/cmd/internal/version"
)

// Exit codes: scripts and systemd tell a typo from a crash by them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitState: the state cannot be used as it is (a corrupt, empty or
	// foreign --state file, a newer format, a backup that cannot be
	// restored, a restore that would replace state): restarting will not
	// fix it, the operator must act.
	exitState = 3
)

const name = "4over6-controller"

// usageError marks a mistake in the command line: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// stateError marks a state that cannot be used as it is: exit code 3.
type stateError struct{ error }

func (e stateError) Unwrap() error { return e.error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line and returns the exit code. It serves until
// ctx is done, then stops gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f flags
	cmd := &cobra.Command{
		Use:   name + " [flags]",
		Short: "The 4over6 controller: address pool, DNS settings and client table",
		Long: "4over6-controller leases IPv4 addresses from its pool to the clients of the\n" +
			"data planes, tells them the route and DNS servers of the 101 message, and\n" +
			"keeps the client table that 4over6ctl shows.\n\n" +
			"Exit codes:\n" +
			"  0  stopped by SIGTERM or SIGINT\n" +
			"  1  failed (a listener, the store unreachable or locked by another controller, ...)\n" +
			"  2  bad flags or configuration file\n" +
			"  3  the state cannot be used as it is: a corrupt, empty or foreign --state\n" +
			"     file, a newer format, a backup that cannot be restored, a --restore\n" +
			"     that would replace state (see --fresh-state, --restore, --restore-replace)",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unexpected argument %q: %s takes flags only", args[0], name)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfgpkg.ApplyFlag(cmd.Flags()); err != nil {
				return usageError{err}
			}
			cfg, err := f.config()
			if err != nil {
				return usageError{err}
			}
			if f.checks.Requested() { // validation only: no socket, no store
				if err := cfg.checkFiles(); err != nil {
					return usageError{err}
				}
				return f.checks.Finish(cmd.OutOrStdout(), cmd.Flags())
			}
			return serve(cmd.Context(), cfg, cmd.Flags(), stderr)
		},
	}
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	version.SetCommand(cmd) // --version: version, commit, build date, Go version
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f.register(cmd)
	clidoc.AddTo(cmd, "8")

	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	// One line per problem, so every bad flag is reported at once.
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "%s: %s\n", name, line)
	}
	if errors.As(err, new(usageError)) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", name)
		return exitUsage
	}
	if errors.As(err, new(stateError)) {
		return exitState
	}
	return exitFailure
}
