// Package version holds the build's version, commit and date, set by the
// Makefile with -ldflags "-X github.com/fourover6/fourover6/cmd/internal/version.Version=...
// -X ...version.Commit=... -X ...version.Date=...". A plain go build or go
// install leaves them unset: the module version and the VCS stamp of the
// build (debug.ReadBuildInfo) stand in when there is one.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Set by -ldflags -X.
var (
	Version = "dev"
	Commit  = "" // full commit hash
	Date    = "" // build date, RFC 3339 UTC
)

// String returns Version, or the module version when built with go install.
func String() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return Version
}

// Info is everything known about this build. Fields are "" when unknown.
type Info struct {
	Version   string `json:"version" yaml:"version"`
	Commit    string `json:"commit" yaml:"commit"`
	GoVersion string `json:"go_version" yaml:"go_version"`
	BuildDate string `json:"build_date" yaml:"build_date"`
	Platform  string `json:"platform" yaml:"platform"` // "linux/amd64"
}

// Get returns this build's Info.
func Get() Info {
	in := Info{Version: String(), Commit: Commit, GoVersion: runtime.Version(), BuildDate: Date,
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if in.Commit == "" || in.BuildDate == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			var rev, at string
			dirty := false
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.time":
					at = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if in.Commit == "" && rev != "" {
				in.Commit = rev
				if dirty {
					in.Commit += "-dirty"
				}
			}
			if in.BuildDate == "" {
				// The commit's date: the go tool records no build time.
				in.BuildDate = at
			}
		}
	}
	return in
}

// Text is Info for people, one "key: value" line each, after a first line
// naming the program.
func (in Info) Text(program string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", program, in.Version)
	fmt.Fprintf(&b, "  commit:     %s\n", orUnknown(in.Commit))
	fmt.Fprintf(&b, "  built:      %s\n", orUnknown(in.BuildDate))
	fmt.Fprintf(&b, "  go version: %s\n", in.GoVersion)
	fmt.Fprintf(&b, "  platform:   %s\n", in.Platform)
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// SetCommand makes --version of a program's root command print Text.
func SetCommand(cmd *cobra.Command) {
	cmd.Version = String()
	// The template is plain text: escape what text/template would read.
	text := strings.ReplaceAll(Get().Text(cmd.Name()), "{{", `{{"{{"}}`)
	cmd.SetVersionTemplate(text)
}
