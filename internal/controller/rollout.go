package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// The rollout runner: `controller rollout` (docs/ROLLOUT.md). A rollout
// is a fixed list of batches (waves of clusters, batches of nodes, a
// canary first in each wave) computed at start; each batch updates the
// steps the change touches on its nodes (setup's plan-then-apply with
// retries), then passes a health gate (setup's per-layer verification)
// before the next one starts. The record is written to mgn_rollouts at
// every change of phase, and a restarted controller resumes at the batch
// in flight, which plans before it applies.

const rolloutsBucket = "mgn_rollouts"

// maxRolloutStepRows bounds the step rows a rollout record keeps (the
// newest), so the record stays within a KV value.
const maxRolloutStepRows = 2000

// Phases of the batch at the cursor.
const (
	phaseIdle   = ""
	phasePlan   = "plan" // the rollout's first phase: which steps change
	phaseUpdate = "update"
	phaseGate   = "gate"
)

// Control requests.
const (
	controlPause = "pause"
	controlAbort = "abort"
)

// rolloutBatch is a batch as stored.
type rolloutBatch struct {
	messages.RolloutBatch
	Wave         int  `json:"wave"`
	Canary       bool `json:"canary,omitempty"`
	ClusterSteps bool `json:"cluster_steps,omitempty"` // the cluster's first batch: cluster-scoped steps run here
	Resumed      bool `json:"resumed,omitempty"`       // was in flight at a restart: gated whatever the plan says
	Applied      bool `json:"applied,omitempty"`       // something was applied in this batch
}

// rolloutRecord is what is stored for a rollout.
type rolloutRecord struct {
	ID       string         `json:"id"`
	Status   string         `json:"status"`
	FromRev  int64          `json:"from_revision"`
	ToRev    int64          `json:"to_revision"`
	Spec     messages.Fleet `json:"spec"` // defaults filled, secret references only
	SpecHash string         `json:"spec_hash"`
	// OldSpec is the from revision's spec (nil without one): a rollback
	// re-applies it.
	OldSpec *messages.Fleet `json:"old_spec,omitempty"`

	MaxParallel     int           `json:"max_parallel"`
	Canary          int           `json:"canary"`
	MaxFailed       int           `json:"max_failed"`
	MinHealthy      time.Duration `json:"min_healthy"`
	HealthyDeadline time.Duration `json:"healthy_deadline"`
	OnFailure       string        `json:"on_failure"`
	SkipOffline     bool          `json:"skip_offline,omitempty"`
	StepTimeout     time.Duration `json:"step_timeout"`

	Waves   []messages.RolloutWave `json:"waves"`
	Batches []*rolloutBatch        `json:"batches"`
	Nodes   []messages.RolloutNode `json:"nodes"`

	Planned bool     `json:"planned,omitempty"`
	Changed []string `json:"changed,omitempty"` // steps that change, registry order
	Layers  []string `json:"layers,omitempty"`  // layers those steps touch

	Cursor  int    `json:"cursor"`
	Phase   string `json:"phase,omitempty"`
	Control string `json:"control,omitempty"`
	Failed  int    `json:"failed"`

	Outputs   map[string]map[string]string `json:"outputs,omitempty"` // cluster -> step outputs
	Undo      map[string][]appliedStep     `json:"undo,omitempty"`    // node -> this rollout's applies
	Steps     []messages.RolloutStep       `json:"steps,omitempty"`
	Diagnoses []messages.RolloutDiagnosis  `json:"diagnoses,omitempty"`
	Reason    string                       `json:"reason,omitempty"`
	BatchMS   []int64                      `json:"batch_ms,omitempty"`
	Started   time.Time                    `json:"started"`
	Finished  time.Time                    `json:"finished,omitzero"`
}

func (rec *rolloutRecord) nodeIdx(name string) int {
	return slices.IndexFunc(rec.Nodes, func(n messages.RolloutNode) bool { return n.Name == name })
}

func (rec *rolloutRecord) setNode(name, status string) {
	if i := rec.nodeIdx(name); i >= 0 {
		rec.Nodes[i].Status = status
	}
}

func (rec *rolloutRecord) nodeStatus(name string) string {
	if i := rec.nodeIdx(name); i >= 0 {
		return rec.Nodes[i].Status
	}
	return ""
}

// view is the rollout as printed. Call with the record's lock held.
func (rec *rolloutRecord) view() messages.Rollout {
	r := messages.Rollout{ID: rec.ID, Status: rec.Status, FromRevision: rec.FromRev, ToRevision: rec.ToRev,
		Waves: []messages.RolloutWave{}, Batches: []messages.RolloutBatch{}, Nodes: slices.Clone(rec.Nodes)}
	for _, w := range rec.Waves {
		r.Waves = append(r.Waves, messages.RolloutWave{Clusters: slices.Clone(w.Clusters), Status: w.Status})
	}
	for _, b := range rec.Batches {
		x := b.RolloutBatch
		x.Nodes = slices.Clone(x.Nodes)
		x.Gate.ChecksFailed = slices.Clone(x.Gate.ChecksFailed)
		if x.Gate.ChecksFailed == nil {
			x.Gate.ChecksFailed = []string{}
		}
		r.Batches = append(r.Batches, x)
	}
	if r.Nodes == nil {
		r.Nodes = []messages.RolloutNode{}
	}
	return r
}

type liveRollout struct {
	mu    sync.Mutex
	rec   *rolloutRecord
	wake  chan struct{} // control changed
	done  chan struct{}
	start time.Time
}

type rolloutRunner struct {
	c     *Controller
	steps *steps.Registry
	kv    jetstream.KeyValue
	revs  *revisions
	log   *zap.Logger
	ctx   context.Context
	stop_ context.CancelFunc
	wg    sync.WaitGroup

	// Hooks the benchmark replaces (the steps and checks themselves); nil
	// means the real thing.
	callStep func(ctx context.Context, rec *rolloutRecord, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, op string, undo json.RawMessage, inputs map[string]string) (messages.StepOutput, int, error)
	verify   func(ctx context.Context, req messages.VerifyRequest) (messages.Report, error)
	online   func(node string) bool

	mu     sync.Mutex
	active map[string]string // node -> rollout id
	live   map[string]*liveRollout
}

func newRolloutRunner(c *Controller, kv jetstream.KeyValue, revs *revisions) *rolloutRunner {
	r := &rolloutRunner{c: c, steps: c.opts.Steps, kv: kv, revs: revs, log: c.log.Named("rollout"),
		active: map[string]string{}, live: map[string]*liveRollout{}}
	if r.steps == nil {
		r.steps = steps.Builtin()
	}
	r.ctx, r.stop_ = context.WithCancel(context.Background())
	return r
}

// mayAct reports whether this controller may progress rollouts: only the
// active controller (the HA lease, lease.go) acts.
func (c *Controller) mayAct() bool { return c.Active() }

func (r *rolloutRunner) stop() {
	r.stop_()
	r.wg.Wait()
}

// holding names the rollout that holds a cluster's nodes ("" when none).
func (r *rolloutRunner) holding(spec messages.FleetCluster) string {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range spec.Nodes {
		if id := r.active[n.Name]; id != "" && r.holdsLocked(id) {
			return id
		}
	}
	return ""
}

// holdsLocked reports whether rollout id still holds its nodes; r.mu held.
// A rollout whose status is final only saves its record and releases them
// (finish): whoever saw it finished must not be refused for it.
func (r *rolloutRunner) holdsLocked(id string) bool {
	switch r.statusOf(id) {
	case messages.RolloutSucceeded, messages.RolloutFailed, messages.RolloutRolledBack, messages.RolloutAborted:
		return false
	}
	return true
}

func (r *rolloutRunner) load(ctx context.Context, id string) (*rolloutRecord, error) {
	e, err := r.kv.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var rec rolloutRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("rollout %s: %w", id, err)
	}
	if rec.Outputs == nil {
		rec.Outputs = map[string]map[string]string{}
	}
	if rec.Undo == nil {
		rec.Undo = map[string][]appliedStep{}
	}
	return &rec, nil
}

// resume restarts the rollouts still running and holds the nodes of the
// paused ones.
func (r *rolloutRunner) resume(ctx context.Context) error {
	keys, err := kvKeys(ctx, r.c.js, r.kv.Bucket())
	if err != nil {
		return fmt.Errorf("list rollouts: %w", err)
	}
	for _, k := range keys {
		rec, err := r.load(ctx, k)
		if err != nil {
			r.log.Warn("skip unreadable rollout", zap.String("rollout", k), zap.Error(err))
			continue
		}
		r.mu.Lock()
		_, live := r.live[k]
		r.mu.Unlock()
		if rec.Status != messages.RolloutRunning && rec.Status != messages.RolloutPaused || live {
			continue // finished, or started here since activation
		}
		if rec.Phase == phaseUpdate || rec.Phase == phaseGate {
			if rec.Cursor < len(rec.Batches) {
				rec.Batches[rec.Cursor].Resumed = true
			}
		}
		r.log.Info("resuming rollout", zap.String("rollout", k), zap.String("status", rec.Status), zap.Int("batch", rec.Cursor), zap.String("phase", rec.Phase))
		lr := r.adopt(rec)
		if rec.Status == messages.RolloutRunning {
			r.run(lr)
		}
	}
	return nil
}

// adopt makes rec live and holds its nodes.
func (r *rolloutRunner) adopt(rec *rolloutRecord) *liveRollout {
	lr := &liveRollout{rec: rec, wake: make(chan struct{}, 1), done: make(chan struct{}), start: rec.Started}
	r.mu.Lock()
	r.live[rec.ID] = lr
	for _, n := range rec.Nodes {
		r.active[n.Name] = rec.ID
	}
	r.mu.Unlock()
	return lr
}

func (r *rolloutRunner) release(rec *rolloutRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range rec.Nodes {
		if r.active[n.Name] == rec.ID {
			delete(r.active, n.Name)
		}
	}
}

// start validates a request, computes the batches, records the spec
// revision and starts the rollout.
func (r *rolloutRunner) start(ctx context.Context, req messages.RolloutStartRequest) (string, error) {
	if err := fleet.Validate(&req.Spec); err != nil {
		return "", messages.Errorf(messages.CodeBadRequest, "fleet spec: %v", err)
	}
	spec := req.Spec
	fleet.Defaults(&spec)
	dur := func(s string, def time.Duration) time.Duration {
		if s == "" {
			return def
		}
		d, _ := time.ParseDuration(s)
		return d
	}
	now := time.Now().UTC()
	rec := &rolloutRecord{
		ID: "r" + strings.TrimPrefix(newRunID(now), "s"), Status: messages.RolloutRunning, Spec: spec, SpecHash: fleet.Hash(&spec),
		MaxParallel: max(req.MaxParallel, 1), Canary: 1, MaxFailed: req.MaxFailed,
		MinHealthy:      dur(req.MinHealthy, messages.DefaultRolloutMinHealthy),
		HealthyDeadline: dur(req.HealthyDeadline, messages.DefaultRolloutHealthyDeadline),
		OnFailure:       cmpOr(req.OnFailure, messages.OnFailureRollback), SkipOffline: req.SkipOffline,
		StepTimeout: dur(req.StepTimeout, messages.DefaultSetupStepTimeout), Started: now,
		Outputs: map[string]map[string]string{}, Undo: map[string][]appliedStep{},
	}
	if req.Canary != nil {
		rec.Canary = *req.Canary
	}
	waves, err := planWaves(spec, req.Waves)
	if err != nil {
		return "", messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	buildBatches(rec, waves)
	if len(rec.Batches) > messages.MaxRolloutBatches || len(rec.Nodes) > messages.MaxRolloutNodes {
		return "", messages.Errorf(messages.CodeBadRequest, "%d batches of %d nodes: at most %d and %d", len(rec.Batches), len(rec.Nodes), messages.MaxRolloutBatches, messages.MaxRolloutNodes)
	}
	// One rollout per node, and none while setup holds a cluster.
	r.mu.Lock()
	for _, n := range rec.Nodes {
		if id := r.active[n.Name]; id != "" && r.holdsLocked(id) {
			r.mu.Unlock()
			return "", messages.Errorf(messages.CodeConflict, "node %s is in rollout %s, which is still %s: wait for it, or `controller rollout abort %s`", n.Name, id, r.statusOf(id), id)
		}
	}
	if r.c.setup != nil {
		r.c.setup.mu.Lock()
		for _, c := range spec.Clusters {
			if id, busy := r.c.setup.active[c.Name]; busy {
				r.c.setup.mu.Unlock()
				r.mu.Unlock()
				return "", messages.Errorf(messages.CodeConflict, "cluster %q has a setup run in progress: %s (see `controller setup status %s`)", c.Name, id, id)
			}
		}
		r.c.setup.mu.Unlock()
	}
	for _, n := range rec.Nodes {
		r.active[n.Name] = rec.ID
	}
	r.mu.Unlock()
	fail := func(err error) (string, error) {
		r.release(rec)
		return "", err
	}
	if rec.FromRev, err = r.revs.applied(ctx); err != nil {
		return fail(err)
	}
	if rec.FromRev > 0 {
		old, err := r.revs.get(ctx, rec.FromRev)
		if err != nil {
			return fail(err)
		}
		rec.OldSpec = &old.Spec
	}
	if rec.ToRev, _, err = r.revs.record(ctx, spec, "rollout:"+rec.ID); err != nil {
		return fail(err)
	}
	rec.Phase = phasePlan
	if err := r.persist(ctx, rec); err != nil {
		return fail(err)
	}
	r.log.Info("rollout started", zap.String("rollout", rec.ID), zap.Int64("from_revision", rec.FromRev), zap.Int64("to_revision", rec.ToRev),
		zap.Int("batches", len(rec.Batches)), zap.Int("nodes", len(rec.Nodes)))
	lr := r.adopt(rec)
	r.run(lr)
	return rec.ID, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (r *rolloutRunner) statusOf(id string) string {
	if lr := r.live[id]; lr != nil {
		lr.mu.Lock()
		defer lr.mu.Unlock()
		return lr.rec.Status
	}
	return "running"
}

// planWaves checks --waves against the spec (every cluster exactly once)
// or makes one wave per cluster.
func planWaves(spec messages.Fleet, w string) ([][]string, error) {
	waves, err := messages.ParseWaves(w)
	if err != nil {
		return nil, err
	}
	if waves == nil {
		for _, c := range spec.Clusters {
			waves = append(waves, []string{c.Name})
		}
		return waves, nil
	}
	named := map[string]bool{}
	for _, wave := range waves {
		for _, c := range wave {
			if _, ok := fleet.Cluster(&spec, c); !ok {
				return nil, fmt.Errorf("--waves: cluster %q is not in the spec", c)
			}
			named[c] = true
		}
	}
	for _, c := range spec.Clusters {
		if !named[c.Name] {
			return nil, fmt.Errorf("--waves: cluster %q of the spec is in no wave (name every cluster once)", c.Name)
		}
	}
	return waves, nil
}

// buildBatches cuts the waves into batches: in each wave, the canary
// first (the first Canary nodes of its first cluster), then batches of at
// most MaxParallel nodes per cluster, clusters in wave order.
func buildBatches(rec *rolloutRecord, waves [][]string) {
	for wi, wave := range waves {
		rec.Waves = append(rec.Waves, messages.RolloutWave{Clusters: wave, Status: messages.WavePending})
		for ci, cname := range wave {
			c, _ := fleet.Cluster(&rec.Spec, cname)
			var names []string
			for _, n := range c.Nodes {
				names = append(names, n.Name)
				rec.Nodes = append(rec.Nodes, messages.RolloutNode{Name: n.Name, Cluster: cname, Status: messages.RolloutNodePending})
			}
			first := true
			add := func(nodes []string, canary bool) {
				rec.Batches = append(rec.Batches, &rolloutBatch{RolloutBatch: messages.RolloutBatch{Cluster: cname, Nodes: nodes,
					Status: messages.BatchPending, Gate: messages.RolloutGate{Status: messages.GatePending, ChecksFailed: []string{}}},
					Wave: wi, Canary: canary, ClusterSteps: first})
				first = false
			}
			if ci == 0 && rec.Canary > 0 && len(names) > 0 {
				k := min(rec.Canary, len(names))
				add(names[:k], true)
				names = names[k:]
			}
			for len(names) > 0 {
				k := min(rec.MaxParallel, len(names))
				add(names[:k], false)
				names = names[k:]
			}
			if first { // a cluster without nodes: its cluster steps have no batch
				add([]string{}, false)
			}
		}
	}
}

// run drives a live rollout in the background.
func (r *rolloutRunner) run(lr *liveRollout) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.drive(r.ctx, lr)
	}()
}

// encode encodes a record within the bucket's value size: the oldest step
// rows go first when it would not fit (the nodes', batches' and gates'
// statuses are what resume needs and stay whole).
func (r *rolloutRunner) encode(rec *rolloutRecord) ([]byte, error) {
	for {
		b, err := json.Marshal(rec)
		if err != nil || len(b) <= r.c.opts.MaxMessageBytes || len(rec.Steps) == 0 {
			if err == nil && len(b) > r.c.opts.MaxMessageBytes {
				err = fmt.Errorf("rollout %s: record of %d bytes exceeds the limit of %d bytes (fewer nodes per rollout, or a larger --max-message-bytes)", rec.ID, len(b), r.c.opts.MaxMessageBytes)
			}
			return b, err
		}
		rec.Steps = slices.Clone(rec.Steps[(len(rec.Steps)+1)/2:])
	}
}

func (r *rolloutRunner) persist(ctx context.Context, rec *rolloutRecord) error {
	b, err := r.encode(rec)
	if err != nil {
		return messages.Errorf(messages.CodeTooLarge, "%v", err)
	}
	if _, err := r.kv.Put(ctx, rec.ID, b); err != nil {
		return fmt.Errorf("store rollout %s: %w", rec.ID, err)
	}
	return nil
}

// save writes a live rollout's record and announces its progress.
func (r *rolloutRunner) save(ctx context.Context, lr *liveRollout) {
	lr.mu.Lock()
	b, err := r.encode(lr.rec)
	id := lr.rec.ID
	lr.mu.Unlock()
	if err != nil {
		r.log.Warn("encode rollout", zap.String("rollout", id), zap.Error(err))
		return
	}
	if ctx.Err() != nil {
		return // stopping: the last record stays, and the rollout resumes from it
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r.kv.Put(pctx, id, b); err != nil {
		r.log.Warn("store rollout", zap.String("rollout", id), zap.Error(err))
	}
	r.publish(lr)
}

func (r *rolloutRunner) publish(lr *liveRollout) {
	p := r.progress(lr)
	r.c.nc.Publish(messages.EventSubject(messages.RolloutEventKind), messages.MustEncode(&p))
}

// update runs f on the record under its lock.
func (lr *liveRollout) update(f func(rec *rolloutRecord)) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	f(lr.rec)
}

func (lr *liveRollout) control() string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.rec.Control
}

// sleep waits d, or until the rollout's control changes or ctx ends.
func (lr *liveRollout) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-lr.wake:
	case <-t.C:
	}
}

// drive is a rollout's loop: plan, then batch after batch.
func (r *rolloutRunner) drive(ctx context.Context, lr *liveRollout) {
	for !r.c.mayAct() {
		lr.sleep(ctx, time.Second)
		if ctx.Err() != nil {
			return
		}
	}
	rec := lr.rec
	lr.mu.Lock()
	planned := rec.Planned
	lr.mu.Unlock()
	if !planned {
		r.plan(ctx, lr)
		if ctx.Err() != nil {
			return
		}
	}
	for {
		if ctx.Err() != nil {
			return
		}
		if !r.c.mayAct() {
			lr.sleep(ctx, time.Second)
			continue
		}
		var ctl string
		var cursor int
		lr.update(func(rec *rolloutRecord) { ctl, cursor = rec.Control, rec.Cursor })
		if cursor >= len(rec.Batches) {
			// Every batch done: succeeded, or failed when nodes failed
			// within the budget (they are named; the rest has the change).
			var failed []string
			lr.update(func(rec *rolloutRecord) {
				for _, n := range rec.Nodes {
					if n.Status == messages.RolloutNodeFailed || n.Status == messages.RolloutNodeRolledBack {
						failed = append(failed, n.Name)
					}
				}
			})
			if len(failed) > 0 {
				r.finish(ctx, lr, messages.RolloutFailed, fmt.Sprintf("every batch done, but %d node(s) failed within the budget --max-failed %d: %s (see the diagnoses)",
					len(failed), rec.MaxFailed, strings.Join(failed, ", ")))
				return
			}
			r.finish(ctx, lr, messages.RolloutSucceeded, "")
			return
		}
		switch ctl {
		case controlAbort:
			r.finish(ctx, lr, messages.RolloutAborted, "aborted by the operator")
			return
		case controlPause:
			lr.update(func(rec *rolloutRecord) { rec.Status, rec.Control, rec.Phase = messages.RolloutPaused, "", phaseIdle })
			r.save(ctx, lr)
			r.log.Info("rollout paused", zap.String("rollout", rec.ID), zap.Int("batch", cursor))
			return
		}
		if !r.batch(ctx, lr, cursor) {
			return
		}
	}
}

// plan plans the spec on every online node of the rollout: the steps that
// change and the layers they touch.
func (r *rolloutRunner) plan(ctx context.Context, lr *liveRollout) {
	rec := lr.rec
	changed := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range rec.Spec.Clusters {
		for _, layer := range steps.Layers {
			if !clusterWants(c, layer) {
				continue
			}
			for _, st := range r.steps.Layer(layer) {
				for _, n := range r.planTargets(c, &st) {
					wg.Add(1)
					go func() {
						defer wg.Done()
						sem <- struct{}{}
						defer func() { <-sem }()
						out, _, err := r.call(ctx, rec, c, &st, n, messages.StepOpPlan, nil, r.inputs(lr, c.Name))
						// A node that could not plan (offline, blocked) is
						// planned again in its batch: count the step as
						// changing so it is not left out.
						if err != nil || out.ErrClass != "" || out.Action != messages.ActionUnchanged {
							mu.Lock()
							changed[st.Name] = true
							mu.Unlock()
						}
					}()
				}
			}
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	var names, layers []string
	for _, st := range r.steps.Steps() {
		if changed[st.Name] {
			names = append(names, st.Name)
			if !slices.Contains(layers, st.Layer) {
				layers = append(layers, st.Layer)
			}
		}
	}
	lr.update(func(rec *rolloutRecord) {
		rec.Planned, rec.Changed, rec.Layers, rec.Phase = true, names, layers, phaseIdle
		if len(names) == 0 {
			// Nothing changes: every node is as the spec says.
			for i := range rec.Nodes {
				rec.Nodes[i].Status = messages.RolloutNodeHealthy
			}
			for _, b := range rec.Batches {
				b.Status, b.Gate.Status = messages.BatchHealthy, messages.GateSkipped
			}
			for i := range rec.Waves {
				rec.Waves[i].Status = messages.WaveHealthy
			}
			rec.Cursor = len(rec.Batches)
		}
	})
	r.save(ctx, lr)
	r.log.Info("rollout planned", zap.String("rollout", rec.ID), zap.Strings("changed", names), zap.Strings("layers", layers))
}

// planTargets are the nodes a step is planned on: a cluster step on one
// online controlplane, a node step on each online node of its roles.
func (r *rolloutRunner) planTargets(c messages.FleetCluster, st *steps.Step) []messages.FleetNode {
	var out []messages.FleetNode
	for _, n := range c.Nodes {
		if !r.isOnline(n.Name) {
			continue
		}
		if st.Scope == steps.ScopeCluster {
			if n.Role == messages.RoleControlPlane {
				return []messages.FleetNode{n}
			}
			continue
		}
		if st.AppliesTo(n.Role) {
			out = append(out, n)
		}
	}
	return out
}

func (r *rolloutRunner) isOnline(node string) bool {
	if r.online != nil {
		return r.online(node)
	}
	st, ok := r.c.reg.state(node)
	return ok && st == messages.StateOnline
}

func (r *rolloutRunner) inputs(lr *liveRollout, cluster string) map[string]string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return maps.Clone(lr.rec.Outputs[cluster])
}

// call runs one op of a step on one node with setup's retries.
func (r *rolloutRunner) call(ctx context.Context, rec *rolloutRecord, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, op string, undo json.RawMessage, inputs map[string]string) (messages.StepOutput, int, error) {
	if r.callStep != nil {
		return r.callStep(ctx, rec, spec, st, node, op, undo, inputs)
	}
	// The setup runner's dispatch and retries, under the rollout's id.
	stub := &liveRun{rec: &setupRecord{Run: messages.SetupRun{RunID: rec.ID}, StepTimeout: rec.StepTimeout}}
	return r.c.setup.withRetries(ctx, stub, spec, st, node, op, undo, inputs)
}

// batch runs the batch at the cursor: update, gate, budget. It reports
// whether the rollout goes on.
func (r *rolloutRunner) batch(ctx context.Context, lr *liveRollout, bi int) bool {
	rec := lr.rec
	b := rec.Batches[bi]
	spec, _ := fleet.Cluster(&rec.Spec, b.Cluster)
	began := time.Now()
	lr.update(func(rec *rolloutRecord) {
		if rec.Waves[b.Wave].Status == messages.WavePending {
			rec.Waves[b.Wave].Status = messages.WaveRunning
		}
		if b.Started == nil {
			t := time.Now().UTC()
			b.Started = &t
		}
		b.Status, rec.Phase = messages.BatchUpdating, phaseUpdate
		b.Gate = messages.RolloutGate{Status: messages.GatePending, ChecksFailed: []string{}}
		for _, n := range b.Nodes {
			if s := rec.nodeStatus(n); s != messages.RolloutNodeSkipped {
				rec.setNode(n, messages.RolloutNodeUpdating)
			}
		}
	})
	r.save(ctx, lr)

	failures := r.update(ctx, lr, spec, b, bi)
	if ctx.Err() != nil {
		return false
	}
	if lr.control() == controlAbort {
		r.rollbackBatch(ctx, lr, bi)
		if ctx.Err() != nil {
			return false
		}
		lr.update(func(rec *rolloutRecord) {
			b.Status = messages.BatchAborted
			b.Gate.Status = messages.GateSkipped
			r.endBatch(rec, b, began)
		})
		r.finish(ctx, lr, messages.RolloutAborted, fmt.Sprintf("aborted by the operator during batch %d (%s); the batch was rolled back", bi+1, b.Cluster))
		return false
	}
	var updated []string
	lr.mu.Lock()
	for _, n := range b.Nodes {
		if _, bad := failures[n]; !bad && rec.nodeStatus(n) == messages.RolloutNodeUpdating {
			updated = append(updated, n)
		}
	}
	gate := b.Applied || b.Resumed || len(failures) > 0
	rec.Phase = phaseGate
	lr.mu.Unlock()
	r.save(ctx, lr)

	if len(updated) > 0 && gate {
		ok, failed, reason := r.gate(ctx, lr, spec, b)
		if ctx.Err() != nil {
			return false
		}
		if lr.control() == controlAbort && !ok && reason == "aborted" {
			r.rollbackBatch(ctx, lr, bi)
			lr.update(func(rec *rolloutRecord) { b.Status = messages.BatchAborted; r.endBatch(rec, b, began) })
			r.finish(ctx, lr, messages.RolloutAborted, fmt.Sprintf("aborted by the operator during the gate of batch %d (%s); the batch was rolled back", bi+1, b.Cluster))
			return false
		}
		if !ok {
			for _, n := range updated {
				failures[n] = nodeFailure{why: "health gate: " + reason}
			}
			lr.update(func(rec *rolloutRecord) { b.Gate.ChecksFailed = failed })
		}
	} else {
		lr.update(func(rec *rolloutRecord) {
			if len(updated) == 0 {
				b.Gate.Status = messages.GateSkipped
			} else {
				b.Gate.Status = messages.GatePassed // nothing applied: nodes already as the spec says
			}
		})
	}

	over := false
	lr.update(func(rec *rolloutRecord) {
		for _, n := range b.Nodes {
			if _, bad := failures[n]; bad {
				rec.setNode(n, messages.RolloutNodeFailed)
			} else if rec.nodeStatus(n) == messages.RolloutNodeUpdating {
				rec.setNode(n, messages.RolloutNodeHealthy)
			}
		}
		rec.Failed += len(failures)
		over = rec.Failed > rec.MaxFailed
	})
	if len(failures) > 0 {
		r.diagnose(ctx, lr, b.Cluster, failures)
	}
	if over {
		reason := fmt.Sprintf("batch %d (%s) failed: %s; %d node(s) failed, budget --max-failed %d", bi+1, b.Cluster, summarize(failures), rec.Failed, rec.MaxFailed)
		if rec.OnFailure == messages.OnFailurePause {
			lr.update(func(rec *rolloutRecord) {
				b.Status = messages.BatchFailed
				r.endBatch(rec, b, began)
				rec.Status, rec.Phase, rec.Reason = messages.RolloutPaused, phaseIdle, reason+"; paused: `controller rollout resume "+rec.ID+"` re-runs this batch"
				rec.Waves[b.Wave].Status = messages.WaveFailed
			})
			r.save(ctx, lr)
			r.log.Warn("rollout paused on failure", zap.String("rollout", rec.ID), zap.String("reason", reason))
			return false
		}
		r.rollbackBatch(ctx, lr, bi)
		if ctx.Err() != nil {
			return false
		}
		lr.update(func(rec *rolloutRecord) {
			b.Status = messages.BatchRolledBack
			r.endBatch(rec, b, began)
			rec.Waves[b.Wave].Status = messages.WaveFailed
		})
		r.finish(ctx, lr, messages.RolloutRolledBack, reason+"; the batch was rolled back to revision "+fmt.Sprint(rec.FromRev))
		return false
	}
	lr.update(func(rec *rolloutRecord) {
		if len(failures) > 0 {
			b.Status = messages.BatchFailed
		} else {
			b.Status = messages.BatchHealthy
		}
		r.endBatch(rec, b, began)
		rec.Cursor++
		if rec.Cursor >= len(rec.Batches) || rec.Batches[rec.Cursor].Wave != b.Wave {
			rec.Waves[b.Wave].Status = messages.WaveHealthy
		}
	})
	r.save(ctx, lr)
	return true
}

func (r *rolloutRunner) endBatch(rec *rolloutRecord, b *rolloutBatch, began time.Time) {
	t := time.Now().UTC()
	b.Finished = &t
	rec.Phase = phaseIdle
	rec.BatchMS = append(rec.BatchMS, time.Since(began).Milliseconds())
	if len(rec.BatchMS) > 64 {
		rec.BatchMS = rec.BatchMS[1:]
	}
}

// nodeFailure is why a node failed in a batch and, when a step failed,
// that step's layer: only a fault in that layer, below it or in the host
// can be the failure's root cause (messages.CanExplain).
type nodeFailure struct {
	why   string
	layer string // "" when no one step failed (gate, offline): the change's layers
}

func summarize(failures map[string]nodeFailure) string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(failures)) {
		parts = append(parts, n+": "+truncate(failures[n].why, 200))
	}
	return strings.Join(parts, "; ")
}

// update brings the batch's nodes to the spec: offline nodes waited for,
// then each changed step in registry order (cluster steps once, in the
// cluster's first batch), planned and applied where needed. It returns
// the nodes that failed and why.
func (r *rolloutRunner) update(ctx context.Context, lr *liveRollout, spec messages.FleetCluster, b *rolloutBatch, bi int) map[string]nodeFailure {
	rec := lr.rec
	failures := map[string]nodeFailure{}
	// Offline nodes: wait up to the healthy deadline.
	deadline := time.Now().Add(rec.HealthyDeadline)
	var todo []string
	for {
		todo = todo[:0]
		var offline []string
		for _, n := range b.Nodes {
			if lr.rec.nodeStatusLocked(&lr.mu, n) == messages.RolloutNodeSkipped {
				continue
			}
			if r.isOnline(n) {
				todo = append(todo, n)
			} else {
				offline = append(offline, n)
			}
		}
		if len(offline) == 0 || time.Now().After(deadline) || ctx.Err() != nil || lr.control() == controlAbort {
			for _, n := range offline {
				if rec.SkipOffline {
					lr.update(func(rec *rolloutRecord) { rec.setNode(n, messages.RolloutNodeSkipped) })
				} else {
					failures[n] = nodeFailure{why: fmt.Sprintf("offline for the healthy deadline (%v)", rec.HealthyDeadline)}
				}
			}
			break
		}
		lr.sleep(ctx, 100*time.Millisecond)
	}
	nodes := map[string]messages.FleetNode{}
	for _, n := range spec.Nodes {
		nodes[n.Name] = n
	}
	for _, name := range rec.Changed {
		st, ok := r.steps.Lookup(name)
		if !ok {
			for _, n := range todo {
				failures[n] = nodeFailure{why: "step " + name + " is no longer registered"}
			}
			break
		}
		if !clusterWants(spec, st.Layer) {
			continue
		}
		if st.Scope == steps.ScopeCluster {
			if !b.ClusterSteps {
				continue
			}
			targets := r.planTargets(spec, st)
			if len(targets) == 0 {
				for _, n := range todo {
					failures[n] = nodeFailure{why: fmt.Sprintf("cluster step %s: no online controlplane agent in cluster %q", name, spec.Name), layer: st.Layer}
				}
				break
			}
			if msg := r.applyOne(ctx, lr, spec, st, targets[0], bi); msg != "" {
				for _, n := range todo {
					failures[n] = nodeFailure{why: fmt.Sprintf("cluster step %s on %s: %s", name, targets[0].Name, msg), layer: st.Layer}
				}
				break
			}
			continue
		}
		var eligible []string
		for _, n := range todo {
			if _, bad := failures[n]; !bad && st.AppliesTo(nodes[n].Role) {
				eligible = append(eligible, n)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, n := range eligible {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if msg := r.applyOne(ctx, lr, spec, st, nodes[n], bi); msg != "" {
					mu.Lock()
					failures[n] = nodeFailure{why: "step " + name + ": " + msg, layer: st.Layer}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return failures
		}
	}
	return failures
}

func (rec *rolloutRecord) nodeStatusLocked(mu *sync.Mutex, n string) string {
	mu.Lock()
	defer mu.Unlock()
	return rec.nodeStatus(n)
}

// applyOne plans a step on a node with the given spec and applies it when
// the plan says so; it records the row and returns "" or why it failed.
func (r *rolloutRunner) applyOne(ctx context.Context, lr *liveRollout, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, bi int) string {
	start := time.Now()
	row := messages.RolloutStep{Batch: bi, Step: st.Name, Node: node.Name, Cluster: spec.Name, Op: messages.StepOpApply}
	msg := r.planApply(ctx, lr, spec, st, node, &row)
	row.DurationMS = time.Since(start).Milliseconds()
	r.addStep(lr, row)
	return msg
}

// planApply is one node's plan-then-apply of a step; it fills row.
func (r *rolloutRunner) planApply(ctx context.Context, lr *liveRollout, spec messages.FleetCluster, st *steps.Step, node messages.FleetNode, row *messages.RolloutStep) string {
	rec := lr.rec
	inputs := r.inputs(lr, spec.Name)
	plan, attempts, err := r.call(ctx, rec, spec, st, node, messages.StepOpPlan, nil, inputs)
	row.Attempts = attempts
	if err != nil || plan.ErrClass != "" {
		row.Outcome, row.Error = failure(plan, err)
		row.Action = plan.Action
		return row.Error
	}
	row.Action = plan.Action
	switch plan.Action {
	case messages.ActionUnchanged:
		row.Outcome, row.Attempts = outcomeUnchanged, 0
		return ""
	case messages.ActionBlocked:
		row.Outcome, row.Error = outcomeBlocked, plan.Blocked
		return "blocked: " + plan.Blocked
	}
	out, attempts, err := r.call(ctx, rec, spec, st, node, messages.StepOpApply, nil, inputs)
	row.Attempts = attempts
	if err != nil || out.ErrClass != "" {
		row.Outcome, row.Error = failure(out, err)
		return row.Error
	}
	row.Outcome = outcomeApplied
	if out.Action != "" {
		row.Action = out.Action
	}
	lr.update(func(rec *rolloutRecord) {
		if rec.Outputs[spec.Name] == nil {
			rec.Outputs[spec.Name] = map[string]string{}
		}
		for k, v := range out.Outputs {
			if !strings.HasPrefix(k, st.Name+".") {
				k = st.Name + "." + k
			}
			if messages.ValidSealedKey(k) == nil && len(rec.Outputs[spec.Name]) < messages.MaxStepValues {
				rec.Outputs[spec.Name][k] = v
			}
		}
		if out.Action != messages.ActionUnchanged {
			if row.Op == messages.StepOpApply {
				rec.Undo[node.Name] = append(rec.Undo[node.Name], appliedStep{Step: st.Name, Node: node.Name, Undo: out.Undo})
				if rec.Cursor < len(rec.Batches) {
					rec.Batches[rec.Cursor].Applied = true
				}
			}
		}
	})
	return ""
}

func (r *rolloutRunner) addStep(lr *liveRollout, row messages.RolloutStep) {
	lr.update(func(rec *rolloutRecord) {
		if len(rec.Steps) >= maxRolloutStepRows {
			rec.Steps = rec.Steps[1:]
		}
		rec.Steps = append(rec.Steps, row)
	})
}

// gate verifies the touched layers of the batch's cluster until healthy
// (at most the healthy deadline), then until they stayed healthy for
// min-healthy. It returns whether it passed, the checks that failed and
// why.
func (r *rolloutRunner) gate(ctx context.Context, lr *liveRollout, spec messages.FleetCluster, b *rolloutBatch) (bool, []string, string) {
	rec := lr.rec
	set := func(s string) {
		lr.update(func(*rolloutRecord) { b.Gate.Status = s })
		r.publish(lr)
	}
	set(messages.GateWaiting)
	deadline := time.Now().Add(rec.HealthyDeadline)
	interval := min(max(rec.MinHealthy/5, 100*time.Millisecond), 2*time.Second)
	var healthySince time.Time
	var lastFailed []string
	var lastReason string
	for {
		if lr.control() == controlAbort {
			set(messages.GateFailed)
			return false, nil, "aborted"
		}
		ok, failed, reason := r.verifyLayers(ctx, lr, spec, b)
		if ctx.Err() != nil {
			return false, nil, "stopped"
		}
		now := time.Now()
		switch {
		case ok && healthySince.IsZero():
			healthySince = now
			set(messages.GateHolding)
		case !ok && !healthySince.IsZero():
			// Healthy, then not: the change does not hold.
			set(messages.GateFailed)
			return false, failed, "unhealthy again after " + now.Sub(healthySince).Round(time.Millisecond).String() + ": " + reason
		case !ok:
			lastFailed, lastReason = failed, reason
		}
		if ok && now.Sub(healthySince) >= rec.MinHealthy {
			set(messages.GatePassed)
			return true, nil, ""
		}
		if healthySince.IsZero() && now.After(deadline) {
			set(messages.GateFailed)
			return false, lastFailed, fmt.Sprintf("not healthy within %v: %s", rec.HealthyDeadline, lastReason)
		}
		lr.sleep(ctx, interval)
	}
}

// verifyLayers verifies the touched layers of a cluster with the
// verifier (the spec's require.checks when it names any), as setup's
// verifyLayer does, and judges the checks of the cluster's nodes: a check
// that failed or could not run fails the gate, except on a node this
// rollout skipped or one that is offline outside the batch (it is not
// being changed, and its turn comes with its own batch).
func (r *rolloutRunner) verifyLayers(ctx context.Context, lr *liveRollout, spec messages.FleetCluster, b *rolloutBatch) (bool, []string, string) {
	rec := lr.rec
	req := messages.VerifyRequest{V: messages.Version, Cluster: spec.Name, Layers: rec.Layers, Checks: spec.Require.Checks}
	var rep messages.Report
	var err error
	if r.verify != nil {
		rep, err = r.verify(ctx, req)
	} else {
		rep, _, err = r.c.ver.run(ctx, req)
	}
	if err != nil {
		return false, nil, truncate(err.Error(), 300)
	}
	inSpec := map[string]bool{}
	for _, n := range spec.Nodes {
		inSpec[n.Name] = true
	}
	lr.mu.Lock()
	ignore := map[string]bool{}
	for _, n := range spec.Nodes {
		if rec.nodeStatus(n.Name) == messages.RolloutNodeSkipped || (!slices.Contains(b.Nodes, n.Name) && !r.isOnline(n.Name)) {
			ignore[n.Name] = true
		}
	}
	lr.mu.Unlock()
	var failed, reasons []string
	counted := 0
	for _, l := range rep.Layers {
		if !slices.Contains(rec.Layers, l.Name) {
			continue
		}
		for _, ch := range l.Checks {
			if !inSpec[ch.Node] || ignore[ch.Node] {
				continue
			}
			counted++
			if ch.Status == messages.CheckFail || ch.Status == messages.CheckUnknown {
				failed = append(failed, ch.Name+"@"+ch.Node)
				if len(reasons) < 8 {
					reasons = append(reasons, ch.Name+"@"+ch.Node+" "+ch.Status+": "+truncate(ch.Message, 160))
				}
			}
		}
	}
	if len(failed) > 64 {
		failed = failed[:64]
	}
	if len(failed) > 0 {
		return false, failed, strings.Join(reasons, "; ")
	}
	return true, nil, fmt.Sprintf("%d checks passed", counted)
}

func cond(b bool, x, y string) string {
	if b {
		return x
	}
	return y
}

// rollbackBatch puts the batch's nodes back: the previous revision's spec
// re-applied (the same steps, planned and applied with the old spec), or,
// without one, this rollout's applies on them undone, last first.
func (r *rolloutRunner) rollbackBatch(ctx context.Context, lr *liveRollout, bi int) {
	rec := lr.rec
	b := rec.Batches[bi]
	var old messages.FleetCluster
	hasOld := false
	if rec.OldSpec != nil {
		old, hasOld = fleet.Cluster(rec.OldSpec, b.Cluster)
	}
	spec, _ := fleet.Cluster(&rec.Spec, b.Cluster)
	nodes := map[string]messages.FleetNode{}
	for _, n := range spec.Nodes {
		nodes[n.Name] = n
	}
	var targets []string
	lr.mu.Lock()
	for _, n := range b.Nodes {
		// A node offline has nothing of this rollout applied (it failed
		// waiting): it stays failed.
		if s := rec.nodeStatus(n); s != messages.RolloutNodeSkipped && s != messages.RolloutNodePending && r.isOnline(n) {
			targets = append(targets, n)
		}
	}
	lr.mu.Unlock()
	bad := map[string]string{}
	var mu sync.Mutex
	if hasOld {
		for _, name := range rec.Changed {
			st, ok := r.steps.Lookup(name)
			if !ok || !clusterWants(old, st.Layer) {
				continue
			}
			if st.Scope == steps.ScopeCluster {
				if !b.ClusterSteps {
					continue
				}
				if t := r.planTargets(old, st); len(t) > 0 {
					row := messages.RolloutStep{Batch: bi, Step: st.Name, Node: t[0].Name, Cluster: b.Cluster, Op: "rollback"}
					if msg := r.planApply(ctx, lr, old, st, t[0], &row); msg != "" {
						for _, n := range targets {
							bad[n] = "rollback of cluster step " + st.Name + ": " + msg
						}
					}
					r.addStep(lr, row)
				}
				continue
			}
			var wg sync.WaitGroup
			for _, n := range targets {
				node := nodes[n]
				if !st.AppliesTo(node.Role) {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					row := messages.RolloutStep{Batch: bi, Step: st.Name, Node: n, Cluster: b.Cluster, Op: "rollback"}
					start := time.Now()
					msg := r.planApply(ctx, lr, old, st, node, &row)
					row.DurationMS = time.Since(start).Milliseconds()
					r.addStep(lr, row)
					if msg != "" {
						mu.Lock()
						bad[n] = "rollback of " + st.Name + ": " + msg
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
		}
	} else {
		var wg sync.WaitGroup
		for _, n := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lr.mu.Lock()
				applied := slices.Clone(rec.Undo[n])
				lr.mu.Unlock()
				for i := len(applied) - 1; i >= 0; i-- {
					a := applied[i]
					st, ok := r.steps.Lookup(a.Step)
					row := messages.RolloutStep{Batch: bi, Step: a.Step, Node: n, Cluster: b.Cluster, Op: "rollback", Action: "undo", Outcome: outcomeUndone}
					if !ok {
						row.Outcome, row.Error = outcomeUndoFailed, "step no longer registered"
					} else {
						out, att, err := r.call(ctx, rec, spec, st, nodes[n], messages.StepOpUndo, a.Undo, r.inputs(lr, b.Cluster))
						row.Attempts = att
						if err != nil || out.ErrClass != "" {
							row.Outcome = outcomeUndoFailed
							_, row.Error = failure(out, err)
						}
					}
					r.addStep(lr, row)
					if row.Outcome != outcomeUndone {
						mu.Lock()
						bad[n] = "undo of " + a.Step + ": " + row.Error
						mu.Unlock()
					}
				}
				lr.update(func(rec *rolloutRecord) { delete(rec.Undo, n) })
			}()
		}
		wg.Wait()
	}
	lr.update(func(rec *rolloutRecord) {
		for _, n := range targets {
			if _, failed := bad[n]; failed {
				rec.setNode(n, messages.RolloutNodeFailed)
				rec.Diagnoses = append(rec.Diagnoses, messages.RolloutDiagnosis{Node: n, Cluster: b.Cluster, Failure: truncate(bad[n], messages.MaxRolloutText)})
			} else {
				rec.setNode(n, messages.RolloutNodeRolledBack)
			}
		}
	})
	r.save(ctx, lr)
	r.log.Info("rollout batch rolled back", zap.String("rollout", rec.ID), zap.Int("batch", bi+1), zap.Strings("nodes", targets),
		zap.Bool("previous_revision", hasOld), zap.Int("failed", len(bad)))
}

// diagnose records, for each failed node, the failure and the
// controller's diagnosis of it (root cause and fix).
func (r *rolloutRunner) diagnose(ctx context.Context, lr *liveRollout, cluster string, failures map[string]nodeFailure) {
	dctx, cancel := context.WithTimeout(ctx, messages.APITimeout(messages.APIDiagnose))
	defer cancel()
	lr.mu.Lock()
	touched := lr.rec.Layers // set when planned, never changed after
	lr.mu.Unlock()
	for _, n := range slices.Sorted(maps.Keys(failures)) {
		d := messages.RolloutDiagnosis{Node: n, Cluster: cluster, Failure: truncate(failures[n].why, messages.MaxRolloutText)}
		layers := touched
		if l := failures[n].layer; l != "" {
			layers = []string{l}
		}
		if r.verify == nil && r.isOnline(n) {
			if rep, err := r.c.diagnose(dctx, messages.DiagnoseRequest{V: messages.Version, Node: n}); err == nil {
				d.DiagnosisID = rep.ResultID
				d.RootCause, d.Fix = r.rootCause(dctx, rep.ResultID, n, layers)
			} else {
				d.RootCause = "diagnose failed: " + truncate(err.Error(), 200)
			}
		}
		if d.RootCause == "" {
			d.RootCause = d.Failure
		}
		lr.update(func(rec *rolloutRecord) {
			if len(rec.Diagnoses) < messages.MaxRolloutNodes {
				rec.Diagnoses = append(rec.Diagnoses, d)
			}
		})
	}
}

// rootCause reads a stored diagnosis and returns the root cause that
// best explains a failure in touched (the failed step's layer, or the
// change's layers when the gate failed), and its fix. Only findings that
// can explain it count (messages.CanExplain): a kubelet that is down does
// not explain a failed tailnet login, and naming it would send the
// operator the wrong way; of the host's findings only critical ones (a
// busy CPU does not refuse a connection). The best is in the failed layer
// itself before one below it before the host, about this node before
// another, critical before warning. With none, the failure itself stands
// as the cause.
func (r *rolloutRunner) rootCause(ctx context.Context, id, node string, touched []string) (string, string) {
	b, err := r.c.diagnoses.GetBytes(ctx, id)
	if err != nil {
		return "", ""
	}
	res, err := messages.Decode[messages.DiagnoseResult](b, 64<<20)
	if err != nil {
		return "", ""
	}
	pick := bestRootCause(res.Diagnosis.Findings, node, touched)
	if pick == nil {
		return "", ""
	}
	fix := pick.Suggestion
	if pick.Command != "" {
		fix += " (" + pick.Command + ")"
	}
	return truncate(pick.Title, messages.MaxRolloutText), truncate(fix, messages.MaxRolloutText)
}

// bestRootCause is rootCause's choice among a diagnosis' findings (nil
// when none can explain the failure).
func bestRootCause(findings []messages.Finding, node string, touched []string) *messages.Finding {
	var pick *messages.Finding
	best := 0
	for i := range findings {
		f := &findings[i]
		if f.Severity == "info" || !messages.CanExplain(f.Layer, touched) ||
			f.Layer == messages.LayerHost && f.Severity != "critical" {
			continue
		}
		score := 0 // lower is better
		switch {
		case f.Layer == messages.LayerHost:
			score += 8
		case !slices.Contains(touched, f.Layer):
			score += 4
		}
		if !slices.Contains(f.Nodes, node) && !slices.Contains(f.Affected, node) {
			score += 2
		}
		if f.Severity != "critical" {
			score++
		}
		if pick == nil || score < best {
			pick, best = f, score
		}
	}
	return pick
}

// finish ends a rollout with status.
func (r *rolloutRunner) finish(ctx context.Context, lr *liveRollout, status, reason string) {
	// The revision is marked applied before the status is final: from
	// then on a new rollout may start on these nodes (holdsLocked), and
	// it must start from this one's revision.
	if status == messages.RolloutSucceeded {
		var rev int64
		lr.update(func(rec *rolloutRecord) { rev = rec.ToRev })
		if err := r.revs.markApplied(ctx, rev); err != nil {
			r.log.Warn("mark revision applied", zap.Int64("revision", rev), zap.Error(err))
		}
	}
	lr.update(func(rec *rolloutRecord) {
		rec.Status, rec.Phase, rec.Control = status, phaseIdle, ""
		if reason != "" {
			rec.Reason = truncate(reason, 4*messages.MaxRolloutText)
		}
		rec.Finished = time.Now().UTC()
	})
	r.save(ctx, lr)
	if ctx.Err() != nil {
		return
	}
	r.release(lr.rec)
	select {
	case <-lr.done:
	default:
		close(lr.done)
	}
	r.log.Info("rollout finished", zap.String("rollout", lr.rec.ID), zap.String("status", status), zap.String("reason", reason))
}

// setControl handles pause, resume and abort.
func (r *rolloutRunner) setControl(ctx context.Context, id, verb string) (messages.RolloutStatusReply, error) {
	r.mu.Lock()
	lr := r.live[id]
	r.mu.Unlock()
	if lr == nil {
		if _, err := r.load(ctx, id); err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return messages.RolloutStatusReply{}, messages.Errorf(messages.CodeNotFound, "no rollout %q (see `controller rollout list`)", id)
			}
			return messages.RolloutStatusReply{}, err
		}
		return messages.RolloutStatusReply{}, messages.Errorf(messages.CodeConflict, "rollout %s has ended", id)
	}
	var status string
	var err error
	lr.update(func(rec *rolloutRecord) {
		status = rec.Status
		switch {
		case status != messages.RolloutRunning && status != messages.RolloutPaused:
			err = messages.Errorf(messages.CodeConflict, "rollout %s has ended (%s)", id, status)
		case verb == messages.APIRolloutPause:
			if status == messages.RolloutPaused {
				err = messages.Errorf(messages.CodeConflict, "rollout %s is already paused", id)
				return
			}
			rec.Control = controlPause
		case verb == messages.APIRolloutResume:
			if status != messages.RolloutPaused {
				if rec.Control == controlPause {
					rec.Control = "" // not paused yet: the request is withdrawn
					return
				}
				err = messages.Errorf(messages.CodeConflict, "rollout %s is not paused (%s)", id, status)
				return
			}
			// A batch that failed into the pause is re-run: its failed
			// nodes are pending again and no longer counted.
			if rec.Cursor < len(rec.Batches) {
				b := rec.Batches[rec.Cursor]
				if b.Status == messages.BatchFailed {
					for _, n := range b.Nodes {
						if rec.nodeStatus(n) == messages.RolloutNodeFailed {
							rec.setNode(n, messages.RolloutNodePending)
							rec.Failed--
						}
					}
					rec.Failed = max(rec.Failed, 0)
					b.Status, b.Finished = messages.BatchPending, nil
					rec.Waves[b.Wave].Status = messages.WaveRunning
				}
			}
			rec.Status, rec.Control, rec.Reason = messages.RolloutRunning, "", ""
		case verb == messages.APIRolloutAbort:
			rec.Control = controlAbort
		}
	})
	if err != nil {
		return messages.RolloutStatusReply{}, err
	}
	select {
	case lr.wake <- struct{}{}:
	default:
	}
	switch {
	case verb == messages.APIRolloutResume && status == messages.RolloutPaused:
		r.save(ctx, lr)
		r.run(lr)
	case verb == messages.APIRolloutAbort && status == messages.RolloutPaused:
		r.finish(ctx, lr, messages.RolloutAborted, "aborted by the operator while paused")
	default:
		r.save(ctx, lr)
	}
	r.log.Info("rollout control", zap.String("rollout", id), zap.String("verb", verb))
	return r.status(ctx, id)
}

// progress is where a live rollout is now.
func (r *rolloutRunner) progress(lr *liveRollout) messages.RolloutProgress {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	rec := lr.rec
	p := messages.RolloutProgress{V: messages.Version, ID: rec.ID, Status: rec.Status, Waves: len(rec.Waves), Batches: len(rec.Batches),
		Nodes: len(rec.Nodes), ETAMS: -1, Control: rec.Control}
	end := time.Now()
	if !rec.Finished.IsZero() {
		end = rec.Finished
	}
	p.ElapsedMS = end.Sub(rec.Started).Milliseconds()
	if rec.Cursor < len(rec.Batches) {
		b := rec.Batches[rec.Cursor]
		p.Batch, p.Wave, p.Cluster, p.Gate = rec.Cursor+1, b.Wave+1, b.Cluster, b.Gate.Status
	} else {
		p.Batch, p.Wave = len(rec.Batches), len(rec.Waves)
	}
	for _, n := range rec.Nodes {
		switch n.Status {
		case messages.RolloutNodeUpdating:
			p.Updating++
		case messages.RolloutNodeHealthy:
			p.Healthy++
		case messages.RolloutNodeFailed, messages.RolloutNodeRolledBack:
			p.Failed++
		case messages.RolloutNodeSkipped:
			p.Skipped++
		}
	}
	if len(rec.BatchMS) > 0 {
		var sum int64
		for _, ms := range rec.BatchMS {
			sum += ms
		}
		p.ETAMS = sum / int64(len(rec.BatchMS)) * int64(len(rec.Batches)-rec.Cursor)
	} else if rec.Status != messages.RolloutRunning {
		p.ETAMS = 0
	}
	return p
}

// status reports a rollout (the newest when id is "").
func (r *rolloutRunner) status(ctx context.Context, id string) (messages.RolloutStatusReply, error) {
	id, err := newestID(ctx, r.c.js, r.kv, id, "rollouts", "no rollout yet: run `controller rollout start -f FLEET.yaml`") // ids start with their UTC start time
	if err != nil {
		return messages.RolloutStatusReply{}, err
	}
	r.mu.Lock()
	lr := r.live[id]
	r.mu.Unlock()
	var rec *rolloutRecord
	var rep messages.RolloutStatusReply
	if lr != nil {
		p := r.progress(lr)
		rep.Progress = &p
		lr.mu.Lock()
		defer lr.mu.Unlock()
		rec = lr.rec
	} else {
		var err error
		if rec, err = r.load(ctx, id); err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return rep, messages.Errorf(messages.CodeNotFound, "no rollout %q (see `controller rollout list`)", id)
			}
			return rep, err
		}
	}
	rep.V, rep.Rollout, rep.Reason = messages.Version, rec.view(), rec.Reason
	rep.Diagnoses = slices.Clone(rec.Diagnoses)
	// The newest rows, within a reply's size.
	steps := rec.Steps
	if len(steps) > 500 {
		steps = steps[len(steps)-500:]
	}
	rep.Steps = slices.Clone(steps)
	// Within a reply: the newest rows that fit.
	for len(rep.Steps) > 0 {
		b, err := json.Marshal(&rep)
		if err != nil || len(b) <= r.c.opts.MaxMessageBytes-4096 {
			break
		}
		rep.Steps = rep.Steps[len(rep.Steps)/2+1:]
	}
	return rep, nil
}

// list summarizes every stored rollout, newest first.
func (r *rolloutRunner) list(ctx context.Context) (messages.RolloutListReply, error) {
	rep := messages.RolloutListReply{V: messages.Version, Rollouts: []messages.RolloutSummary{}}
	ids, err := kvKeys(ctx, r.c.js, r.kv.Bucket())
	if err != nil {
		return rep, fmt.Errorf("list rollouts: %w", err)
	}
	slices.Reverse(ids)
	if len(ids) > messages.MaxRolloutList {
		ids = ids[:messages.MaxRolloutList]
	}
	for _, id := range ids {
		var sum messages.RolloutSummary
		read := func(rec *rolloutRecord) {
			sum = messages.RolloutSummary{ID: id, Status: rec.Status, FromRevision: rec.FromRev, ToRevision: rec.ToRev,
				Started: rec.Started, Reason: truncate(rec.Reason, 300), Clusters: []string{}}
			for _, w := range rec.Waves {
				sum.Clusters = append(sum.Clusters, w.Clusters...)
			}
		}
		r.mu.Lock()
		lr := r.live[id]
		r.mu.Unlock()
		if lr != nil {
			lr.update(read)
		} else if rec, err := r.load(ctx, id); err == nil {
			read(rec)
		} else {
			continue
		}
		rep.Rollouts = append(rep.Rollouts, sum)
	}
	return rep, nil
}
