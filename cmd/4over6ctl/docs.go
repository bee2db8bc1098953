package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// docsCommand writes the Markdown reference of the whole command tree
// (make docs puts it in docs/cli/). Hidden: it is for the build, not for
// operators.
func (a *app) docsCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "docs DIR",
		Short:  "Write the Markdown reference of every command to DIR",
		Hidden: true,
		Args:   exactArgs("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return &cliError{code: exitError, msg: fmt.Sprintf("docs: %v", err)}
			}
			var disable func(*cobra.Command)
			disable = func(c *cobra.Command) {
				c.DisableAutoGenTag = true // no date: the pages are checked in
				for _, sub := range c.Commands() {
					disable(sub)
				}
			}
			disable(root)
			if err := doc.GenMarkdownTree(root, dir); err != nil {
				return &cliError{code: exitError, msg: fmt.Sprintf("docs: %v", err)}
			}
			return a.emit(map[string]string{"dir": dir}, func(w io.Writer) {
				fmt.Fprintf(w, "Wrote the command reference to %s\n", dir)
			})
		},
	}
}
