package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/messages"
)

// setup plan|apply|status (docs/SETUP.md). The spec file is parsed here,
// so a bad file is refused with FILE:LINE before anything is sent.

func setupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Bring clusters to a fleet spec: network, cluster, database and application layers",
		Long: "Setup runs the steps of each layer on the agents (cluster steps once per cluster on a\n" +
			"controlplane agent), verifies each layer before the next, retries what is worth retrying\n" +
			"and rolls a failed layer back. See docs/SETUP.md.",
	}
	cmd.AddCommand(setupPlanCmd(), setupApplyCmd(), setupStatusCmd())
	return cmd
}

type setupFlags struct {
	dataDir, file, cluster, layer, stepTimeout string
	asJSON                                     bool
}

func (f *setupFlags) add(cmd *cobra.Command) {
	dataDirFlag(cmd, &f.dataDir)
	cmd.Flags().StringVarP(&f.file, "file", "f", "", "fleet spec (YAML, apiVersion metaguildnet/v1, kind Fleet)")
	cmd.Flags().StringVar(&f.cluster, "cluster", "", "only this cluster of the spec")
	cmd.Flags().StringVar(&f.layer, "layer", "", "only this layer: network, cluster, database or application")
	cmd.Flags().StringVar(&f.stepTimeout, "step-timeout", "", "deadline of each step on a node (default 5m for apply, 1m for plan)")
	jsonFlag(cmd, &f.asJSON)
	cmd.MarkFlagRequired("file")
}

// request parses the spec file and builds the request.
func (f *setupFlags) request() (messages.SetupRequest, error) {
	spec, err := fleet.Load(f.file)
	if err != nil {
		return messages.SetupRequest{}, cli.Fail(cli.ExitUsage, err)
	}
	if f.cluster != "" {
		if _, ok := fleet.Cluster(spec, f.cluster); !ok {
			return messages.SetupRequest{}, cli.Fail(cli.ExitUsage, fmt.Errorf("--cluster %s: not a cluster of %s", f.cluster, f.file))
		}
	}
	req := messages.SetupRequest{V: messages.Version, Spec: *spec, Cluster: f.cluster, Layer: f.layer, StepTimeout: f.stepTimeout}
	if err := req.Validate(); err != nil {
		return req, cli.Fail(cli.ExitUsage, fmt.Errorf("--layer/--step-timeout: %w", err))
	}
	return req, nil
}

func setupPlanCmd() *cobra.Command {
	var f setupFlags
	cmd := &cobra.Command{
		Use:   "plan -f FLEET.yaml",
		Short: "Show what apply would do on each node: create, update, unchanged or blocked, with a one-line diff",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			req, err := f.request()
			if err != nil {
				return err
			}
			c, ctx, done, err := connect(cmd, f.dataDir, messages.APITimeout(messages.APISetupPlan))
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.SetupPlan(ctx, req)
			if err != nil {
				return apiErr(err)
			}
			show(f.asJSON, rep, func(w io.Writer) { writePlan(w, rep) })
			for _, r := range rep.Rows {
				if r.Error != "" || r.Action == messages.ActionBlocked {
					return cli.Unhealthy
				}
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// writePlan prints a plan as a table and a summary line.
func writePlan(w io.Writer, rep messages.SetupPlanReply) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tLAYER\tSTEP\tNODE\tACTION\tDETAIL")
	counts := map[string]int{}
	for _, r := range rep.Rows {
		detail := r.Diff
		switch {
		case r.Error != "":
			detail = r.Error
		case r.Blocked != "":
			detail = r.Blocked
		}
		node := r.Node
		if node == "" {
			node = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Layer, r.Step, node, r.Action, detail)
		counts[r.Action]++
	}
	tw.Flush()
	var parts []string
	for _, a := range []string{messages.ActionCreate, messages.ActionUpdate, messages.ActionUnchanged, messages.ActionBlocked, "error"} {
		if counts[a] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[a], a))
		}
	}
	if len(rep.Rows) == 0 {
		parts = append(parts, "no steps")
	} else if counts[messages.ActionCreate]+counts[messages.ActionUpdate]+counts[messages.ActionBlocked]+counts["error"] == 0 {
		parts = append(parts, "no changes")
	}
	fmt.Fprintf(w, "\nPlan: %s.\n", strings.Join(parts, ", "))
}

func setupApplyCmd() *cobra.Command {
	var f setupFlags
	var yes bool
	cmd := &cobra.Command{
		Use:   "apply -f FLEET.yaml",
		Short: "Apply a fleet spec: layer by layer, verified, with live progress",
		Long: "Apply brings the spec's clusters up: per layer the steps in order (a node step on all its nodes\n" +
			"at once), retries for retryable failures, a rollback of the failed layer on a critical failure,\n" +
			"and a verification of each layer before the next. Exit 0 only when every layer applied and\n" +
			"verified healthy, 1 when the run failed or was rolled back, 2 for a bad file or flags.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			req, err := f.request()
			if err != nil {
				return err
			}
			tty := isTerminal(os.Stdout) && isTerminal(os.Stdin)
			if tty && !yes && !f.asJSON {
				if !confirm(os.Stdin, os.Stdout, applySummary(req, f.file)) {
					return cli.Fail(cli.ExitUsage, errors.New("not applied"))
				}
			}
			c, ctx, done, err := connectUntilInterrupted(cmd, f.dataDir)
			if err != nil {
				return err
			}
			defer done()
			rep, err := call(ctx, messages.DefaultAPITimeout, func(ctx context.Context) (messages.SetupApplyReply, error) { return c.SetupApply(ctx, req) })
			if err != nil {
				return apiErr(err)
			}
			progress := progressOut(f.asJSON)
			fmt.Fprintf(progress, "setup run %s started\n", rep.RunID)
			run, err := followRun(ctx, c, rep.RunID, progress, tty && !f.asJSON)
			if err != nil {
				return followFailed(ctx, err, "the run goes on on the controller: controller setup status "+rep.RunID)
			}
			return printSetupRun(run, f.asJSON)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation on a terminal")
	return cmd
}

func setupStatusCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [RUN]",
		Short: "Show a setup run (default the newest): its layers, steps and verifications",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := session(cmd, &dataDir, messages.DefaultAPITimeout)
			if err != nil {
				return err
			}
			defer done()
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			rep, err := c.SetupStatus(ctx, id)
			if err != nil {
				return apiErr(err)
			}
			if rep.Run.Status == messages.RunRunning {
				show(asJSON, runView(rep.Run), func(w io.Writer) {
					writeRun(w, rep.Run)
					if rep.Progress != nil {
						fmt.Fprintln(w, progressLine(*rep.Progress))
					}
				})
				return nil
			}
			return printSetupRun(rep.Run, asJSON)
		},
	}
	dataDirFlag(cmd, &dataDir)
	jsonFlag(cmd, &asJSON)
	return cmd
}

// runJSON is the printed form of a run: exactly run_id, status, layers.
type runJSON struct {
	RunID  string                `json:"run_id"`
	Status string                `json:"status"`
	Layers []messages.SetupLayer `json:"layers"`
}

func runView(r messages.SetupRun) runJSON {
	if r.Layers == nil {
		r.Layers = []messages.SetupLayer{}
	}
	return runJSON{RunID: r.RunID, Status: r.Status, Layers: r.Layers}
}

// runOK: every layer applied and verified healthy (a layer no cluster
// requires is skipped).
func runOK(r messages.SetupRun) bool {
	if r.Status != messages.RunSucceeded {
		return false
	}
	for _, l := range r.Layers {
		if l.Status != "verified" && l.Status != "skipped" {
			return false
		}
	}
	return true
}

func printSetupRun(run messages.SetupRun, asJSON bool) error {
	show(asJSON, runView(run), func(w io.Writer) { writeRun(w, run) })
	if !runOK(run) {
		return cli.Unhealthy
	}
	return nil
}

// writeRun prints a run as text: each layer, its steps and verification.
func writeRun(w io.Writer, run messages.SetupRun) {
	fmt.Fprintf(w, "Setup run %s: %s\n", run.RunID, run.Status)
	for _, l := range run.Layers {
		fmt.Fprintf(w, "\n%s: %s\n", l.Name, l.Status)
		if len(l.Verification) > 0 {
			fmt.Fprintf(w, "  verification: %s\n", l.Verification)
		}
		if len(l.Steps) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  STEP\tCLUSTER\tNODE\tACTION\tOUTCOME\tATTEMPTS\tTIME\tERROR")
		for _, s := range l.Steps {
			node := s.Node
			if node == "" {
				node = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.Cluster, node, s.Action, s.Outcome, s.Attempts,
				(time.Duration(s.DurationMS) * time.Millisecond).String(), s.Error)
		}
		tw.Flush()
	}
}

// followRun polls a run until it ends, printing progress: a bar rewritten
// in place on a terminal, a plain line per change otherwise.
func followRun(ctx context.Context, c *ctlclient.Client, id string, w io.Writer, bar bool) (messages.SetupRun, error) {
	rep, err := follow(ctx, w, bar,
		func(ctx context.Context) (messages.SetupStatusReply, error) { return c.SetupStatus(ctx, id) },
		func(rep messages.SetupStatusReply) progress {
			return progressOf(rep.Progress, progressLine, progressBar)
		},
		func(rep messages.SetupStatusReply) bool { return rep.Run.Status != messages.RunRunning })
	return rep.Run, err
}

// progressLine says where a run is: per cluster its layer, steps done of
// total and the step on each node; elapsed and ETA.
func progressLine(p messages.SetupProgress) string {
	var parts []string
	for _, c := range p.Clusters {
		s := fmt.Sprintf("%s %s %d/%d", c.Cluster, c.Layer, c.Done, c.Total)
		if len(c.Running) > 0 {
			nodes := make([]string, 0, len(c.Running))
			for n := range c.Running {
				nodes = append(nodes, n)
			}
			slices.Sort(nodes)
			var on []string
			for _, n := range nodes {
				on = append(on, n+":"+c.Running[n])
			}
			s += " [" + strings.Join(on, " ") + "]"
		}
		parts = append(parts, s)
	}
	eta := "ETA ?"
	if p.ETAMS >= 0 {
		eta = "ETA " + (time.Duration(p.ETAMS) * time.Millisecond).Round(time.Second).String()
	}
	return fmt.Sprintf("%s; elapsed %s, %s", strings.Join(parts, "; "), (time.Duration(p.ElapsedMS) * time.Millisecond).Round(time.Second), eta)
}

// progressBar is a 20-cell bar of the layer steps done over all clusters.
func progressBar(p messages.SetupProgress) string {
	done, total := 0, 0
	for _, c := range p.Clusters {
		done += c.Done
		total += c.Total
	}
	const cells = 20
	n := 0
	if total > 0 {
		n = done * cells / total
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", cells-n) + "]"
}

func applySummary(req messages.SetupRequest, file string) string {
	var cs []string
	for _, c := range req.Spec.Clusters {
		if req.Cluster == "" || c.Name == req.Cluster {
			cs = append(cs, fmt.Sprintf("%s (%d nodes)", c.Name, len(c.Nodes)))
		}
	}
	layers := "every layer"
	if req.Layer != "" {
		layers = "layer " + req.Layer
	}
	return fmt.Sprintf("Apply %s (%s) to %s? [y/N] ", file, layers, strings.Join(cs, ", "))
}

func confirm(in io.Reader, out io.Writer, prompt string) bool {
	fmt.Fprint(out, prompt)
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
