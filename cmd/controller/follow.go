package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
)

// What the commands that talk to a running controller share: how they
// connect, how they print, and how the ones that follow a setup run or a
// rollout follow it.

// connect dials the controller of dataDir (after the configuration is
// loaded) with a context that ends after timeout; done closes both.
func connect(cmd *cobra.Command, dataDir string, timeout time.Duration) (c *ctlclient.Client, ctx context.Context, done func(), err error) {
	if c, err = dial(dataDir); err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	return c, ctx, func() { cancel(); c.Close() }, nil
}

// connectUntilInterrupted dials the controller of dataDir (after the
// configuration is loaded) with a context that ends on SIGINT or SIGTERM,
// for a command that follows something as long as the operator wants;
// done closes both.
func connectUntilInterrupted(cmd *cobra.Command, dataDir string) (c *ctlclient.Client, ctx context.Context, done func(), err error) {
	if c, err = dial(dataDir); err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	return c, ctx, func() { stop(); c.Close() }, nil
}

// call makes one API call within the default API deadline, under ctx.
func call[R any](ctx context.Context, timeout time.Duration, f func(context.Context) (R, error)) (R, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return f(cctx)
}

// show prints v as indented JSON with --json, else as text.
func show(asJSON bool, v any, text func(io.Writer)) error {
	if asJSON {
		return printJSON(v)
	}
	text(os.Stdout)
	return nil
}

// jsonFlag is the --json flag of a command that prints JSON on request.
func jsonFlag(cmd *cobra.Command, asJSON *bool) {
	cmd.Flags().BoolVar(asJSON, "json", false, "print JSON")
}

// progressOut is where a followed run's progress goes: stderr, or nowhere
// when stdout carries JSON.
func progressOut(asJSON bool) io.Writer {
	if asJSON {
		return io.Discard
	}
	return os.Stderr
}

// progress is what a status reply says of a run still going: its line and
// bar (ok false: nothing to show yet).
type progress struct {
	line, bar string
	ok        bool
}

// progressOf is what a status reply's progress p says: its line and bar,
// or nothing while p is nil.
func progressOf[P any](p *P, line, bar func(P) string) progress {
	if p == nil {
		return progress{}
	}
	return progress{line: line(*p), bar: bar(*p), ok: true}
}

// follow asks status every 250 ms until ended says the run ended (or ctx
// ends), printing progress to w: a bar rewritten in place when bar is set,
// a plain line per change otherwise. It keeps asking through up to 120
// failures in a row: the controller may be restarting, and the run
// resumes.
func follow[R any](ctx context.Context, w io.Writer, bar bool, status func(context.Context) (R, error), show func(R) progress, ended func(R) bool) (R, error) {
	var zero R
	last := ""
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	failures := 0
	for {
		rep, err := call(ctx, 10*time.Second, status)
		if err != nil {
			if failures++; failures > 120 || ctx.Err() != nil {
				return zero, err
			}
		} else {
			failures = 0
			if p := show(rep); p.ok {
				switch {
				case bar:
					fmt.Fprintf(w, "\r\033[K%s %s", p.bar, p.line)
				case p.line != last:
					fmt.Fprintln(w, p.line)
				}
				last = p.line
			}
			if ended(rep) {
				if bar {
					fmt.Fprintln(w)
				}
				return rep, nil
			}
		}
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-tick.C:
		}
	}
}

// followFailed is the error of a follow that failed: interrupted by the
// operator (the run goes on on the controller: goesOn says how to find it
// again) or the controller's answer.
func followFailed(ctx context.Context, err error, goesOn string) error {
	if ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "\n%s\n", goesOn)
		return cli.Fail(cli.ExitUnhealthy, errors.New("interrupted"))
	}
	return apiErr(err)
}
