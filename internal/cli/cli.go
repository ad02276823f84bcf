// Package cli holds what both binaries' command lines share: exit codes,
// configuration layering for cobra commands, and logger flags.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/logging"
)

// Exit codes, the same for every command.
const (
	ExitOK        = 0
	ExitUnhealthy = 1 // something unhealthy or failed
	ExitUsage     = 2 // usage, configuration or connection error
)

// ExitError carries an exit code with its message.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Fail returns an error that exits with code.
func Fail(code int, err error) error { return &ExitError{Code: code, Err: err} }

// Unhealthy is the silent exit 1 after a report was printed.
var Unhealthy = &ExitError{Code: ExitUnhealthy, Err: errors.New("")}

// Main runs root and exits with the right code (see Execute).
func Main(root *cobra.Command) { os.Exit(Execute(root, os.Stderr)) }

// Execute runs root, prints its error to stderr and returns the exit code.
// Errors that are not ExitErrors are usage or configuration errors.
func Execute(root *cobra.Command, stderr io.Writer) int {
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return Fail(ExitUsage, fmt.Errorf("%w\nsee '%s --help'", err, c.CommandPath()))
	})
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	code := ExitUsage
	var ee *ExitError
	if errors.As(err, &ee) {
		code = ee.Code
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(stderr, "error:", msg)
	}
	return code
}

// LoadConfig applies flags > environment > .env.local > .env > defaults to
// cmd's flags and returns all values (tasks read settings from them).
func LoadConfig(cmd *cobra.Command) (config.Values, error) {
	wd, _ := os.Getwd()
	v, err := config.Load(wd)
	if err != nil {
		return nil, Fail(ExitUsage, err)
	}
	if err := config.Apply(cmd.Flags(), v); err != nil {
		return nil, Fail(ExitUsage, err)
	}
	return v, nil
}

// LogFlags are --log-level and --log-format.
type LogFlags struct{ Level, Format string }

// Add registers the flags on cmd.
func (l *LogFlags) Add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(&l.Format, "log-format", "", "log format: json or console (default: console on a terminal, else json)")
}

// Logger builds the logger.
func (l *LogFlags) Logger() (*zap.Logger, error) {
	lg, err := logging.New(l.Level, l.Format)
	if err != nil {
		return nil, Fail(ExitUsage, err)
	}
	return lg, nil
}

// CheckArgs parses args against root the way Execute would (subcommand,
// flags, positional arguments) without running anything. Tests use it to
// keep deploy/ command lines from rotting.
func CheckArgs(root *cobra.Command, args []string) (*cobra.Command, error) {
	cmd, rest, err := root.Find(args)
	if err != nil {
		return nil, err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return cmd, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	if cmd.Args != nil {
		if err := cmd.Args(cmd, cmd.Flags().Args()); err != nil {
			return cmd, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
		}
	}
	if cmd.RunE == nil && cmd.Run == nil {
		return cmd, fmt.Errorf("%s is not runnable", cmd.CommandPath())
	}
	return cmd, nil
}
