package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/fourover6/fourover6/cmd/internal/version"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
)

func (a *app) versionCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the version of 4over6ctl and of the controller",
		Long: `Show the version of 4over6ctl (with its commit, build date, Go version and
platform), and the controller's when it can be reached.
An unreachable controller is not an error here: its version is left empty
and controller_error says why.`,
		Example: `  4over6ctl version
  4over6ctl version -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := Version{Client: version.String(), Build: version.Get()}
			ctx, cancel := a.callContext(cmd)
			defer cancel()
			resp, err := a.ctrl().GetVersion(ctx, &cpv1.GetVersionRequest{})
			if err != nil {
				v.ControllerError = a.rpcError(a.controller, err).Error()
			} else {
				v.Controller = resp.GetVersion()
			}
			v.ControllerAddress = a.controller.addressText() // the one that answered, of several
			return a.emit(v, func(w io.Writer) {
				fmt.Fprintf(w, "Client:\t%s\n", v.Client)
				fmt.Fprintf(w, "  commit:\t%s\n", orUnknown(v.Build.Commit))
				fmt.Fprintf(w, "  built:\t%s\n", orUnknown(v.Build.BuildDate))
				fmt.Fprintf(w, "  go version:\t%s (%s)\n", v.Build.GoVersion, v.Build.Platform)
				if v.ControllerError != "" {
					fmt.Fprintf(w, "Controller:\tunknown (%s)\n", v.ControllerError)
				} else {
					fmt.Fprintf(w, "Controller:\t%s (%s)\n", orDash(v.Controller), v.ControllerAddress)
				}
			})
		},
	}
	return needs(cmd, needController)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
