package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/messages"
)

// rollout start|status|watch|pause|resume|abort|list|diff
// (docs/ROLLOUT.md). The spec file is parsed here, so a bad file is
// refused with FILE:LINE before anything is sent.

func rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Roll a changed fleet spec out in waves and batches, gated on verification",
		Long: "A rollout applies only the steps a changed spec changes, wave of clusters by wave, batch of\n" +
			"nodes by batch (a canary first), each batch gated on the verification of the layers it touches,\n" +
			"with a failure budget and rollback to the previous spec revision. See docs/ROLLOUT.md.",
	}
	cmd.AddCommand(rolloutStartCmd(), rolloutStatusCmd(), rolloutWatchCmd(), rolloutListCmd(), rolloutDiffCmd(),
		rolloutControlCmd("pause", messages.APIRolloutPause, "Pause a rollout after its running batch"),
		rolloutControlCmd("resume", messages.APIRolloutResume, "Resume a paused rollout (a batch that failed into the pause is re-run)"),
		rolloutControlCmd("abort", messages.APIRolloutAbort, "Abort a rollout: stop after the running batch and roll that batch back"))
	return cmd
}

func rolloutStartCmd() *cobra.Command {
	var dataDir, file, waves, minHealthy, healthyDeadline, onFailure, stepTimeout string
	var maxParallel, canary, maxFailed int
	var skipOffline, detach, asJSON bool
	cmd := &cobra.Command{
		Use:   "start -f FLEET.yaml",
		Short: "Start a rollout of a fleet spec and follow it (exit 0 only when it succeeded)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			spec, err := fleet.Load(file)
			if err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			req := messages.RolloutStartRequest{V: messages.Version, Spec: *spec, Waves: waves, MaxParallel: maxParallel,
				MaxFailed: maxFailed, MinHealthy: minHealthy, HealthyDeadline: healthyDeadline, OnFailure: onFailure,
				SkipOffline: skipOffline, StepTimeout: stepTimeout}
			if cmd.Flags().Changed("canary") {
				req.Canary = &canary
			}
			if err := req.Validate(); err != nil {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("flags: %w", err))
			}
			if cmd.Flags().Changed("max-parallel") && maxParallel < 1 {
				return cli.Fail(cli.ExitUsage, errors.New("--max-parallel: at least 1"))
			}
			c, ctx, done, err := connectUntilInterrupted(cmd, dataDir)
			if err != nil {
				return err
			}
			defer done()
			rep, err := call(ctx, messages.DefaultAPITimeout, func(ctx context.Context) (messages.RolloutStartReply, error) { return c.RolloutStart(ctx, req) })
			if err != nil {
				return apiErr(err)
			}
			if detach {
				if asJSON {
					return printJSON(map[string]string{"id": rep.ID})
				}
				fmt.Printf("rollout %s started: controller rollout watch %s\n", rep.ID, rep.ID)
				return nil
			}
			progress := progressOut(asJSON)
			fmt.Fprintf(progress, "rollout %s started\n", rep.ID)
			st, err := followRollout(ctx, c, rep.ID, progress, isTerminal(os.Stderr) && !asJSON)
			if err != nil {
				return followFailed(ctx, err, "the rollout goes on on the controller: controller rollout watch "+rep.ID)
			}
			return printRollout(st, asJSON)
		},
	}
	dataDirFlag(cmd, &dataDir)
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "fleet spec (YAML, apiVersion metaguildnet/v1, kind Fleet)")
	f.StringVar(&waves, "waves", "", `waves of clusters: "staging;eu-1,eu-2;us-1" (default one wave per cluster, spec order)`)
	f.IntVar(&maxParallel, "max-parallel", 1, "nodes of a cluster updated at once")
	f.IntVar(&canary, "canary", 1, "nodes that go first in each wave, held healthy for --min-healthy (0: none)")
	f.IntVar(&maxFailed, "max-failed", 0, "failed nodes tolerated before the rollout stops")
	f.StringVar(&minHealthy, "min-healthy", "10s", "how long a batch must stay healthy")
	f.StringVar(&healthyDeadline, "healthy-deadline", "2m", "how long a batch may take to be healthy (and an offline node to come back)")
	f.StringVar(&onFailure, "on-failure", "rollback", "past the budget: rollback (the failed batch to the previous revision) or pause")
	f.BoolVar(&skipOffline, "skip-offline", false, "skip nodes offline when their batch comes (listed as skipped) instead of failing them")
	f.StringVar(&stepTimeout, "step-timeout", "", "deadline of each step on a node (default 5m)")
	f.BoolVar(&detach, "detach", false, "print the id and return (follow it with rollout watch ID)")
	f.BoolVar(&asJSON, "json", false, "print the rollout as JSON when it ends")
	cmd.MarkFlagRequired("file")
	return cmd
}

func rolloutStatusCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [ID]",
		Short: "Show a rollout (default the newest): waves, batches with their gates, nodes, and why it stopped",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := session(cmd, &dataDir, messages.DefaultAPITimeout)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.RolloutStatus(ctx, argOr(args))
			if err != nil {
				return apiErr(err)
			}
			return printRollout(rep, asJSON)
		},
	}
	dataDirFlag(cmd, &dataDir)
	jsonFlag(cmd, &asJSON)
	return cmd
}

func rolloutWatchCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "watch [ID]",
		Short: "Follow a rollout live (default the newest): wave, batch, nodes updating/healthy/failed, gate, elapsed, ETA",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			c, ctx, done, err := connectUntilInterrupted(cmd, dataDir)
			if err != nil {
				return err
			}
			defer done()
			id := argOr(args)
			if id == "" {
				rep, err := call(ctx, messages.DefaultAPITimeout, func(ctx context.Context) (messages.RolloutStatusReply, error) { return c.RolloutStatus(ctx, "") })
				if err != nil {
					return apiErr(err)
				}
				id = rep.Rollout.ID
			}
			st, err := followRollout(ctx, c, id, os.Stdout, isTerminal(os.Stdout))
			if err != nil {
				return apiErr(err)
			}
			return printRollout(st, false)
		},
	}
	dataDirFlag(cmd, &dataDir)
	return cmd
}

func rolloutControlCmd(name, verb, short string) *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   name + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := session(cmd, &dataDir, messages.DefaultAPITimeout)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.RolloutControl(ctx, verb, args[0])
			if err != nil {
				return apiErr(err)
			}
			switch {
			case name == "abort" && rep.Rollout.Status == messages.RolloutRunning:
				fmt.Printf("rollout %s: aborting after the running batch, which is rolled back\n", args[0])
			case name == "pause" && rep.Rollout.Status == messages.RolloutRunning:
				fmt.Printf("rollout %s: pausing after the running batch\n", args[0])
			default:
				fmt.Printf("rollout %s: %s\n", args[0], rep.Rollout.Status)
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	return cmd
}

func rolloutListCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, done, err := session(cmd, &dataDir, messages.DefaultAPITimeout)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.RolloutList(ctx)
			if err != nil {
				return apiErr(err)
			}
			if asJSON {
				return printJSON(rep.Rollouts)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tREVISIONS\tCLUSTERS\tSTARTED\tREASON")
			for _, r := range rep.Rollouts {
				fmt.Fprintf(tw, "%s\t%s\t%d -> %d\t%s\t%s\t%s\n", r.ID, r.Status, r.FromRevision, r.ToRevision, strings.Join(r.Clusters, ","),
					r.Started.Format(time.RFC3339), r.Reason)
			}
			return tw.Flush()
		},
	}
	dataDirFlag(cmd, &dataDir)
	jsonFlag(cmd, &asJSON)
	return cmd
}

func rolloutDiffCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "diff REV1 REV2",
		Short: "Show what changed between two spec revisions, per cluster and field",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var revs [2]int64
			for i, a := range args {
				n, err := strconv.ParseInt(a, 10, 64)
				if err != nil || n < 1 {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("REV%d: %q is not a revision number (1, 2, ...)", i+1, a))
				}
				revs[i] = n
			}
			c, ctx, done, err := session(cmd, &dataDir, messages.DefaultAPITimeout)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.RolloutDiff(ctx, revs[0], revs[1])
			if err != nil {
				return apiErr(err)
			}
			return show(asJSON, rep, func(w io.Writer) { writeDiff(w, rep) })
		},
	}
	dataDirFlag(cmd, &dataDir)
	jsonFlag(cmd, &asJSON)
	return cmd
}

func argOr(args []string) string {
	if len(args) > 0 {
		return args[0]
	}
	return ""
}

// writeDiff prints a diff grouped by cluster.
func writeDiff(w io.Writer, d messages.RolloutDiffReply) {
	fmt.Fprintf(w, "revision %d (%s) -> %d (%s)\n", d.From, short(d.FromHash), d.To, short(d.ToHash))
	if len(d.Rows) == 0 {
		fmt.Fprintln(w, "no differences")
		return
	}
	cluster := "\x00"
	for _, r := range d.Rows {
		if r.Cluster != cluster {
			cluster = r.Cluster
			if cluster == "" {
				fmt.Fprintln(w, "\nspec:")
			} else {
				fmt.Fprintf(w, "\ncluster %s:\n", cluster)
			}
		}
		switch {
		case r.Field == "" && r.From == "":
			fmt.Fprintln(w, "  + cluster added")
		case r.Field == "" && r.To == "":
			fmt.Fprintln(w, "  - cluster removed")
		case r.From == "":
			fmt.Fprintf(w, "  + %s: %s\n", r.Field, r.To)
		case r.To == "":
			fmt.Fprintf(w, "  - %s: %s\n", r.Field, r.From)
		default:
			fmt.Fprintf(w, "  ~ %s: %s -> %s\n", r.Field, r.From, r.To)
		}
	}
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// printRollout prints a rollout; exit 0 only when it succeeded.
// rolloutJSON is what --json prints: the rollout object, plus
// why it stopped and the failed nodes' diagnoses (root cause, fix) when it
// did.
type rolloutJSON struct {
	messages.Rollout
	Reason    string                      `json:"reason,omitempty"`
	Diagnoses []messages.RolloutDiagnosis `json:"diagnoses,omitempty"`
}

func printRollout(rep messages.RolloutStatusReply, asJSON bool) error {
	show(asJSON, rolloutJSON{Rollout: rep.Rollout, Reason: rep.Reason, Diagnoses: rep.Diagnoses}, func(w io.Writer) { writeRollout(w, rep) })
	if rep.Rollout.Status != messages.RolloutSucceeded {
		return cli.Unhealthy
	}
	return nil
}

// writeRollout prints a rollout as text: waves, batches with their gates,
// nodes, why it stopped and the diagnoses.
func writeRollout(w io.Writer, rep messages.RolloutStatusReply) {
	r := rep.Rollout
	fmt.Fprintf(w, "Rollout %s: %s (revision %d -> %d)\n", r.ID, r.Status, r.FromRevision, r.ToRevision)
	if rep.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", rep.Reason)
	}
	for i, wv := range r.Waves {
		fmt.Fprintf(w, "\nwave %d [%s]: %s\n", i+1, strings.Join(wv.Clusters, ","), wv.Status)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nBATCH\tCLUSTER\tNODES\tSTATUS\tGATE\tTIME\tCHECKS FAILED")
	for i, b := range r.Batches {
		took := "-"
		if b.Started != nil && b.Finished != nil {
			took = b.Finished.Sub(*b.Started).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i+1, b.Cluster, strings.Join(b.Nodes, ","), b.Status, b.Gate.Status, took, strings.Join(b.Gate.ChecksFailed, ","))
	}
	tw.Flush()
	counts := map[string][]string{}
	for _, n := range r.Nodes {
		counts[n.Status] = append(counts[n.Status], n.Name)
	}
	fmt.Fprintln(w)
	for _, s := range []string{messages.RolloutNodeHealthy, messages.RolloutNodeUpdating, messages.RolloutNodePending, messages.RolloutNodeFailed, messages.RolloutNodeRolledBack, messages.RolloutNodeSkipped} {
		if len(counts[s]) > 0 {
			fmt.Fprintf(w, "%s: %s\n", s, strings.Join(counts[s], ", "))
		}
	}
	if len(rep.Diagnoses) > 0 {
		fmt.Fprintln(w, "\nwhy:")
		for _, d := range rep.Diagnoses {
			fmt.Fprintf(w, "  %s (%s): %s\n", d.Node, d.Cluster, d.Failure)
			if d.RootCause != "" && d.RootCause != d.Failure {
				fmt.Fprintf(w, "    root cause: %s\n", d.RootCause)
			}
			if d.Fix != "" {
				fmt.Fprintf(w, "    fix: %s\n", d.Fix)
			}
			if d.DiagnosisID != "" {
				fmt.Fprintf(w, "    diagnosis: %s\n", d.DiagnosisID)
			}
		}
	}
	if rep.Progress != nil && r.Status == messages.RolloutRunning {
		fmt.Fprintln(w, rolloutLine(*rep.Progress))
	}
}

// followRollout polls a rollout until it ends (or pauses), printing
// progress: a bar rewritten in place on a terminal, a plain line per
// change otherwise.
func followRollout(ctx context.Context, c *ctlclient.Client, id string, w io.Writer, bar bool) (messages.RolloutStatusReply, error) {
	return follow(ctx, w, bar,
		func(ctx context.Context) (messages.RolloutStatusReply, error) { return c.RolloutStatus(ctx, id) },
		func(rep messages.RolloutStatusReply) progress {
			return progressOf(rep.Progress, rolloutLine, rolloutBar)
		},
		func(rep messages.RolloutStatusReply) bool { return rep.Rollout.Status != messages.RolloutRunning })
}

// rolloutLine is the live view's line.
func rolloutLine(p messages.RolloutProgress) string {
	eta := "?"
	if p.ETAMS >= 0 {
		eta = (time.Duration(p.ETAMS) * time.Millisecond).Round(time.Second).String()
	}
	s := fmt.Sprintf("%s wave %d/%d batch %d/%d", p.Status, p.Wave, p.Waves, p.Batch, p.Batches)
	if p.Cluster != "" {
		s += " [" + p.Cluster + "]"
	}
	s += fmt.Sprintf(" updating %d healthy %d/%d failed %d", p.Updating, p.Healthy, p.Nodes, p.Failed)
	if p.Skipped > 0 {
		s += fmt.Sprintf(" skipped %d", p.Skipped)
	}
	if p.Gate != "" {
		s += " gate " + p.Gate
	}
	if p.Control != "" {
		s += " (" + p.Control + " requested)"
	}
	return s + fmt.Sprintf(" elapsed %s ETA %s", (time.Duration(p.ElapsedMS)*time.Millisecond).Round(time.Second), eta)
}

func rolloutBar(p messages.RolloutProgress) string {
	const width = 20
	done := 0
	if p.Nodes > 0 {
		done = (p.Healthy + p.Failed + p.Skipped) * width / p.Nodes
	}
	return "[" + strings.Repeat("#", done) + strings.Repeat(".", width-done) + "]"
}
