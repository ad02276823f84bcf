package messages

import (
	"fmt"
)

// Payloads of the verify task (kind "verify"): the arguments the controller
// sends in Task.Args and the output an agent returns in Result.Output.

// Verify scopes: where a check runs.
const (
	ScopeAll     = "all"     // both scopes (the default)
	ScopeNode    = "node"    // on every node (network, host)
	ScopeCluster = "cluster" // once per cluster on one agent (cluster, database, application)
)

// VerifyArgs are the arguments of the verify task. V may be left out by an
// operator typing them for `controller run` (it then means Version); the
// controller always sets it.
type VerifyArgs struct {
	V int `json:"v,omitempty"`
	// Layers to verify; empty means all.
	Layers []string `json:"layers,omitempty"`
	// Scope is node, cluster or all (the default, also ""). The controller
	// sends cluster-scoped checks to one agent per cluster and node-scoped
	// ones to every node.
	Scope string `json:"scope,omitempty"`
	// Checks names checks to run (their dependencies run too); empty means
	// all that Layers and Scope select.
	Checks []string `json:"checks,omitempty"`
	// Exclude names checks not to run unless a selected check depends on
	// them: the controller sends the host app's checks to the host app's
	// node and excludes them from the cluster's other agent.
	Exclude []string `json:"exclude,omitempty"`
	// Require names layers and checks that must run on top of the agent's
	// METAGN_REQUIRE_LAYERS/_CHECKS (the fleet spec's require block): one
	// of them that is not configured fails, naming what to set.
	Require *FleetRequire `json:"require,omitempty"`
}

// VerifyOutput is the verify task's output: one result per check run.
type VerifyOutput struct {
	V      int           `json:"v"`
	Checks []CheckResult `json:"checks"`
}

// checkArgsVersion accepts a task argument's version: Version, or 0 for
// arguments an operator wrote without one.
func checkArgsVersion(v int) error {
	if v == 0 {
		return nil
	}
	return checkVersion(v)
}

func (a *VerifyArgs) Validate() error {
	if err := checkArgsVersion(a.V); err != nil {
		return err
	}
	switch a.Scope {
	case "", ScopeAll, ScopeNode, ScopeCluster:
	default:
		return fmt.Errorf("scope: %q is not node, cluster or all", a.Scope)
	}
	if err := validNames("layers", a.Layers, ValidLayerName); err != nil {
		return err
	}
	if a.Require != nil {
		if err := validNames("require.layers", a.Require.Layers, ValidLayerName); err != nil {
			return err
		}
		if err := validNames("require.checks", a.Require.Checks, ValidCheckName); err != nil {
			return err
		}
	}
	if err := validNames("exclude", a.Exclude, ValidCheckName); err != nil {
		return err
	}
	return validNames("checks", a.Checks, ValidCheckName)
}

func validNames(field string, names []string, valid func(string) error) error {
	if len(names) > maxListItems {
		return fmt.Errorf("%s: %d names, at most %d", field, len(names), maxListItems)
	}
	for i, n := range names {
		if err := valid(n); err != nil {
			return fmt.Errorf("%s[%d]: %w", field, i, err)
		}
	}
	return nil
}

func (o *VerifyOutput) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if o.Checks == nil {
		return fmt.Errorf("checks: missing")
	}
	for i := range o.Checks {
		if err := o.Checks[i].validate(); err != nil {
			return fmt.Errorf("checks[%d]: %w", i, err)
		}
	}
	return nil
}

// validate checks one check result as an agent reports it.
func (c *CheckResult) validate() error {
	if c.Name == "" || len(c.Name) > MaxNameLen {
		return fmt.Errorf("name: want 1 to %d characters, got %q", MaxNameLen, c.Name)
	}
	if !ValidCheckStatus(c.Status) {
		return fmt.Errorf("status: %q is not one of pass, warn, fail, skipped, unknown, not_configured", c.Status)
	}
	if c.Passed && c.Status != CheckPass && c.Status != CheckWarn {
		return fmt.Errorf("passed: true with status %q (only pass and warn pass)", c.Status)
	}
	if c.DurationMS < 0 {
		return fmt.Errorf("duration_ms: negative")
	}
	// The layer names a node reports become the controller's per-cluster
	// state, metric labels and fleet view rows: held to the one alphabet.
	if err := ValidLayerName(c.Layer); err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	return nil
}
