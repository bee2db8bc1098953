// Command 4over6-dataplane owns the TUN interface and the clients' IPv6 TCP
// connections: framing, the 102/103 hot path, keepalives and timeouts. It
// asks the controller for addresses over gRPC.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fourover6/fourover6/cmd/internal/clidoc"
	"github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks errors in flags or the config file: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	o.args = args
	cmd := newCommand(&o)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyFlag(cmd.Flags()); err != nil {
			return usageError{err}
		}
		if err := o.validate(); err != nil {
			return usageError{err}
		}
		if o.checks.Requested() { // validation only: nothing is opened
			if err := o.checkFiles(); err != nil {
				return usageError{err}
			}
			return o.checks.Finish(cmd.OutOrStdout(), cmd.Flags())
		}
		return serve(cmd.Context(), &o, cmd.Flags(), stderr)
	}
	clidoc.AddTo(cmd, "8")
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "4over6-dataplane:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}
