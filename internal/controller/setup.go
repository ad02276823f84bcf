package controller

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// The setup runner: `controller setup plan|apply|status` (docs/SETUP.md).
// A run brings the clusters of a fleet spec up layer by layer with the
// step task on the agents; clusters run side by side, each through its
// layers in order, each layer's steps in registry order, a node step on
// all its nodes at once. Every step is planned before it is applied, so a
// step re-run after a restart applies only what is still missing. The run
// record is written to mgn_setup_runs after every step.

// Setup buckets.
const (
	setupRunsBucket      = "mgn_setup_runs"
	setupDurationsBucket = "mgn_setup_durations"
)

// Step outcomes in a run, and per-cluster layer statuses.
const (
	outcomeApplied    = "applied"
	outcomeUnchanged  = "unchanged"
	outcomeFailed     = "failed"
	outcomeBlocked    = "blocked"
	outcomeUndone     = "undone"
	outcomeUndoFailed = "undo_failed"

	layerPending    = "pending"
	layerRunning    = "running"
	layerVerified   = "verified"
	layerUnhealthy  = "unhealthy"
	layerFailed     = "failed"
	layerRolledBack = "rolled_back"
	layerSkipped    = "skipped"
)

// setupAttempts is how often a retryable failure is tried; the backoff
// starts at Options.SetupBackoff (2 s) and doubles up to setupMaxBackoff.
const (
	setupAttempts   = 3
	setupMaxBackoff = 30 * time.Second
	// agentReconnectGrace is how long a resumed run waits for its agents:
	// an agent retries a lost controller with a backoff of up to 45 s.
	agentReconnectGrace = 45 * time.Second
)

// setupRecord is what is stored for a run: the run as printed, and what a
// restarted controller needs to resume it.
type setupRecord struct {
	Run         messages.SetupRun       `json:"run"`
	Spec        messages.Fleet          `json:"spec"` // secret references only
	SpecHash    string                  `json:"spec_hash"`
	Clusters    []string                `json:"clusters"`
	Layers      []string                `json:"layers"`
	StepTimeout time.Duration           `json:"step_timeout"`
	StartedAt   time.Time               `json:"started_at"`
	FinishedAt  time.Time               `json:"finished_at,omitzero"`
	Cursors     map[string]*setupCursor `json:"cursors"`
	// LayerStatus is each layer's status per cluster, and Verification
	// each layer's verification per cluster.
	LayerStatus  map[string]map[string]string               `json:"layer_status"`
	Verification map[string]map[string]layerVerificationRec `json:"verification"`
}

// setupCursor is where one cluster of a run is.
type setupCursor struct {
	Layer    int  `json:"layer"` // index into setupRecord.Layers
	Step     int  `json:"step"`  // index into the layer's steps: the next one, or the one in flight
	InFlight bool `json:"in_flight,omitempty"`
	// RollingBack: the step at Step failed critically and the layer is
	// being undone; a resumed run goes on undoing, never re-applies.
	RollingBack bool   `json:"rolling_back,omitempty"`
	Done        bool   `json:"done,omitempty"`
	Status      string `json:"status"`
	// Applied are this layer's applies, in order, for a rollback.
	Applied []appliedStep `json:"applied,omitempty"`
	// Outputs are the non-secret values steps returned (Inputs of later
	// steps).
	Outputs map[string]string `json:"outputs,omitempty"`
}

type appliedStep struct {
	Step string          `json:"step"`
	Node string          `json:"node"`
	Undo json.RawMessage `json:"undo,omitempty"`
}

type layerVerificationRec struct {
	ReportID string `json:"report_id,omitempty"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// liveRun is a run in progress in this controller.
type liveRun struct {
	mu      sync.Mutex
	rec     *setupRecord
	running map[string]map[string]string // cluster -> node -> step
	start   time.Time
	done    chan struct{}
	// resumed: this controller restarted the run; its agents may take
	// their reconnect backoff to come back.
	resumed bool
}

type setupRunner struct {
	c       *Controller
	steps   *steps.Registry
	runs    jetstream.KeyValue
	durs    jetstream.KeyValue
	backoff time.Duration
	log     *zap.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// started is when this controller started: a node counts as back
	// after a restart once it has sent a heartbeat since.
	started time.Time

	mu     sync.Mutex
	active map[string]string // cluster -> run id
	live   map[string]*liveRun
	avgMS  map[string]int64 // step -> average duration
}

func newSetupRunner(c *Controller, runs, durs jetstream.KeyValue) *setupRunner {
	r := &setupRunner{c: c, steps: c.opts.Steps, runs: runs, durs: durs, backoff: c.opts.SetupBackoff,
		log: c.log.Named("setup"), active: map[string]string{}, live: map[string]*liveRun{}, avgMS: map[string]int64{}, started: time.Now()}
	if r.steps == nil {
		r.steps = steps.Builtin()
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r
}

func newRunID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	// Microseconds after the second: "the newest run" is the greatest id,
	// and two runs can start within one second (a CLI test did).
	now = now.UTC()
	return fmt.Sprintf("s%s%06d-%s", now.Format("20060102T150405"), now.Nanosecond()/1000,
		strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])))
}

// resume loads step durations and restarts every run still running.
func (r *setupRunner) resume(ctx context.Context) error {
	if durs, err := kvEntries(ctx, r.c.js, r.durs.Bucket()); err == nil {
		for _, e := range durs {
			var d stepDuration
			if json.Unmarshal(e.Value, &d) == nil {
				r.avgMS[e.Key] = d.AvgMS
			}
		}
	}
	keys, err := kvKeys(ctx, r.c.js, r.runs.Bucket())
	if err != nil {
		return fmt.Errorf("list setup runs: %w", err)
	}
	for _, k := range keys {
		rec, err := r.load(ctx, k)
		if err != nil {
			r.log.Warn("skip unreadable setup run", zap.String("run", k), zap.Error(err))
			continue
		}
		r.mu.Lock()
		_, live := r.live[k]
		r.mu.Unlock()
		if rec.Run.Status != messages.RunRunning || live {
			continue // finished, or started here since activation
		}
		r.log.Info("resuming setup run", zap.String("run", k))
		r.startRun(rec, true)
	}
	return nil
}

func (r *setupRunner) load(ctx context.Context, id string) (*setupRecord, error) {
	e, err := r.runs.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var rec setupRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("setup run %s: %w", id, err)
	}
	return &rec, nil
}

// stop ends the runs' goroutines (a run stays running in the bucket and
// resumes at the next start).
func (r *setupRunner) stop() {
	r.cancel()
	r.wg.Wait()
}

// selection returns the clusters and layers a request covers.
func (r *setupRunner) selection(req messages.SetupRequest) ([]messages.FleetCluster, []string, error) {
	if err := fleet.Validate(&req.Spec); err != nil {
		return nil, nil, messages.Errorf(messages.CodeBadRequest, "fleet spec: %v", err)
	}
	spec := req.Spec
	fleet.Defaults(&spec)
	var clusters []messages.FleetCluster
	for _, c := range spec.Clusters {
		if req.Cluster == "" || c.Name == req.Cluster {
			clusters = append(clusters, c)
		}
	}
	if len(clusters) == 0 {
		return nil, nil, messages.Errorf(messages.CodeNotFound, "cluster %q is not in the spec", req.Cluster)
	}
	var layers []string
	for _, l := range steps.Layers {
		if req.Layer != "" && l != req.Layer {
			continue
		}
		if slices.ContainsFunc(clusters, func(c messages.FleetCluster) bool { return clusterWants(c, l) }) {
			layers = append(layers, l)
		}
	}
	if len(layers) == 0 {
		return nil, nil, messages.Errorf(messages.CodeBadRequest, "layer %q is not required by the selected clusters (require.layers)", req.Layer)
	}
	return clusters, layers, nil
}

func clusterWants(c messages.FleetCluster, layer string) bool {
	return len(c.Require.Layers) == 0 || slices.Contains(c.Require.Layers, layer)
}

// apply starts a run.
func (r *setupRunner) apply(ctx context.Context, req messages.SetupRequest) (string, error) {
	clusters, layers, err := r.selection(req)
	if err != nil {
		return "", err
	}
	timeout := messages.DefaultSetupStepTimeout
	if req.StepTimeout != "" {
		timeout, _ = time.ParseDuration(req.StepTimeout)
	}
	spec := req.Spec
	fleet.Defaults(&spec)
	now := time.Now().UTC()
	rec := &setupRecord{
		Run:  messages.SetupRun{V: messages.Version, RunID: newRunID(now), Status: messages.RunRunning},
		Spec: spec, SpecHash: fleet.Hash(&spec), Layers: layers, StepTimeout: timeout, StartedAt: now,
		Cursors: map[string]*setupCursor{}, LayerStatus: map[string]map[string]string{}, Verification: map[string]map[string]layerVerificationRec{},
	}
	for _, l := range layers {
		rec.Run.Layers = append(rec.Run.Layers, messages.SetupLayer{Name: l, Status: layerPending, Steps: []messages.SetupStep{}})
		rec.LayerStatus[l] = map[string]string{}
		rec.Verification[l] = map[string]layerVerificationRec{}
	}
	for _, c := range clusters {
		if id := r.c.rollout.holding(c); id != "" {
			return "", messages.Errorf(messages.CodeConflict, "cluster %q is in rollout %s: wait for it, or `controller rollout abort %s`", c.Name, id, id)
		}
	}
	r.mu.Lock()
	for _, c := range clusters {
		if id, busy := r.active[c.Name]; busy {
			r.mu.Unlock()
			return "", messages.Errorf(messages.CodeConflict, "cluster %q has a setup run in progress: %s (see `controller setup status %s`)", c.Name, id, id)
		}
	}
	for _, c := range clusters {
		rec.Clusters = append(rec.Clusters, c.Name)
		rec.Cursors[c.Name] = &setupCursor{Status: messages.RunRunning, Outputs: map[string]string{}}
		for _, l := range layers {
			rec.LayerStatus[l][c.Name] = layerPending
		}
		r.active[c.Name] = rec.Run.RunID
	}
	r.mu.Unlock()
	if err := r.persist(ctx, rec); err != nil {
		r.mu.Lock()
		for _, c := range clusters {
			delete(r.active, c.Name)
		}
		r.mu.Unlock()
		return "", err
	}
	if r.c.revs != nil {
		// The spec applied becomes a revision (docs/ROLLOUT.md).
		if _, _, err := r.c.revs.record(ctx, spec, "setup:"+rec.Run.RunID); err != nil {
			r.log.Warn("record spec revision", zap.Error(err))
		}
	}
	r.log.Info("setup run started", zap.String("run", rec.Run.RunID), zap.Strings("clusters", rec.Clusters),
		zap.Strings("layers", layers), zap.String("spec", rec.SpecHash))
	r.start(rec)
	return rec.Run.RunID, nil
}

// start runs rec's clusters in the background.
func (r *setupRunner) start(rec *setupRecord) { r.startRun(rec, false) }

func (r *setupRunner) startRun(rec *setupRecord, resumed bool) {
	lr := &liveRun{rec: rec, running: map[string]map[string]string{}, start: time.Now(), done: make(chan struct{}), resumed: resumed}
	if !rec.StartedAt.IsZero() {
		lr.start = rec.StartedAt
	}
	r.mu.Lock()
	r.live[rec.Run.RunID] = lr
	for _, c := range rec.Clusters {
		if !rec.Cursors[c].Done {
			r.active[c] = rec.Run.RunID
		}
	}
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		var wg sync.WaitGroup
		for _, c := range rec.Clusters {
			if rec.Cursors[c].Done {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.runCluster(r.ctx, lr, c)
			}()
		}
		wg.Wait()
		if r.ctx.Err() != nil {
			return // the controller stops: the run resumes at the next start
		}
		lr.mu.Lock()
		rec.Run.Status = runStatus(rec)
		rec.FinishedAt = time.Now().UTC()
		lr.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r.persistLive(ctx, lr)
		if rec.Run.Status == messages.RunSucceeded && r.c.revs != nil && len(rec.Clusters) == len(rec.Spec.Clusters) {
			if err := r.c.revs.markAppliedHash(ctx, rec.SpecHash); err != nil {
				r.log.Warn("mark spec revision applied", zap.Error(err))
			}
		}
		cancel()
		r.mu.Lock()
		for _, c := range rec.Clusters {
			if r.active[c] == rec.Run.RunID {
				delete(r.active, c)
			}
		}
		r.mu.Unlock()
		r.publish(lr)
		close(lr.done)
		r.log.Info("setup run finished", zap.String("run", rec.Run.RunID), zap.String("status", rec.Run.Status),
			zap.Duration("took", time.Since(lr.start)))
	}()
}

func runStatus(rec *setupRecord) string {
	st := messages.RunSucceeded
	for _, c := range rec.Cursors {
		switch c.Status {
		case messages.RunRolledBack:
			st = messages.RunRolledBack
		case messages.RunFailed:
			if st != messages.RunRolledBack {
				st = messages.RunFailed
			}
		case messages.RunRunning:
			return messages.RunRunning
		}
	}
	return st
}

// specCluster returns the named cluster of the run's spec.
func (rec *setupRecord) specCluster(name string) messages.FleetCluster {
	c, _ := fleet.Cluster(&rec.Spec, name)
	return c
}

// runCluster brings one cluster through the run's layers from its cursor.
func (r *setupRunner) runCluster(ctx context.Context, lr *liveRun, cluster string) {
	rec := lr.rec
	spec := rec.specCluster(cluster)
	lr.mu.Lock()
	cur := rec.Cursors[cluster]
	lr.mu.Unlock()
	finish := func(status string) {
		lr.mu.Lock()
		cur.Done, cur.Status, cur.InFlight, cur.RollingBack = true, status, false, false
		lr.mu.Unlock()
		r.persistLive(ctx, lr)
		r.mu.Lock()
		if r.active[cluster] == rec.Run.RunID {
			delete(r.active, cluster)
		}
		r.mu.Unlock()
	}
	// After a restart the agents come back within their reconnect backoff:
	// give them that long before anything is planned or verified.
	grace := r.c.opts.HeartbeatInterval * time.Duration(r.c.opts.OfflineAfter)
	if lr.resumed {
		grace = max(grace, agentReconnectGrace)
	}
	r.waitOnline(ctx, spec, grace)
	if lr.resumed {
		// The step in flight when the controller stopped may still run on
		// its node (the agent does not stop with the controller): it is
		// re-planned only once that task has ended, with its outcome or at
		// its deadline. Two tailscale logins at once on one node cancel
		// each other (seen in TestSetupBareWorldKilledAndRefused).
		if err := r.c.disp.waitTarget(ctx, "setup:"+rec.Run.RunID); err != nil {
			return
		}
	}
	for cur.Layer < len(rec.Layers) {
		layer := rec.Layers[cur.Layer]
		if !clusterWants(spec, layer) {
			r.setLayer(lr, layer, cluster, layerSkipped)
			lr.mu.Lock()
			cur.Layer, cur.Step, cur.Applied = cur.Layer+1, 0, nil
			lr.mu.Unlock()
			continue
		}
		list := r.steps.Layer(layer)
		if cur.RollingBack {
			// The controller stopped while undoing this layer: finish that.
			r.rollback(ctx, lr, spec, layer, cur)
			if ctx.Err() != nil {
				return
			}
			r.setLayer(lr, layer, cluster, layerRolledBack)
			finish(messages.RunRolledBack)
			return
		}
		r.setLayer(lr, layer, cluster, layerRunning)
		for cur.Step < len(list) {
			st := list[cur.Step]
			lr.mu.Lock()
			cur.InFlight = true
			lr.mu.Unlock()
			r.persistLive(ctx, lr)
			r.publish(lr)
			ok := r.runStep(ctx, lr, spec, layer, &st, cur)
			if ctx.Err() != nil {
				return // stopping: the step is in flight in the record, re-planned on resume
			}
			if !ok {
				if st.Critical {
					lr.mu.Lock()
					cur.RollingBack, cur.InFlight = true, false
					lr.mu.Unlock()
					r.persistLive(ctx, lr)
					r.rollback(ctx, lr, spec, layer, cur)
					if ctx.Err() != nil {
						return
					}
					r.setLayer(lr, layer, cluster, layerRolledBack)
					finish(messages.RunRolledBack)
				} else {
					r.setLayer(lr, layer, cluster, layerFailed)
					finish(messages.RunFailed)
				}
				return
			}
			lr.mu.Lock()
			cur.Step++
			cur.InFlight = false
			lr.mu.Unlock()
			r.persistLive(ctx, lr)
		}
		r.waitOnline(ctx, spec, r.c.opts.HeartbeatInterval*time.Duration(r.c.opts.OfflineAfter))
		v := r.settleLayer(ctx, spec, layer)
		if ctx.Err() != nil {
			return
		}
		lr.mu.Lock()
		rec.Verification[layer][cluster] = v
		lr.mu.Unlock()
		if v.Status != messages.Healthy {
			r.setLayer(lr, layer, cluster, layerUnhealthy)
			finish(messages.RunFailed)
			return
		}
		r.setLayer(lr, layer, cluster, layerVerified)
		lr.mu.Lock()
		cur.Layer, cur.Step, cur.Applied = cur.Layer+1, 0, nil
		lr.mu.Unlock()
		r.persistLive(ctx, lr)
	}
	finish(messages.RunSucceeded)
}

// setLayer records a cluster's status of a layer and the layer's status
// over the run's clusters.
func (r *setupRunner) setLayer(lr *liveRun, layer, cluster, status string) {
	lr.mu.Lock()
	rec := lr.rec
	rec.LayerStatus[layer][cluster] = status
	lr.mu.Unlock()
	r.publish(lr)
}

// layerStatusOver rolls a layer's per-cluster statuses into one.
func layerStatusOver(per map[string]string) string {
	rank := []string{layerRolledBack, layerFailed, layerUnhealthy, layerRunning, layerPending}
	for _, s := range rank {
		for _, v := range per {
			if v == s {
				return s
			}
		}
	}
	for _, v := range per {
		if v == layerVerified {
			return layerVerified
		}
	}
	if len(per) > 0 {
		return layerSkipped
	}
	return layerPending
}

// view is the run as printed: layer statuses and verifications filled in.
// Call with lr.mu held (or on a record no one else holds).
func (rec *setupRecord) view() messages.SetupRun {
	run := rec.Run
	run.Layers = slices.Clone(run.Layers)
	for i := range run.Layers {
		l := &run.Layers[i]
		l.Status = layerStatusOver(rec.LayerStatus[l.Name])
		l.Steps = slices.Clone(l.Steps)
		if v := rec.Verification[l.Name]; len(v) > 0 {
			l.Verification, _ = json.Marshal(v)
		}
	}
	return run
}

// runStep runs one step of a cluster's layer on its targets (in parallel)
// and records each target's row. It reports whether every target
// succeeded.
func (r *setupRunner) runStep(ctx context.Context, lr *liveRun, spec messages.FleetCluster, layer string, st *steps.Step, cur *setupCursor) bool {
	targets, err := r.targets(spec, st)
	if err != nil {
		r.addRows(lr, layer, messages.SetupStep{Name: st.Name, Node: "", Cluster: spec.Name, Outcome: outcomeFailed, Error: err.Error()})
		return false
	}
	if len(targets) == 0 {
		return true // no node of its roles in this cluster
	}
	start := time.Now()
	rows := make([]messages.SetupStep, len(targets))
	applied := make([]*appliedStep, len(targets))
	outputs := make([]map[string]string, len(targets))
	var wg sync.WaitGroup
	for i, n := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.setRunning(lr, spec.Name, n.Name, st.Name)
			defer r.setRunning(lr, spec.Name, n.Name, "")
			rows[i], applied[i], outputs[i] = r.runOnNode(ctx, lr, spec, st, n, cur)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return false
	}
	ok := true
	lr.mu.Lock()
	for i := range targets {
		if applied[i] != nil {
			cur.Applied = append(cur.Applied, *applied[i])
		}
		for k, v := range outputs[i] {
			cur.Outputs[k] = v
		}
		if rows[i].Outcome != outcomeApplied && rows[i].Outcome != outcomeUnchanged {
			ok = false
		}
	}
	lr.mu.Unlock()
	r.addRows(lr, layer, rows...)
	r.recordDuration(ctx, st.Name, time.Since(start))
	return ok
}

func (r *setupRunner) addRows(lr *liveRun, layer string, rows ...messages.SetupStep) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	for i := range lr.rec.Run.Layers {
		if l := &lr.rec.Run.Layers[i]; l.Name == layer && len(l.Steps)+len(rows) <= messages.MaxSetupRows {
			l.Steps = append(l.Steps, rows...)
		}
	}
}

func (r *setupRunner) setRunning(lr *liveRun, cluster, node, step string) {
	lr.mu.Lock()
	if lr.running[cluster] == nil {
		lr.running[cluster] = map[string]string{}
	}
	if step == "" {
		delete(lr.running[cluster], node)
	} else {
		lr.running[cluster][node] = step
	}
	lr.mu.Unlock()
	r.publish(lr)
}

// targets are the nodes a step runs on: a cluster step on the first online
// controlplane node of the spec, a node step on each node whose role it
// applies to. A node that is not enrolled fails the step at once.
func (r *setupRunner) targets(spec messages.FleetCluster, st *steps.Step) ([]messages.FleetNode, error) {
	if st.Scope == steps.ScopeCluster {
		var enrolled []string
		for _, n := range spec.Nodes {
			if n.Role != messages.RoleControlPlane {
				continue
			}
			state, ok := r.c.reg.state(n.Name)
			if ok && state == messages.StateOnline {
				return []messages.FleetNode{n}, nil
			}
			enrolled = append(enrolled, n.Name)
		}
		return nil, fmt.Errorf("no online controlplane agent in cluster %q (controlplane nodes: %s): start one (`agent run` on that node)",
			spec.Name, strings.Join(enrolled, ", "))
	}
	var out []messages.FleetNode
	for _, n := range spec.Nodes {
		if !st.AppliesTo(n.Role) {
			continue
		}
		if _, ok := r.c.reg.state(n.Name); !ok {
			return nil, fmt.Errorf("node %s of cluster %q is not enrolled: start its agent with a join token (`controller token create --cluster %s`)", n.Name, spec.Name, spec.Name)
		}
		out = append(out, n)
	}
	return out, nil
}

// runOnNode plans the step on one node and applies it when the plan says
// so, each with retries; it returns the node's row, what to undo, and the
// step's outputs.
func (r *setupRunner) runOnNode(ctx context.Context, lr *liveRun, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, cur *setupCursor) (row messages.SetupStep, _ *appliedStep, _ map[string]string) {
	start := time.Now()
	row = messages.SetupStep{Name: st.Name, Node: node.Name, Cluster: spec.Name}
	defer func() { row.DurationMS = time.Since(start).Milliseconds() }()
	inputs := r.inputs(lr, cur)
	plan, attempts, err := r.withRetries(ctx, lr, spec, st, node, messages.StepOpPlan, nil, inputs)
	if err != nil || plan.ErrClass != "" {
		row.Attempts = attempts
		row.Outcome, row.Error = failure(plan, err)
		row.Action = plan.Action
		return row, nil, nil
	}
	row.Action = plan.Action
	switch plan.Action {
	case messages.ActionUnchanged:
		row.Outcome, row.Attempts = outcomeUnchanged, 0
		return row, nil, nil
	case messages.ActionBlocked:
		row.Outcome, row.Error = outcomeBlocked, plan.Blocked
		return row, nil, nil
	}
	out, attempts, err := r.withRetries(ctx, lr, spec, st, node, messages.StepOpApply, nil, inputs)
	row.Attempts = attempts
	if err != nil || out.ErrClass != "" {
		row.Outcome, row.Error = failure(out, err)
		return row, nil, nil
	}
	row.Outcome = outcomeApplied
	if out.Action != "" {
		row.Action = out.Action
	}
	outputs := map[string]string{}
	for k, v := range out.Outputs {
		if !strings.HasPrefix(k, st.Name+".") {
			k = st.Name + "." + k
		}
		if messages.ValidSealedKey(k) == nil {
			outputs[k] = v
		}
	}
	var ap *appliedStep
	if out.Action != messages.ActionUnchanged {
		ap = &appliedStep{Step: st.Name, Node: node.Name, Undo: out.Undo}
	}
	return row, ap, outputs
}

func failure(o messages.StepOutput, err error) (outcome, msg string) {
	if err != nil {
		return outcomeFailed, err.Error()
	}
	if o.ErrClass == messages.StepErrBlocked {
		return outcomeBlocked, o.Error
	}
	return outcomeFailed, o.ErrClass + ": " + o.Error
}

func (r *setupRunner) inputs(lr *liveRun, cur *setupCursor) map[string]string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return maps.Clone(cur.Outputs)
}

// withRetries runs op, retrying retryable failures with backoff: at most
// setupAttempts attempts. err is set when the step could not be run at
// all (the controller stops).
func (r *setupRunner) withRetries(ctx context.Context, lr *liveRun, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, op string, undo json.RawMessage, inputs map[string]string) (messages.StepOutput, int, error) {
	var waited []string
	for attempt := 1; ; attempt++ {
		out, err := r.call(ctx, lr.rec, spec, st, node, op, undo, inputs)
		if err != nil {
			return out, attempt, err
		}
		if out.ErrClass != messages.StepErrRetryable || attempt >= setupAttempts {
			if out.ErrClass != "" && len(waited) > 0 {
				// The run shows the retries: attempts and the backoff between them.
				out.Error = fmt.Sprintf("%s (after %d attempts, backoff %s)", out.Error, attempt, strings.Join(waited, ", "))
			}
			return out, attempt, nil
		}
		wait := backoff(r.backoff, attempt)
		waited = append(waited, wait.Round(time.Millisecond).String())
		r.log.Info("step failed, retrying", zap.String("run", lr.rec.Run.RunID), zap.String("step", st.Name), zap.String("node", node.Name),
			zap.String("op", op), zap.Int("attempt", attempt), zap.Duration("backoff", wait), zap.String("error", out.Error))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return out, attempt, ctx.Err()
		}
	}
}

// backoff is the wait after the attempt-th failure: base doubling up to
// setupMaxBackoff, with ±20% jitter.
func backoff(base time.Duration, attempt int) time.Duration {
	d := base << (attempt - 1)
	if d > setupMaxBackoff || d <= 0 {
		d = setupMaxBackoff
	}
	j := time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
	return min(j, setupMaxBackoff)
}

// call runs one op of a step on one node through the step task and
// returns its output. A node that did not answer (offline, timed out) is
// a retryable failure; a refused task a failed one.
func (r *setupRunner) call(ctx context.Context, rec *setupRecord, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, op string, undo json.RawMessage, inputs map[string]string) (messages.StepOutput, error) {
	out := messages.StepOutput{V: messages.Version, Step: st.Name, Op: op}
	var sealed json.RawMessage
	if st.Seal != nil {
		se, err := r.sealEnv(spec, node)
		if err != nil {
			out.ErrClass, out.Error = messages.StepErrFailed, err.Error()
			return out, nil
		}
		m, err := st.Seal(ctx, se)
		if err != nil {
			out.ErrClass, out.Error = steps.Classify(err), "seal: "+err.Error()
			return out, nil
		}
		if sealed, err = messages.EncodeSealed(m); err != nil {
			out.ErrClass, out.Error = messages.StepErrFailed, "seal: "+err.Error()
			return out, nil
		}
	}
	args := messages.MustEncode(&messages.StepArgs{V: messages.Version, Step: st.Name, Op: op, Cluster: spec, Undo: undo, Inputs: inputs})
	state, _ := r.c.reg.state(node.Name)
	rep, err := r.c.disp.issueSealed(ctx, messages.RunRequest{V: messages.Version, Target: "setup:" + rec.Run.RunID, Kind: "step", Args: args,
		Timeout: rec.StepTimeout.String(), SkipOffline: true}, []string{node.Name}, map[string]string{node.Name: state}, sealed, true)
	if err != nil {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		out.ErrClass, out.Error = messages.StepErrRetryable, "issue the step task: "+err.Error()
		return out, nil
	}
	defer r.c.disp.dropSealed(rep.TaskID)
	tr, err := r.c.disp.wait(ctx, rep.TaskID)
	if err != nil {
		return out, err
	}
	if len(tr.Results) != 1 {
		out.ErrClass, out.Error = messages.StepErrFailed, "no result"
		return out, nil
	}
	res := tr.Results[0]
	if res.Outcome == messages.OutcomeUnknown {
		if res.Reason == messages.ReasonRejected {
			out.ErrClass, out.Error = messages.StepErrFailed, "the agent refused the step task: "+truncate(string(res.Output), 300)
		} else {
			out.ErrClass, out.Error = messages.StepErrRetryable, fmt.Sprintf("node %s: %s", node.Name, res.Reason)
		}
		return out, nil
	}
	got, derr := messages.Decode[messages.StepOutput](res.Output, r.c.opts.MaxMessageBytes)
	if derr != nil || got.Step != st.Name || got.Op != op {
		out.ErrClass, out.Error = messages.StepErrFailed, "unreadable step output: "+truncate(fmt.Sprint(derr), 200)
		return out, nil
	}
	// Sealed outputs count from a successful apply only (a node cannot
	// plant a secret file through a plan or an undo).
	if raw := r.c.disp.takeSealed(rep.TaskID, node.Name); len(raw) > 0 && op == messages.StepOpApply && got.ErrClass == "" {
		if _, err := r.keepSealed(spec.Name, st, node.Name, raw); err != nil {
			got.ErrClass, got.Error = messages.StepErrFailed, "keep sealed outputs: "+err.Error()
		}
	}
	return got, nil
}

// waitOnline waits until every enrolled node of the cluster is online and
// has sent a heartbeat to this controller (after a restart, the state a
// restored last_seen gives is not a connection), at most as long as a node
// takes to be judged offline (grace).
func (r *setupRunner) waitOnline(ctx context.Context, spec messages.FleetCluster, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		all := true
		for _, n := range spec.Nodes {
			if st, ok := r.c.reg.state(n.Name); ok && (st != messages.StateOnline || !r.c.reg.seenSince(n.Name, r.started)) {
				all = false
			}
		}
		if all {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// verifyLayer verifies one layer of a cluster with the verifier (the
// checks of the spec's require.checks when it names any, else the
// layer's own).
func (r *setupRunner) verifyLayer(ctx context.Context, spec messages.FleetCluster, layer string) layerVerificationRec {
	req := messages.VerifyRequest{V: messages.Version, Cluster: spec.Name, Layers: []string{layer}, Checks: layerChecks(spec, layer)}
	rep, id, err := r.c.ver.run(ctx, req)
	if err != nil {
		return layerVerificationRec{Status: messages.Unknown, Reason: truncate(err.Error(), 300)}
	}
	for _, c := range rep.Clusters {
		if c.Name != spec.Name {
			continue
		}
		for _, l := range c.Layers {
			if l.Name == layer {
				return layerVerificationRec{ReportID: id, Status: l.Status, Reason: l.Reason}
			}
		}
	}
	return layerVerificationRec{ReportID: id, Status: messages.Unknown, Reason: "the report has no " + layer + " layer for cluster " + spec.Name}
}

// settleLayer verifies a layer just set up, again every second while it
// is not healthy, for at most Options.SetupVerifySettle: what setup made
// may need a moment to work (pods scheduled and started), as an operator
// would wait. The last verification counts.
func (r *setupRunner) settleLayer(ctx context.Context, spec messages.FleetCluster, layer string) layerVerificationRec {
	deadline := time.Now().Add(r.c.opts.SetupVerifySettle)
	for {
		v := r.verifyLayer(ctx, spec, layer)
		if v.Status == messages.Healthy || ctx.Err() != nil || time.Now().After(deadline) {
			return v
		}
		r.log.Info("layer not healthy yet, verifying again", zap.String("cluster", spec.Name), zap.String("layer", layer),
			zap.String("status", v.Status), zap.String("report", v.ReportID))
		select {
		case <-ctx.Done():
			return v
		case <-time.After(time.Second):
		}
	}
}

// hostAppChecks need GuildNet's host app, which runs on a hostapp node.
var hostAppChecks = []string{"hostapp_healthz", "hostapp_api_health", "proxy_answers"}

// layerChecks are the checks that verify a layer of a cluster: the spec's
// require.checks when it names any, else (nil) all of the layer's own,
// except that a cluster with no hostapp node is not asked for a host app it does not have (its application layer is
// verified by the other application checks).
func layerChecks(spec messages.FleetCluster, layer string) []string {
	if len(spec.Require.Checks) > 0 || layer != messages.LayerApplication {
		return spec.Require.Checks
	}
	for _, n := range spec.Nodes {
		if n.Role == messages.RoleHostApp {
			return nil
		}
	}
	var out []string
	for _, c := range meta.Builtin {
		if c.Layer == layer && !slices.Contains(hostAppChecks, c.Name) {
			out = append(out, c.Name)
		}
	}
	return out
}

// rollback undoes this run's completed steps of the failed layer, last
// first, and marks their rows undone (or undo_failed).
func (r *setupRunner) rollback(ctx context.Context, lr *liveRun, spec messages.FleetCluster, layer string, cur *setupCursor) {
	lr.mu.Lock()
	applied := slices.Clone(cur.Applied)
	lr.mu.Unlock()
	inputs := r.inputs(lr, cur)
	for i := len(applied) - 1; i >= 0; i-- {
		a := applied[i]
		st, ok := r.steps.Lookup(a.Step)
		outcome, msg := outcomeUndone, ""
		if !ok {
			outcome, msg = outcomeUndoFailed, "step no longer registered"
		} else {
			node := messages.FleetNode{Name: a.Node}
			for _, n := range spec.Nodes {
				if n.Name == a.Node {
					node = n
				}
			}
			out, _, err := r.withRetries(ctx, lr, spec, st, node, messages.StepOpUndo, a.Undo, inputs)
			if ctx.Err() != nil {
				return
			}
			if err != nil || out.ErrClass != "" {
				outcome = outcomeUndoFailed
				_, msg = failure(out, err)
			}
		}
		lr.mu.Lock()
		for li := range lr.rec.Run.Layers {
			l := &lr.rec.Run.Layers[li]
			if l.Name != layer {
				continue
			}
			for si := range l.Steps {
				s := &l.Steps[si]
				if s.Name == a.Step && s.Node == a.Node && s.Cluster == spec.Name && s.Outcome == outcomeApplied {
					s.Outcome = outcome
					if msg != "" {
						s.Error = "undo: " + msg
					}
				}
			}
		}
		cur.Applied = cur.Applied[:i]
		lr.mu.Unlock()
		r.persistLive(ctx, lr)
		r.log.Info("setup step undone", zap.String("run", lr.rec.Run.RunID), zap.String("cluster", spec.Name),
			zap.String("step", a.Step), zap.String("node", a.Node), zap.String("outcome", outcome))
	}
}

// persist writes a record no goroutine holds yet.
func (r *setupRunner) persist(ctx context.Context, rec *setupRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := r.runs.Put(ctx, rec.Run.RunID, b); err != nil {
		return fmt.Errorf("store setup run %s: %w", rec.Run.RunID, err)
	}
	return nil
}

// persistLive writes a live run's record (the run's progress survives a
// restart from here).
func (r *setupRunner) persistLive(ctx context.Context, lr *liveRun) {
	lr.mu.Lock()
	b, err := json.Marshal(lr.rec)
	id := lr.rec.Run.RunID
	lr.mu.Unlock()
	if err != nil {
		r.log.Warn("encode setup run", zap.String("run", id), zap.Error(err))
		return
	}
	if ctx.Err() != nil {
		// The run's own context ends when the controller stops: the last
		// record stays, and the run resumes from it.
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r.runs.Put(pctx, id, b); err != nil {
		r.log.Warn("store setup run", zap.String("run", id), zap.Error(err))
	}
}

// stepDuration is what mgn_setup_durations keeps per step.
type stepDuration struct {
	LastMS int64 `json:"last_ms"`
	AvgMS  int64 `json:"avg_ms"`
	N      int64 `json:"n"`
}

func (r *setupRunner) recordDuration(ctx context.Context, step string, d time.Duration) {
	ms := d.Milliseconds()
	r.mu.Lock()
	prev, ok := r.avgMS[step]
	avg := ms
	if ok {
		avg = (prev*3 + ms) / 4 // moving average: recent runs count most
	}
	r.avgMS[step] = avg
	r.mu.Unlock()
	b, _ := json.Marshal(stepDuration{LastMS: ms, AvgMS: avg, N: 1})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.durs.Put(pctx, step, b); err != nil && ctx.Err() == nil {
		r.log.Warn("store step duration", zap.String("step", step), zap.Error(err))
	}
}

// progress is where a live run is now.
func (r *setupRunner) progress(lr *liveRun) messages.SetupProgress {
	r.mu.Lock()
	avg := maps.Clone(r.avgMS)
	r.mu.Unlock()
	lr.mu.Lock()
	defer lr.mu.Unlock()
	rec := lr.rec
	p := messages.SetupProgress{V: messages.Version, RunID: rec.Run.RunID, Status: rec.Run.Status,
		ElapsedMS: time.Since(lr.start).Milliseconds(), ETAMS: -1}
	if rec.Run.Status != messages.RunRunning && !rec.FinishedAt.IsZero() {
		p.ElapsedMS = rec.FinishedAt.Sub(lr.start).Milliseconds()
	}
	var eta int64
	known := false
	for _, c := range rec.Clusters {
		cur := rec.Cursors[c]
		cp := messages.ClusterProgress{Cluster: c, Running: maps.Clone(lr.running[c])}
		var remaining int64
		if cur.Layer < len(rec.Layers) && !cur.Done {
			cp.Layer = rec.Layers[cur.Layer]
			list := r.steps.Layer(cp.Layer)
			cp.Done, cp.Total = cur.Step, len(list)
			for li := cur.Layer; li < len(rec.Layers); li++ {
				for si, st := range r.steps.Layer(rec.Layers[li]) {
					if li == cur.Layer && si < cur.Step {
						continue
					}
					if ms, ok := avg[st.Name]; ok {
						remaining += ms
						known = true
					}
				}
			}
		} else if len(rec.Layers) > 0 {
			cp.Layer = rec.Layers[min(cur.Layer, len(rec.Layers)-1)]
			list := r.steps.Layer(cp.Layer)
			cp.Done, cp.Total = len(list), len(list)
		}
		eta = max(eta, remaining)
		p.Clusters = append(p.Clusters, cp)
	}
	if known || rec.Run.Status != messages.RunRunning {
		p.ETAMS = eta
	}
	return p
}

// publish announces a live run's progress on mgn.evt.setup.
func (r *setupRunner) publish(lr *liveRun) {
	p := r.progress(lr)
	r.c.nc.Publish(messages.EventSubject(messages.SetupEventKind), messages.MustEncode(&p))
}

// status reports a run (the newest when id is "").
func (r *setupRunner) status(ctx context.Context, id string) (messages.SetupStatusReply, error) {
	id, err := newestID(ctx, r.c.js, r.runs, id, "setup runs", "no setup run yet: run `controller setup apply -f FLEET.yaml`") // ids start with their UTC start time
	if err != nil {
		return messages.SetupStatusReply{}, err
	}
	r.mu.Lock()
	lr := r.live[id]
	r.mu.Unlock()
	if lr != nil {
		p := r.progress(lr)
		lr.mu.Lock()
		run := lr.rec.view()
		lr.mu.Unlock()
		return messages.SetupStatusReply{V: messages.Version, Run: run, Progress: &p}, nil
	}
	rec, err := r.load(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return messages.SetupStatusReply{}, messages.Errorf(messages.CodeNotFound, "no setup run %q", id)
		}
		return messages.SetupStatusReply{}, err
	}
	return messages.SetupStatusReply{V: messages.Version, Run: rec.view()}, nil
}

// plan plans every step of the selection on its targets, changing
// nothing.
func (r *setupRunner) plan(ctx context.Context, req messages.SetupRequest) (messages.SetupPlanReply, error) {
	clusters, layers, err := r.selection(req)
	if err != nil {
		return messages.SetupPlanReply{}, err
	}
	timeout := time.Minute
	if req.StepTimeout != "" {
		timeout, _ = time.ParseDuration(req.StepTimeout)
	}
	spec := req.Spec
	fleet.Defaults(&spec)
	rec := &setupRecord{Run: messages.SetupRun{RunID: "plan"}, Spec: spec, StepTimeout: timeout}
	var mu sync.Mutex
	var rows []messages.SetupPlanRow
	var wg sync.WaitGroup
	for _, c := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []messages.SetupPlanRow
			for _, layer := range layers {
				if !clusterWants(c, layer) {
					continue
				}
				for _, st := range r.steps.Layer(layer) {
					targets, err := r.targets(c, &st)
					if err != nil {
						mine = append(mine, messages.SetupPlanRow{Cluster: c.Name, Layer: layer, Step: st.Name, Action: "error", Error: err.Error()})
						continue
					}
					out := make([]messages.SetupPlanRow, len(targets))
					var nwg sync.WaitGroup
					for i, n := range targets {
						nwg.Add(1)
						go func() {
							defer nwg.Done()
							o, err := r.call(ctx, rec, c, &st, n, messages.StepOpPlan, nil, nil)
							row := messages.SetupPlanRow{Cluster: c.Name, Layer: layer, Step: st.Name, Node: n.Name, Action: o.Action, Diff: o.Diff, Blocked: o.Blocked}
							if err != nil || o.ErrClass != "" {
								_, row.Error = failure(o, err)
								if row.Action == "" {
									row.Action = "error"
								}
							}
							out[i] = row
						}()
					}
					nwg.Wait()
					mine = append(mine, out...)
				}
			}
			mu.Lock()
			rows = append(rows, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	order := map[string]int{}
	for i, c := range clusters {
		order[c.Name] = i
	}
	slices.SortStableFunc(rows, func(a, b messages.SetupPlanRow) int { return order[a.Cluster] - order[b.Cluster] })
	if len(rows) > messages.MaxSetupRows {
		rows = rows[:messages.MaxSetupRows]
	}
	if rows == nil {
		rows = []messages.SetupPlanRow{}
	}
	return messages.SetupPlanReply{V: messages.Version, Rows: rows}, nil
}
