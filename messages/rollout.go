package messages

import (
	"fmt"
	"strings"
	"time"
)

// Rollouts (mgn.api.rollout.*, docs/ROLLOUT.md): a changed fleet spec
// rolled out in waves of clusters and batches of nodes, each batch gated
// on the verification of the layers the change touches, with a failure
// budget, pause/resume/abort and rollback to the previous spec revision.

// API verbs of rollouts.
const (
	APIRolloutStart  = "rollout.start"
	APIRolloutStatus = "rollout.status"
	APIRolloutList   = "rollout.list"
	APIRolloutPause  = "rollout.pause"
	APIRolloutResume = "rollout.resume"
	APIRolloutAbort  = "rollout.abort"
	APIRolloutDiff   = "rollout.diff"
)

// RolloutEventKind is the event kind of rollout progress: mgn.evt.rollout.
const RolloutEventKind = "rollout"

// Rollout statuses.
const (
	RolloutRunning    = "running"
	RolloutPaused     = "paused"
	RolloutSucceeded  = "succeeded"
	RolloutFailed     = "failed"
	RolloutRolledBack = "rolled_back"
	RolloutAborted    = "aborted"
)

// Node statuses in a rollout.
const (
	RolloutNodePending    = "pending"
	RolloutNodeUpdating   = "updating"
	RolloutNodeHealthy    = "healthy"
	RolloutNodeFailed     = "failed"
	RolloutNodeRolledBack = "rolled_back"
	RolloutNodeSkipped    = "skipped"
)

// Batch and wave statuses.
const (
	BatchPending    = "pending"
	BatchUpdating   = "updating"
	BatchGating     = "gating"
	BatchHealthy    = "healthy"
	BatchFailed     = "failed"
	BatchRolledBack = "rolled_back"
	BatchAborted    = "aborted"

	WavePending = "pending"
	WaveRunning = "running"
	WaveHealthy = "healthy"
	WaveFailed  = "failed"

	GatePending = "pending"
	GateWaiting = "waiting" // verifying until healthy, within the healthy deadline
	GateHolding = "holding" // healthy, held for min-healthy
	GatePassed  = "passed"
	GateFailed  = "failed"
	GateSkipped = "skipped" // nothing to gate (no node updated)
)

// On-failure policies.
const (
	OnFailureRollback = "rollback"
	OnFailurePause    = "pause"
)

// Rollout defaults and bounds.
const (
	DefaultRolloutMinHealthy      = 10 * time.Second
	DefaultRolloutHealthyDeadline = 2 * time.Minute
	MaxRolloutDuration            = 24 * time.Hour
	MaxRolloutBatches             = 20000
	MaxRolloutNodes               = 20000
	MaxRolloutWaves               = 1024
	MaxRolloutList                = 1000
	MaxRolloutDiffRows            = 5000
	MaxRolloutText                = 1024
)

// RolloutStartRequest starts a rollout of Spec.
type RolloutStartRequest struct {
	V    int   `json:"v"`
	Spec Fleet `json:"spec"`
	// Waves is "staging;eu-1,eu-2;us-1": waves separated by ';', clusters
	// by ','. Empty means one wave per cluster in spec order.
	Waves       string `json:"waves,omitempty"`
	MaxParallel int    `json:"max_parallel,omitempty"` // nodes per batch within a cluster; 0 = 1
	// Canary is how many nodes go first in each wave; nil = 1.
	Canary          *int   `json:"canary,omitempty"`
	MaxFailed       int    `json:"max_failed,omitempty"`
	MinHealthy      string `json:"min_healthy,omitempty"`      // Go duration; default 10s
	HealthyDeadline string `json:"healthy_deadline,omitempty"` // Go duration; default 2m
	OnFailure       string `json:"on_failure,omitempty"`       // rollback (default) | pause
	SkipOffline     bool   `json:"skip_offline,omitempty"`
	StepTimeout     string `json:"step_timeout,omitempty"` // each step task; default 5m
}

// RolloutStartReply names the rollout started.
type RolloutStartReply struct {
	V  int    `json:"v"`
	ID string `json:"id"`
}

// RolloutRequest names a rollout (status, pause, resume, abort); ID ""
// is the newest (status only).
type RolloutRequest struct {
	V  int    `json:"v"`
	ID string `json:"id,omitempty"`
}

// RolloutListRequest lists rollouts.
type RolloutListRequest struct {
	V int `json:"v"`
}

// Rollout is a rollout as `controller rollout status --json` prints it.
type Rollout struct {
	ID           string         `json:"id"`
	Status       string         `json:"status"`
	FromRevision int64          `json:"from_revision"`
	ToRevision   int64          `json:"to_revision"`
	Waves        []RolloutWave  `json:"waves"`
	Batches      []RolloutBatch `json:"batches"`
	Nodes        []RolloutNode  `json:"nodes"`
}

// RolloutWave is one wave of clusters.
type RolloutWave struct {
	Clusters []string `json:"clusters"`
	Status   string   `json:"status"`
}

// RolloutBatch is one batch of nodes of one cluster.
type RolloutBatch struct {
	Cluster  string      `json:"cluster"`
	Nodes    []string    `json:"nodes"`
	Status   string      `json:"status"`
	Started  *time.Time  `json:"started"`
	Finished *time.Time  `json:"finished"`
	Gate     RolloutGate `json:"gate"`
}

// RolloutGate is a batch's health gate.
type RolloutGate struct {
	Status       string   `json:"status"`
	ChecksFailed []string `json:"checks_failed"`
}

// RolloutNode is one node of a rollout.
type RolloutNode struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	Status  string `json:"status"`
}

// RolloutDiagnosis says why a node failed: the step or gate failure and
// the controller's diagnosis (root cause, fix).
type RolloutDiagnosis struct {
	Node        string `json:"node"`
	Cluster     string `json:"cluster"`
	Failure     string `json:"failure"`
	RootCause   string `json:"root_cause,omitempty"`
	Fix         string `json:"fix,omitempty"`
	DiagnosisID string `json:"diagnosis_id,omitempty"`
}

// RolloutStep is one step run on one node (or a cluster) in a rollout.
type RolloutStep struct {
	Batch      int    `json:"batch"` // index into Batches; -1 for a rollback outside a batch
	Step       string `json:"step"`
	Node       string `json:"node"`
	Cluster    string `json:"cluster"`
	Op         string `json:"op"` // apply, or rollback
	Action     string `json:"action"`
	Outcome    string `json:"outcome"`
	Attempts   int    `json:"attempts"`
	DurationMS int64  `json:"duration_ms"`
	Error      string `json:"error,omitempty"`
}

// RolloutProgress is where a rollout is: the live view's line.
type RolloutProgress struct {
	V         int    `json:"v"`
	ID        string `json:"id"`
	Status    string `json:"status"`
	Wave      int    `json:"wave"`  // 1-based, 0 before the first
	Waves     int    `json:"waves"` // total
	Batch     int    `json:"batch"` // 1-based
	Batches   int    `json:"batches"`
	Cluster   string `json:"cluster,omitempty"`
	Updating  int    `json:"updating"`
	Healthy   int    `json:"healthy"`
	Failed    int    `json:"failed"`
	Skipped   int    `json:"skipped"`
	Nodes     int    `json:"nodes"`
	Gate      string `json:"gate,omitempty"`
	ElapsedMS int64  `json:"elapsed_ms"`
	ETAMS     int64  `json:"eta_ms"` // -1 when unknown
	Control   string `json:"control,omitempty"`
}

// RolloutStatusReply is a rollout, its record's extras, and while it
// runs, its progress.
type RolloutStatusReply struct {
	V         int                `json:"v"`
	Rollout   Rollout            `json:"rollout"`
	Steps     []RolloutStep      `json:"steps,omitempty"`
	Diagnoses []RolloutDiagnosis `json:"diagnoses,omitempty"`
	Reason    string             `json:"reason,omitempty"` // why it stopped
	Progress  *RolloutProgress   `json:"progress,omitempty"`
}

// RolloutSummary is one line of rollout list.
type RolloutSummary struct {
	ID           string    `json:"id"`
	Status       string    `json:"status"`
	FromRevision int64     `json:"from_revision"`
	ToRevision   int64     `json:"to_revision"`
	Clusters     []string  `json:"clusters"`
	Started      time.Time `json:"started"`
	Reason       string    `json:"reason,omitempty"`
}

// RolloutListReply lists rollouts, newest first.
type RolloutListReply struct {
	V        int              `json:"v"`
	Rollouts []RolloutSummary `json:"rollouts"`
}

// RolloutDiffRequest compares two spec revisions.
type RolloutDiffRequest struct {
	V    int   `json:"v"`
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// RolloutDiffRow is one changed field of one cluster ("" cluster: the
// spec's own fields). From/To are JSON; "" means absent.
type RolloutDiffRow struct {
	Cluster string `json:"cluster"`
	Field   string `json:"field"`
	From    string `json:"from"`
	To      string `json:"to"`
}

// RolloutDiffReply is a diff of two revisions.
type RolloutDiffReply struct {
	V        int              `json:"v"`
	From     int64            `json:"from"`
	To       int64            `json:"to"`
	FromHash string           `json:"from_hash"`
	ToHash   string           `json:"to_hash"`
	Rows     []RolloutDiffRow `json:"rows"`
}

// SpecRevision is one stored spec revision (KV mgn_spec_revisions).
type SpecRevision struct {
	Revision int64     `json:"revision"`
	Hash     string    `json:"hash"`
	Source   string    `json:"source"` // setup:RUN or rollout:ID
	Created  time.Time `json:"created"`
	Spec     Fleet     `json:"spec"`
}

// ParseWaves splits a --waves value into waves of cluster names.
func ParseWaves(s string) ([][]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out [][]string
	seen := map[string]bool{}
	for i, w := range strings.Split(s, ";") {
		var wave []string
		for _, c := range strings.Split(w, ",") {
			c = strings.TrimSpace(c)
			if err := ValidClusterName(c); err != nil {
				return nil, fmt.Errorf("waves: wave %d: cluster %q: %w", i+1, c, err)
			}
			if seen[c] {
				return nil, fmt.Errorf("waves: cluster %q is in more than one wave", c)
			}
			seen[c] = true
			wave = append(wave, c)
		}
		out = append(out, wave)
	}
	if len(out) > MaxRolloutWaves {
		return nil, fmt.Errorf("waves: %d, at most %d", len(out), MaxRolloutWaves)
	}
	return out, nil
}

// ValidRolloutID checks a rollout id.
func ValidRolloutID(s string) error {
	if err := ValidTaskID(s); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	return nil
}

func validDurationField(field, s string, max time.Duration) error {
	if s == "" {
		return nil
	}
	if d, err := time.ParseDuration(s); err != nil || d < 0 || d > max {
		return fmt.Errorf("%s: %q is not a duration between 0 and %v", field, clip(s), max)
	}
	return nil
}

func (r *RolloutStartRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if _, err := ParseWaves(r.Waves); err != nil {
		return err
	}
	if r.MaxParallel < 0 || r.MaxParallel > MaxRolloutNodes {
		return fmt.Errorf("max_parallel: %d is not between 1 and %d", r.MaxParallel, MaxRolloutNodes)
	}
	if r.Canary != nil && (*r.Canary < 0 || *r.Canary > MaxRolloutNodes) {
		return fmt.Errorf("canary: %d is not between 0 and %d", *r.Canary, MaxRolloutNodes)
	}
	if r.MaxFailed < 0 || r.MaxFailed > MaxRolloutNodes {
		return fmt.Errorf("max_failed: %d is not between 0 and %d", r.MaxFailed, MaxRolloutNodes)
	}
	if err := validDurationField("min_healthy", r.MinHealthy, MaxRolloutDuration); err != nil {
		return err
	}
	if err := validDurationField("healthy_deadline", r.HealthyDeadline, MaxRolloutDuration); err != nil {
		return err
	}
	if err := validDurationField("step_timeout", r.StepTimeout, MaxSetupStepTimeout); err != nil {
		return err
	}
	switch r.OnFailure {
	case "", OnFailureRollback, OnFailurePause:
	default:
		return fmt.Errorf("on_failure: %q is not rollback or pause", clip(r.OnFailure))
	}
	// The spec's own rules are package fleet's, which the controller runs.
	return nil
}

func (r *RolloutStartReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	return ValidRolloutID(r.ID)
}

func (r *RolloutRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.ID != "" {
		return ValidRolloutID(r.ID)
	}
	return nil
}

func (r *RolloutListRequest) Validate() error { return checkVersion(r.V) }

func (r *RolloutDiffRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.From < 1 || r.To < 1 {
		return fmt.Errorf("from/to: revisions start at 1 (got %d and %d)", r.From, r.To)
	}
	return nil
}

func validRolloutStatus(s string) error {
	switch s {
	case RolloutRunning, RolloutPaused, RolloutSucceeded, RolloutFailed, RolloutRolledBack, RolloutAborted:
		return nil
	}
	return fmt.Errorf("status: %q is not running, paused, succeeded, failed, rolled_back or aborted", clip(s))
}

func (r *Rollout) Validate() error {
	if err := ValidRolloutID(r.ID); err != nil {
		return err
	}
	if err := validRolloutStatus(r.Status); err != nil {
		return err
	}
	if r.FromRevision < 0 || r.ToRevision < 0 {
		return fmt.Errorf("revisions: negative")
	}
	if len(r.Waves) > MaxRolloutWaves {
		return fmt.Errorf("waves: %d, at most %d", len(r.Waves), MaxRolloutWaves)
	}
	if len(r.Batches) > MaxRolloutBatches {
		return fmt.Errorf("batches: %d, at most %d", len(r.Batches), MaxRolloutBatches)
	}
	if len(r.Nodes) > MaxRolloutNodes {
		return fmt.Errorf("nodes: %d, at most %d", len(r.Nodes), MaxRolloutNodes)
	}
	for i, n := range r.Nodes {
		switch n.Status {
		case RolloutNodePending, RolloutNodeUpdating, RolloutNodeHealthy, RolloutNodeFailed, RolloutNodeRolledBack, RolloutNodeSkipped:
		default:
			return fmt.Errorf("nodes[%d].status: %q is not a node status", i, clip(n.Status))
		}
	}
	for i, b := range r.Batches {
		if len(b.Nodes) > MaxRolloutNodes {
			return fmt.Errorf("batches[%d].nodes: too many", i)
		}
		if len(b.Gate.ChecksFailed) > MaxRolloutNodes {
			return fmt.Errorf("batches[%d].gate.checks_failed: too many", i)
		}
	}
	return nil
}

func (r *RolloutStatusReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := r.Rollout.Validate(); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if len(r.Steps) > MaxSetupRows || len(r.Diagnoses) > MaxRolloutNodes {
		return fmt.Errorf("steps/diagnoses: too many")
	}
	if err := boundedString("reason", r.Reason, 4*MaxRolloutText); err != nil {
		return err
	}
	if r.Progress != nil {
		return r.Progress.Validate()
	}
	return nil
}

func (p *RolloutProgress) Validate() error {
	if err := checkVersion(p.V); err != nil {
		return err
	}
	if err := ValidRolloutID(p.ID); err != nil {
		return err
	}
	return validRolloutStatus(p.Status)
}

func (r *RolloutListReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Rollouts) > MaxRolloutList {
		return fmt.Errorf("rollouts: %d, at most %d", len(r.Rollouts), MaxRolloutList)
	}
	for i, s := range r.Rollouts {
		if err := ValidRolloutID(s.ID); err != nil {
			return fmt.Errorf("rollouts[%d]: %w", i, err)
		}
		if err := validRolloutStatus(s.Status); err != nil {
			return fmt.Errorf("rollouts[%d]: %w", i, err)
		}
	}
	return nil
}

func (r *RolloutDiffReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Rows) > MaxRolloutDiffRows {
		return fmt.Errorf("rows: %d, at most %d", len(r.Rows), MaxRolloutDiffRows)
	}
	return nil
}

// clip shortens a refused value for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
