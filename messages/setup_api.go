package messages

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// The setup API (mgn.api.setup.*) and the setup progress event
// (mgn.evt.setup). The spec travels parsed (package fleet parses and
// validates the file on the operator's side; the controller validates it
// again).

// API verbs of setup.
const (
	APISetupPlan   = "setup.plan"
	APISetupApply  = "setup.apply"
	APISetupStatus = "setup.status"
)

// SetupEventKind is the event kind of setup progress: mgn.evt.setup.
const SetupEventKind = "setup"

// Bounds of setup payloads.
const (
	// MaxStepUndoBytes bounds StepArgs.Undo and StepOutput.Undo.
	MaxStepUndoBytes = 64 << 10
	// MaxStepValues bounds StepArgs.Inputs and StepOutput.Outputs, and
	// MaxStepValueBytes each value.
	MaxStepValues     = 64
	MaxStepValueBytes = 4096
	// MaxStepText bounds Diff, Blocked and Error of a step's output.
	MaxStepText = 1024
	// MaxSetupRows bounds a plan's rows and a run's steps per layer.
	MaxSetupRows = 20000
	// MaxSetupStepTimeout bounds how long one step task may run.
	MaxSetupStepTimeout = 30 * time.Minute
)

// SetupRequest asks for a plan or an apply of a spec, optionally one
// cluster and one layer.
type SetupRequest struct {
	V       int    `json:"v"`
	Spec    Fleet  `json:"spec"`
	Cluster string `json:"cluster,omitempty"`
	Layer   string `json:"layer,omitempty"`
	// StepTimeout is each step task's deadline (Go duration); default 5m.
	StepTimeout string `json:"step_timeout,omitempty"`
}

// SetupPlanRow is one step on one target in a plan.
type SetupPlanRow struct {
	Cluster string `json:"cluster"`
	Layer   string `json:"layer"`
	Step    string `json:"step"`
	Node    string `json:"node"`
	Action  string `json:"action"` // create|update|unchanged|blocked, or "error"
	Diff    string `json:"diff,omitempty"`
	Blocked string `json:"blocked,omitempty"`
	Error   string `json:"error,omitempty"`
}

// SetupPlanReply is a plan: what apply would do.
type SetupPlanReply struct {
	V    int            `json:"v"`
	Rows []SetupPlanRow `json:"rows"`
}

// SetupApplyReply names the run an apply started; follow it with
// setup.status.
type SetupApplyReply struct {
	V     int    `json:"v"`
	RunID string `json:"run_id"`
}

// SetupStatusRequest asks for a run (RunID "" is the newest).
type SetupStatusRequest struct {
	V     int    `json:"v"`
	RunID string `json:"run_id,omitempty"`
}

// SetupStatusReply is a run and, while it runs, its progress.
type SetupStatusReply struct {
	V        int            `json:"v"`
	Run      SetupRun       `json:"run"`
	Progress *SetupProgress `json:"progress,omitempty"`
}

// SetupProgress is where a run is: per cluster, its layer, steps done of
// total, the step running on each node, elapsed and the ETA from recorded
// step durations. It is also the payload of the setup event.
type SetupProgress struct {
	V         int               `json:"v"`
	RunID     string            `json:"run_id"`
	Status    string            `json:"status"`
	ElapsedMS int64             `json:"elapsed_ms"`
	ETAMS     int64             `json:"eta_ms"` // -1 when unknown
	Clusters  []ClusterProgress `json:"clusters"`
}

// ClusterProgress is one cluster's part of SetupProgress.
type ClusterProgress struct {
	Cluster string `json:"cluster"`
	Layer   string `json:"layer"`
	Done    int    `json:"done"`  // steps of the layer done
	Total   int    `json:"total"` // steps of the layer
	// Running is the step running on each node (node -> step).
	Running map[string]string `json:"running,omitempty"`
}

// ValidRunID checks a setup run id (a subject-safe token).
func ValidRunID(s string) error {
	if err := ValidTaskID(s); err != nil {
		return fmt.Errorf("run id: %w", err)
	}
	return nil
}

func validStepName(field, s string) error {
	if err := ValidCheckName(s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func validSetupLayer(l string) error {
	switch l {
	case "", LayerNetwork, LayerCluster, LayerDatabase, LayerApplication:
		return nil
	}
	return fmt.Errorf("layer: %q is not one of network, cluster, database, application", l)
}

func (r *SetupRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := optionalName("cluster", r.Cluster, ValidClusterName); err != nil {
		return err
	}
	if err := validSetupLayer(r.Layer); err != nil {
		return err
	}
	if r.StepTimeout != "" {
		if d, err := time.ParseDuration(r.StepTimeout); err != nil || d <= 0 || d > MaxSetupStepTimeout {
			return fmt.Errorf("step_timeout: %q is not a duration between 0 and %v", r.StepTimeout, MaxSetupStepTimeout)
		}
	}
	// The spec's own rules are package fleet's (fleet.Validate), which
	// the controller runs on it.
	return nil
}

func (r *SetupPlanReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Rows) > MaxSetupRows {
		return fmt.Errorf("rows: %d, at most %d", len(r.Rows), MaxSetupRows)
	}
	return nil
}

func (r *SetupApplyReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	return ValidRunID(r.RunID)
}

func (r *SetupStatusRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.RunID != "" {
		return ValidRunID(r.RunID)
	}
	return nil
}

func (r *SetupStatusReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := r.Run.Validate(); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if r.Progress != nil {
		return r.Progress.Validate()
	}
	return nil
}

func (p *SetupProgress) Validate() error {
	if err := checkVersion(p.V); err != nil {
		return err
	}
	if err := ValidRunID(p.RunID); err != nil {
		return err
	}
	if len(p.Clusters) > MaxClusters {
		return fmt.Errorf("clusters: %d, at most %d", len(p.Clusters), MaxClusters)
	}
	for i, c := range p.Clusters {
		if err := ValidClusterName(c.Cluster); err != nil {
			return fmt.Errorf("clusters[%d]: %w", i, err)
		}
		if len(c.Running) > MaxSetupRows {
			return fmt.Errorf("clusters[%d].running: too many", i)
		}
	}
	return nil
}

func (r *SetupRun) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := ValidRunID(r.RunID); err != nil {
		return err
	}
	switch r.Status {
	case RunRunning, RunSucceeded, RunFailed, RunRolledBack:
	default:
		return fmt.Errorf("status: %q is not running, succeeded, failed or rolled_back", r.Status)
	}
	for i, l := range r.Layers {
		if err := validSetupLayer(l.Name); err != nil || l.Name == "" {
			return fmt.Errorf("layers[%d]: %q is not a setup layer", i, l.Name)
		}
		if len(l.Steps) > MaxSetupRows {
			return fmt.Errorf("layers[%d].steps: %d, at most %d", i, len(l.Steps), MaxSetupRows)
		}
	}
	return nil
}

func (a *StepArgs) Validate() error {
	if err := checkVersion(a.V); err != nil {
		return err
	}
	if err := validStepName("step", a.Step); err != nil {
		return err
	}
	switch a.Op {
	case StepOpPlan, StepOpApply, StepOpUndo, StepOpCheck:
	default:
		return fmt.Errorf("op: %q is not plan, apply, undo or check", a.Op)
	}
	if err := ValidClusterName(a.Cluster.Name); err != nil {
		return fmt.Errorf("cluster.name: %w", err)
	}
	if len(a.Undo) > MaxStepUndoBytes {
		return fmt.Errorf("undo: %d bytes, at most %d", len(a.Undo), MaxStepUndoBytes)
	}
	if len(a.Undo) > 0 && !json.Valid(a.Undo) {
		return fmt.Errorf("undo: not JSON")
	}
	return validValues("inputs", a.Inputs)
}

func validValues(field string, m map[string]string) error {
	if len(m) > MaxStepValues {
		return fmt.Errorf("%s: %d values, at most %d", field, len(m), MaxStepValues)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := ValidSealedKey(k); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		if len(m[k]) > MaxStepValueBytes {
			return fmt.Errorf("%s.%s: %d bytes, at most %d", field, k, len(m[k]), MaxStepValueBytes)
		}
	}
	return nil
}

func (o *StepOutput) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if err := validStepName("step", o.Step); err != nil {
		return err
	}
	switch o.Op {
	case StepOpPlan, StepOpApply, StepOpUndo, StepOpCheck:
	default:
		return fmt.Errorf("op: %q is not plan, apply, undo or check", o.Op)
	}
	switch o.Action {
	case "", ActionCreate, ActionUpdate, ActionUnchanged, ActionBlocked:
	default:
		return fmt.Errorf("action: %q is not create, update, unchanged or blocked", o.Action)
	}
	switch o.ErrClass {
	case "", StepErrRetryable, StepErrConfig, StepErrBlocked, StepErrFailed:
	default:
		return fmt.Errorf("err_class: %q is not retryable, config, blocked or failed", o.ErrClass)
	}
	for _, f := range []struct{ name, v string }{{"diff", o.Diff}, {"blocked", o.Blocked}, {"error", o.Error}} {
		if err := boundedString(f.name, f.v, MaxStepText); err != nil {
			return err
		}
	}
	if len(o.Undo) > MaxStepUndoBytes {
		return fmt.Errorf("undo: %d bytes, at most %d", len(o.Undo), MaxStepUndoBytes)
	}
	if len(o.Undo) > 0 && !json.Valid(o.Undo) {
		return fmt.Errorf("undo: not JSON")
	}
	return validValues("outputs", o.Outputs)
}
