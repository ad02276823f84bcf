// Package buildinfo holds what a build stamps into the binaries: version,
// commit and build date, set with -ldflags "-X" (see [LDFlags], the Makefile
// and hack/image). Unstamped builds (go run, go test) say "dev" and fall
// back to the VCS revision the Go toolchain recorded, when there is one.
package buildinfo

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Set at build time with -ldflags "-X <Package>.Version=...".
var (
	Version = "dev"
	Commit  = ""
	Date    = "" // RFC 3339; the commit's date, so rebuilds are reproducible
)

// Package is this package's import path, the target of -X.
const Package = "github.com/guildnet/metaguildnet/internal/buildinfo"

// LDFlags returns the -X flags that stamp version, commit and date.
func LDFlags(version, commit, date string) string {
	return fmt.Sprintf("-X %s.Version=%s -X %s.Commit=%s -X %s.Date=%s",
		Package, version, Package, commit, Package, date)
}

// Info is what `version` prints.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// Get returns the stamped values, with the toolchain's VCS stamp for what
// was not stamped.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, Date: Date, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && i.Commit == "":
				i.Commit = s.Value
			case s.Key == "vcs.time" && i.Date == "":
				i.Date = s.Value
			}
		}
	}
	return i
}

// Write prints i for people (asJSON false) or as one JSON object.
func (i Info) Write(w io.Writer, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(w).Encode(i)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version:    %s\n", i.Version)
	fmt.Fprintf(&b, "commit:     %s\n", orUnknown(i.Commit))
	fmt.Fprintf(&b, "build date: %s\n", orUnknown(i.Date))
	fmt.Fprintf(&b, "go:         %s %s\n", i.GoVersion, i.Platform)
	_, err := io.WriteString(w, b.String())
	return err
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Command is the `version` subcommand both binaries carry.
func Command() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print version, commit, build date and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := Get().Write(cmd.OutOrStdout(), asJSON); err != nil {
				return fmt.Errorf("version: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}
