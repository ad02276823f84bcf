// Package steps is the fixed registry of setup steps and their families:
// what an agent may change on its node or cluster to bring it to the fleet
// spec. It is the acting twin of package checks. A step is a name, a
// layer, a scope, the steps it comes after, prerequisites, and Plan,
// Apply and Undo. Each family lives whole in its own file (network.go,
// cluster.go, talos.go, addons.go, database.go, application.go) and all
// are listed in [Builtin], so what setup will ever do on a node is in one
// place. There is deliberately no step that runs an arbitrary command.
//
// Steps are idempotent for real: Plan observes and says
// create|update|unchanged|blocked with a one-line diff, and Apply with
// nothing to do writes nothing. The step task in package tasks runs them
// on an agent; the controller's setup runner orders them, retries the
// retryable failures, undoes a failed layer and verifies each layer before
// the next.
package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// Scope says where a step runs: on every node it applies to, or once per
// cluster on one controlplane agent (as cluster-scoped checks do).
type Scope = meta.Scope

const (
	ScopeNode    = meta.ScopeNode
	ScopeCluster = meta.ScopeCluster
)

// Env is what a step may know about the node it runs on.
type Env struct {
	Node    string
	Cluster string
	Role    string
	Labels  map[string]string
	Log     *zap.Logger
	// Settings are the agent's settings (KUBECONFIG, TS_SOCKET, ...).
	Settings config.Settings
	// StateDir is the agent's private state directory (mode 0700): where
	// a step keeps what it fetched for later use (a kubeconfig), 0600.
	StateDir string
	// Spec is the node's cluster in the fleet spec.
	Spec messages.FleetCluster
	// Inputs are values earlier steps of the run produced.
	Inputs map[string]string
	// Secret resolves a secret reference on this node (env:NAME from the
	// agent's environment and settings, file:PATH from its disk). The
	// value must never be logged or returned.
	Secret func(ref messages.SecretRef) (string, error)
	// Sealed are secret inputs the controller prepared for this step
	// (Step.Seal): a Talos machine config, the cluster's kubeconfig. They
	// travel in Task.Sealed, which is never stored.
	Sealed map[string]string
}

// SealEnv is what a step's Seal function sees on the controller.
type SealEnv struct {
	Spec messages.FleetCluster
	Node messages.FleetNode // the node the step will run on
	// Dir is the controller's private directory for this cluster's
	// secrets (mode 0700, files 0600, under its data dir): where a Talos
	// secrets bundle is kept.
	Dir string
	// Saved returns a sealed output an earlier step returned
	// (Applied.Sealed), which the controller keeps in Dir.
	Saved func(key string) (string, bool)
}

// Plan is what a step would do.
type Plan struct {
	Action string // messages.Action*
	Diff   string // one line: what changes
	// Blocked, when Action is blocked, names what is missing and the exact
	// command that fixes it.
	Blocked string
}

// Applied is what Apply did.
type Applied struct {
	Action string // what was done: create, update or unchanged
	Diff   string
	// Undo is what Undo needs to put the change back (previous values; no
	// secrets). Nil when there is nothing to undo.
	Undo any
	// Outputs are non-secret values for later steps.
	Outputs map[string]string
	// Sealed are secret outputs (a kubeconfig fetched after bootstrap):
	// they travel in Result.Sealed, never stored in JetStream; the
	// controller keeps them in the cluster's secrets dir (SealEnv.Dir) for
	// later steps' Seal.
	Sealed map[string]string
}

// Step is one setup step.
type Step struct {
	// Name identifies the step in runs and plans: lower_snake_case, a
	// contract.
	Name string
	// Layer is the layer it sets up (messages.LayerNetwork, LayerCluster,
	// LayerDatabase, LayerApplication).
	Layer string
	// Description says in one line what it brings about.
	Description string
	Scope       Scope
	// Roles are the node roles it runs on (node scope); empty means all.
	Roles []string
	// After names the steps of the same layer that must have applied
	// first.
	After []string
	// Critical: a failure undoes the layer's completed steps of this run.
	Critical bool
	// Prereqs checks what the node needs (binaries, sockets, endpoints,
	// permissions); a missing one is returned as a *BlockedError naming
	// the command that fixes it.
	Prereqs func(ctx context.Context, env *Env) error
	Plan    func(ctx context.Context, env *Env) (Plan, error)
	Apply   func(ctx context.Context, env *Env) (Applied, error)
	// Undo puts back what Apply changed, from Applied.Undo.
	Undo func(ctx context.Context, env *Env, undo json.RawMessage) error
	// Seal, if set, runs on the controller before each dispatch of the
	// step and returns its secret inputs (Env.Sealed).
	Seal func(ctx context.Context, se *SealEnv) (map[string]string, error)
	// SealedOutputs are the only keys this step's Applied.Sealed may
	// carry; the controller keeps no others (a node must not be able to
	// plant a kubeconfig through any step but the one that fetches it).
	SealedOutputs []string
}

// ConfigError is a failure that retrying cannot fix: the spec or a
// setting is wrong. Fix says what to change.
type ConfigError struct {
	Err error
	Fix string
}

func (e *ConfigError) Error() string {
	if e.Fix == "" {
		return e.Err.Error()
	}
	return fmt.Sprintf("%v (fix: %s)", e.Err, e.Fix)
}
func (e *ConfigError) Unwrap() error { return e.Err }

// Configf returns a *ConfigError.
func Configf(fix, format string, a ...any) error {
	return &ConfigError{Err: fmt.Errorf(format, a...), Fix: fix}
}

// BlockedError is a missing prerequisite and the command that fixes it.
type BlockedError struct {
	Missing string
	Command string
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("%s; run: %s", e.Missing, e.Command)
}

// Blocked returns a *BlockedError.
func Blocked(missing, command string) error { return &BlockedError{Missing: missing, Command: command} }

// Classify maps an error to its messages.StepErr* class: config and
// blocked errors by type, network-class errors (timeouts, refused
// connections, resets), Kubernetes conflicts and gRPC Unavailable as
// retryable, anything else failed.
func Classify(err error) string {
	var ce *ConfigError
	var be *BlockedError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ce):
		return messages.StepErrConfig
	case errors.As(err, &be):
		return messages.StepErrBlocked
	case retryable(err):
		return messages.StepErrRetryable
	}
	return messages.StepErrFailed
}

// Registry is the set of steps an agent will run.
type Registry struct {
	list []Step
	m    map[string]*Step
}

// NewRegistry checks a set of steps as a whole (valid unique names, known
// layers and scopes, After within the layer, no cycles) and returns them
// in order.
func NewRegistry(list ...Step) (*Registry, error) {
	r := &Registry{list: list, m: make(map[string]*Step, len(list))}
	for i := range r.list {
		s := &r.list[i]
		if err := messages.ValidCheckName(s.Name); err != nil {
			return nil, fmt.Errorf("step %q: name: %w", s.Name, err)
		}
		if !slices.Contains(Layers, s.Layer) {
			return nil, fmt.Errorf("step %q: layer %q is not one of %v", s.Name, s.Layer, Layers)
		}
		if s.Scope != ScopeNode && s.Scope != ScopeCluster {
			return nil, fmt.Errorf("step %q: scope %q is neither node nor cluster", s.Name, s.Scope)
		}
		if s.Plan == nil || s.Apply == nil {
			return nil, fmt.Errorf("step %q: Plan and Apply are required", s.Name)
		}
		if _, dup := r.m[s.Name]; dup {
			return nil, fmt.Errorf("step %q registered twice", s.Name)
		}
		r.m[s.Name] = s
	}
	for i := range r.list {
		s := &r.list[i]
		for _, a := range s.After {
			d, ok := r.m[a]
			switch {
			case !ok:
				return nil, fmt.Errorf("step %q: after: unknown step %q", s.Name, a)
			case d.Layer != s.Layer:
				return nil, fmt.Errorf("step %q: after: %q is in layer %s, not %s", s.Name, a, d.Layer, s.Layer)
			case slices.IndexFunc(r.list, func(x Step) bool { return x.Name == a }) > i:
				// Registration order is run order within a layer.
				return nil, fmt.Errorf("step %q: after: %q is registered later", s.Name, a)
			}
		}
	}
	return r, nil
}

// Layers are the layers setup brings up, in order: each is verified
// before the next starts.
var Layers = []string{messages.LayerNetwork, messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication}

// Lookup finds a step by name.
func (r *Registry) Lookup(name string) (*Step, bool) {
	s, ok := r.m[name]
	return s, ok
}

// Steps lists the steps in run order.
func (r *Registry) Steps() []Step { return slices.Clone(r.list) }

// Layer lists one layer's steps in run order.
func (r *Registry) Layer(layer string) []Step {
	var out []Step
	for _, s := range r.list {
		if s.Layer == layer {
			out = append(out, s)
		}
	}
	return out
}

// AppliesTo reports whether a node-scoped step runs on a node of role.
func (s *Step) AppliesTo(role string) bool {
	return len(s.Roles) == 0 || slices.Contains(s.Roles, role)
}
