package messages

import "encoding/json"

// Payloads of setup: the step task (kind "step") that runs one step of the
// fixed registry in package steps on an agent, and the record of a setup
// run that the controller keeps in JetStream and `controller setup status`
// prints.

// Step operations.
const (
	StepOpPlan  = "plan"  // observe and say what apply would do; changes nothing
	StepOpApply = "apply" // bring the observed state to the spec
	StepOpUndo  = "undo"  // put back what an apply of this run changed
	StepOpCheck = "check" // prerequisites only
)

// Plan actions a step reports.
const (
	ActionCreate    = "create"
	ActionUpdate    = "update"
	ActionUnchanged = "unchanged"
	ActionBlocked   = "blocked"
)

// Step error classes: how the controller treats a failed step.
const (
	StepErrRetryable = "retryable" // timeouts, refused connections, conflicts: retried with backoff
	StepErrConfig    = "config"    // the spec or a setting is wrong: fails at once with what to fix
	StepErrBlocked   = "blocked"   // a prerequisite is missing: the fix is a command
	StepErrFailed    = "failed"    // anything else
)

// StepArgs are the arguments of the step task.
type StepArgs struct {
	V    int    `json:"v,omitempty"`
	Step string `json:"step"`
	Op   string `json:"op"`
	// Cluster is the spec of the node's cluster (secret references only).
	Cluster FleetCluster `json:"cluster"`
	// Undo is what the apply being undone returned (StepOutput.Undo).
	Undo json.RawMessage `json:"undo,omitempty"`
	// Inputs are non-secret values earlier steps of the run produced for
	// this one (a Headscale user id, a node id), by name.
	Inputs map[string]string `json:"inputs,omitempty"`
}

// StepOutput is the step task's output.
type StepOutput struct {
	V      int    `json:"v"`
	Step   string `json:"step"`
	Op     string `json:"op"`
	Action string `json:"action,omitempty"` // plan and apply: create|update|unchanged|blocked
	// Diff is one line saying what changes ("route 10.1.0.0/24 added").
	Diff string `json:"diff,omitempty"`
	// Blocked names what is missing and the exact command that fixes it.
	Blocked string `json:"blocked,omitempty"`
	// ErrClass classifies a failure (StepErr*); empty on success.
	ErrClass string `json:"err_class,omitempty"`
	Error    string `json:"error,omitempty"`
	// Undo is what Undo needs to put back this apply's change (previous
	// values); never a secret.
	Undo json.RawMessage `json:"undo,omitempty"`
	// Outputs are non-secret values for later steps (see StepArgs.Inputs).
	Outputs map[string]string `json:"outputs,omitempty"`
}

// Setup run statuses.
const (
	RunRunning    = "running"
	RunSucceeded  = "succeeded"
	RunFailed     = "failed"
	RunRolledBack = "rolled_back"
)

// SetupRun is the record of one setup run: the JSON that `controller setup
// apply --json` and `setup status --json` print.
type SetupRun struct {
	V      int          `json:"v"`
	RunID  string       `json:"run_id"`
	Status string       `json:"status"`
	Layers []SetupLayer `json:"layers"`
}

// SetupLayer is one layer of a run.
type SetupLayer struct {
	Name         string          `json:"name"`
	Status       string          `json:"status"`
	Steps        []SetupStep     `json:"steps"`
	Verification json.RawMessage `json:"verification,omitempty"`
}

// SetupStep is one step on one node (or once for a cluster) in a run.
type SetupStep struct {
	Name       string `json:"name"`
	Node       string `json:"node"`
	Cluster    string `json:"cluster"`
	Action     string `json:"action"`
	Outcome    string `json:"outcome"`
	Attempts   int    `json:"attempts"`
	DurationMS int64  `json:"duration_ms"`
	Error      string `json:"error"`
}
