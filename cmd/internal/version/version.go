// Package version holds the build's version, set by the Makefile with
// -ldflags "-X github.com/fourover6/fourover6/cmd/internal/version.Version=...".
package version

import "runtime/debug"

// Version of this build.
var Version = "dev"

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
