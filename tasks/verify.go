package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/messages"
)

// CustomChecksFileCheck is the name of the result reported when the custom
// check file cannot be used.
const CustomChecksFileCheck = "custom_checks_file"

// Verify runs verification checks on this node and reports their results.
type Verify struct {
	// Tailscale is the LocalAPI the network checks ask; nil means tailscaled
	// at setting TS_SOCKET. An agent that is a tsnet node sets its
	// LocalClient here.
	Tailscale checks.LocalAPI
	// Parallel bounds the checks run at once (0: checks.DefaultCheckParallelism).
	Parallel int
}

func (Verify) Kind() string { return "verify" }

func (v Verify) Run(ctx context.Context, env *Env, raw json.RawMessage) (Output, error) {
	args, err := decodeTaskArgs[messages.VerifyArgs](raw)
	if err != nil {
		return Output{}, err
	}
	if env == nil {
		env = &Env{}
	}
	catalog, catErr := checks.Catalog(env.Settings)
	if catErr != nil && args.Checks != nil {
		// A named check may be a custom one that failed to load.
		for _, n := range args.Checks {
			if !slices.ContainsFunc(catalog, func(c checks.Check) bool { return c.Name == n }) {
				return Output{}, BadArgs("check %q: unknown (the custom check file failed to load: %v)", n, catErr)
			}
		}
	}
	selected, err := checks.Select(catalog, checks.Selection{Layers: args.Layers, Scope: checks.Scope(args.Scope), Names: args.Checks, Exclude: args.Exclude})
	if err != nil {
		return Output{}, BadArgs("%v", err)
	}
	// Finish a little before the task's deadline, so checks that are still
	// running are reported unknown rather than the whole result lost.
	runCtx := ctx
	if dl, ok := ctx.Deadline(); ok {
		margin := min(time.Until(dl)/10, time.Second)
		var cancel context.CancelFunc
		runCtx, cancel = context.WithDeadlineCause(ctx, dl.Add(-margin), errors.New("the verify task's deadline is near"))
		defer cancel()
	}
	req, err := checks.RequirementFrom(env.Settings, args.Require)
	if err != nil {
		// The agent's own setting is malformed: the checks still run and
		// each one fails naming it (RunChecks does that without a
		// requirement given).
		req = checks.Requirement{}
	}
	opts := checks.RunOptions{Parallel: v.Parallel, Clients: map[string]any{checks.TailscaleClientKey: v.Tailscale}}
	if err == nil {
		opts.Require = &req
	}
	results := checks.RunChecks(runCtx, env.checkEnv(), selected, opts)
	if catErr != nil && args.Scope != string(checks.ScopeCluster) {
		results = append(results, messages.CheckResult{
			Name:    CustomChecksFileCheck,
			Layer:   "custom",
			Status:  messages.CheckFail,
			Message: checks.Truncate(catErr.Error(), checks.MaxCheckMessageBytes),
			Node:    env.Node,
			Cluster: env.Cluster,
		})
	}
	if results == nil {
		results = []messages.CheckResult{}
	}
	out := Output{Outcome: checks.Worst(results), Data: &messages.VerifyOutput{V: messages.Version, Checks: results}}
	out.Reason = summarize(results, len(selected) == 0)
	return out, nil
}

// checkEnv is what the checks may know of env.
func (e *Env) checkEnv() *checks.Env {
	return &checks.Env{Node: e.Node, Cluster: e.Cluster, Role: e.Role, Version: e.Version, Log: e.Log, Settings: e.Settings}
}

// summarize names the checks that did not pass, skipped ones left out
// (their root is named).
func summarize(results []messages.CheckResult, none bool) string {
	if none {
		return "no checks selected"
	}
	var bad []string
	skipped := 0
	for _, r := range results {
		switch r.Status {
		case messages.CheckFail, messages.CheckUnknown, messages.CheckWarn, messages.CheckNotConfigured:
			bad = append(bad, r.Name+" "+r.Status)
		case messages.CheckSkipped:
			skipped++
		}
	}
	if len(bad) == 0 {
		return fmt.Sprintf("%d checks passed", len(results))
	}
	s := strings.Join(bad, ", ")
	if skipped > 0 {
		s += fmt.Sprintf("; %d skipped", skipped)
	}
	return checks.Truncate(s, checks.MaxCheckMessageBytes)
}
