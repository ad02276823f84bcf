package controller

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// settleGrace is how long after a task's deadline the controller waits for
// results still in flight before it settles the missing ones as unknown.
const settleGrace = 2 * time.Second

// taskRecord is what is persisted for a task. Results live in the results
// stream, one message per node and task, so they are never rewritten here.
type taskRecord struct {
	Task        messages.Task `json:"task"`
	Targets     []string      `json:"targets"`
	SkipOffline bool          `json:"skip_offline,omitempty"`
	Done        bool          `json:"done,omitempty"`
}

type taskState struct {
	rec     taskRecord
	targets map[string]bool
	results map[string]messages.NodeResult
	started map[string]bool
	done    chan struct{}
	timer   *time.Timer
}

// dispatcher issues tasks, collects results and settles every targeted node
// to exactly one outcome.
//
// Durability: a task is written to the open-tasks bucket before it is sent;
// each result is stored in the MGN_RESULTS stream by the agent's JetStream
// publish (first write wins: publishes expect an empty subject); the
// controller's live subscription to mgn.res.> is only the fast path, and
// every open task is rebuilt from the stream after a restart.
type dispatcher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	results jetstream.Stream
	open    jetstream.KeyValue // id -> taskRecord while open
	history jetstream.KeyValue // id -> taskRecord, kept for the retention period
	reg     *registry
	log     *zap.Logger
	met     *metrics

	mu     sync.Mutex
	tasks  map[string]*taskState
	closed bool
}

func newTaskID(now time.Time) string {
	var b [5]byte
	rand.Read(b[:])
	return "t" + now.UTC().Format("20060102T150405") + "-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// issue creates a task for the nodes the request's selector picks.
func (d *dispatcher) issue(ctx context.Context, req messages.RunRequest) (messages.RunReply, error) {
	sel, err := parseSelector(req.Target)
	if err != nil {
		return messages.RunReply{}, messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	targets, states := d.reg.selectNodes(sel, time.Now())
	if len(targets) == 0 {
		return messages.RunReply{}, messages.Errorf(messages.CodeNotFound, "target %q matches no enrolled node (see `controller status`)", req.Target)
	}
	return d.issueTo(ctx, req, targets, states)
}

// issueTo creates a task for the given nodes and sends it.
func (d *dispatcher) issueTo(ctx context.Context, req messages.RunRequest, targets []string, states map[string]string) (messages.RunReply, error) {
	if err := messages.ValidClusterName(req.Kind); err != nil {
		return messages.RunReply{}, messages.Errorf(messages.CodeBadRequest, "kind: %v", err)
	}
	timeout := 30 * time.Second
	if req.Timeout != "" {
		timeout, _ = time.ParseDuration(req.Timeout) // validated by the decoder
	}
	now := time.Now().UTC()
	t := messages.Task{
		V: messages.Version, ID: newTaskID(now), Kind: req.Kind, Target: req.Target,
		Args: req.Args, Deadline: now.Add(timeout), IssuedAt: now,
	}
	ts := newTaskState(taskRecord{Task: t, Targets: targets, SkipOffline: req.SkipOffline})
	b, _ := json.Marshal(ts.rec)
	if _, err := d.open.Put(ctx, t.ID, b); err != nil {
		return messages.RunReply{}, fmt.Errorf("store task %s: %w", t.ID, err)
	}
	d.mu.Lock()
	d.tasks[t.ID] = ts
	d.mu.Unlock()
	d.met.tasksIssued.Inc()

	payload := messages.MustEncode(&t)
	var skipped []string
	for _, n := range targets {
		if req.SkipOffline && states[n] == messages.StateOffline {
			skipped = append(skipped, n)
			continue
		}
		if err := d.nc.Publish(messages.TaskSubject(n), payload); err != nil {
			d.log.Warn("send task", zap.String("task", t.ID), zap.String("node", n), zap.Error(err))
		}
	}
	for _, n := range skipped {
		d.settle(ctx, ts, n, messages.NodeResult{Node: n, Outcome: messages.OutcomeUnknown, Reason: messages.ReasonOffline})
	}
	d.arm(ts)
	return messages.RunReply{V: messages.Version, TaskID: t.ID, Nodes: targets, Deadline: t.Deadline}, nil
}

// wait blocks until the task is done or ctx ends, then reports it.
func (d *dispatcher) wait(ctx context.Context, id string) (messages.TaskReport, error) {
	for {
		rep, err := d.report(ctx, id, 10*time.Second)
		if err != nil || rep.Done {
			return rep, err
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
}

func newTaskState(rec taskRecord) *taskState {
	ts := &taskState{
		rec:     rec,
		targets: make(map[string]bool, len(rec.Targets)),
		results: make(map[string]messages.NodeResult, len(rec.Targets)),
		started: map[string]bool{},
		done:    make(chan struct{}),
	}
	for _, n := range rec.Targets {
		ts.targets[n] = true
	}
	return ts
}

func (d *dispatcher) arm(ts *taskState) {
	id := ts.rec.Task.ID
	ts.timer = time.AfterFunc(time.Until(ts.rec.Task.Deadline)+settleGrace, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.expire(ctx, id)
	})
}

// onResult is the live path for results published by agents.
func (d *dispatcher) onResult(m *nats.Msg) {
	node, id, err := messages.ParseResultSubject(m.Subject)
	if err != nil {
		d.met.refused("result", "bad_subject")
		return
	}
	r, err := messages.Decode[messages.Result](m.Data, d.met.maxBytes)
	if err != nil {
		d.met.refused("result", messages.CodeOf(err))
		d.log.Warn("refused result", zap.String("node", node), zap.String("task", id), zap.Error(err))
		return
	}
	if r.TaskID != id {
		d.met.refused("result", "id_mismatch")
		return
	}
	d.met.resultsReceived.Inc()
	d.mu.Lock()
	ts := d.tasks[id]
	d.mu.Unlock()
	if ts == nil {
		return // settled already, or a task from before a purge
	}
	d.settle(context.Background(), ts, node, nodeResult(node, r))
}

func nodeResult(node string, r messages.Result) messages.NodeResult {
	return messages.NodeResult{Node: node, Outcome: r.Outcome, Reason: r.Reason, DurationMS: r.DurationMS, Output: r.Output}
}

func (d *dispatcher) onAck(node string, a messages.Ack) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ts := d.tasks[a.TaskID]; ts != nil && a.Started {
		ts.started[node] = true
	}
}

// settle records one node's outcome if it has none yet; the first outcome
// wins. A controller-made outcome is also stored in the stream (unless one
// is there already, in which case that one is used).
func (d *dispatcher) settle(ctx context.Context, ts *taskState, node string, res messages.NodeResult) {
	d.mu.Lock()
	if _, have := ts.results[node]; have || !ts.targets[node] || d.closed {
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	if res.Outcome == messages.OutcomeUnknown && res.Reason != "" && !res.Pending {
		if stored, ok := d.storeUnknown(ctx, ts.rec.Task.ID, node, res); ok {
			res = stored
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, have := ts.results[node]; have {
		return
	}
	ts.results[node] = res
	d.met.outcome(string(res.Outcome))
	if len(ts.results) == len(ts.rec.Targets) {
		d.completeLocked(ts)
	}
}

// storeUnknown writes a controller-made outcome to the results stream. If
// the node's own result got there first, that result is returned instead.
func (d *dispatcher) storeUnknown(ctx context.Context, id, node string, res messages.NodeResult) (messages.NodeResult, bool) {
	r := messages.Result{V: messages.Version, TaskID: id, Node: node, Outcome: res.Outcome, Reason: res.Reason, Output: res.Output}
	subj := messages.ResultSubject(node, id)
	_, err := d.js.Publish(ctx, subj, messages.MustEncode(&r), jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		if stored, ok := d.lookup(ctx, node, id); ok {
			return stored, true
		}
	} else if err != nil {
		d.log.Warn("store outcome", zap.String("task", id), zap.String("node", node), zap.Error(err))
	}
	return res, false
}

// lookup reads a stored result from the stream.
func (d *dispatcher) lookup(ctx context.Context, node, id string) (messages.NodeResult, bool) {
	m, err := d.results.GetLastMsgForSubject(ctx, messages.ResultSubject(node, id))
	if err != nil {
		return messages.NodeResult{}, false
	}
	r, err := messages.Decode[messages.Result](m.Data, 0)
	if err != nil || r.TaskID != id {
		return messages.NodeResult{}, false
	}
	return nodeResult(node, r), true
}

// keepDone is how long a finished task stays in memory. Its results reach
// the controller through the live subscription before the stream has
// stored them, so reports of a task that just finished must come from
// memory, not from the stream.
const keepDone = 2 * time.Minute

func (d *dispatcher) completeLocked(ts *taskState) {
	if ts.timer != nil {
		ts.timer.Stop()
	}
	id := ts.rec.Task.ID
	close(ts.done)
	time.AfterFunc(keepDone, func() {
		d.mu.Lock()
		if d.tasks[id] == ts {
			delete(d.tasks, id)
		}
		d.mu.Unlock()
	})
	d.met.observeTask(time.Since(ts.rec.Task.IssuedAt))
	rec := ts.rec
	rec.Done = true
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, _ := json.Marshal(rec)
		if _, err := d.history.Put(ctx, id, b); err != nil {
			d.log.Warn("store task history", zap.String("task", id), zap.Error(err))
		}
		if err := d.open.Delete(ctx, id); err != nil {
			d.log.Warn("close task", zap.String("task", id), zap.Error(err))
		}
	}()
}

// expire settles every node still missing at the deadline: timed_out when it
// had started, expired when it never did.
func (d *dispatcher) expire(ctx context.Context, id string) {
	d.mu.Lock()
	ts := d.tasks[id]
	var missing []string
	if ts != nil {
		for _, n := range ts.rec.Targets {
			if _, ok := ts.results[n]; !ok {
				missing = append(missing, n)
			}
		}
	}
	d.mu.Unlock()
	for _, n := range missing {
		if r, ok := d.lookup(ctx, n, id); ok {
			d.settle(ctx, ts, n, r)
			continue
		}
		d.mu.Lock()
		started := ts.started[n]
		d.mu.Unlock()
		reason := messages.ReasonExpired
		if started {
			reason = messages.ReasonTimedOut
		}
		d.settle(ctx, ts, n, messages.NodeResult{Node: n, Outcome: messages.OutcomeUnknown, Reason: reason})
	}
}

// nodeRemoved settles a removed node's open tasks as unknown/offline.
func (d *dispatcher) nodeRemoved(ctx context.Context, node string) {
	d.mu.Lock()
	var open []*taskState
	for _, ts := range d.tasks {
		if _, ok := ts.results[node]; !ok && ts.targets[node] {
			open = append(open, ts)
		}
	}
	d.mu.Unlock()
	for _, ts := range open {
		d.settle(ctx, ts, node, messages.NodeResult{Node: node, Outcome: messages.OutcomeUnknown, Reason: messages.ReasonOffline,
			Output: json.RawMessage(`{"error":"node removed from the fleet"}`)})
	}
}

// pendingFor lists the open tasks node still owes a result for.
func (d *dispatcher) pendingFor(node string, now time.Time) []messages.Task {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []messages.Task
	for _, ts := range d.tasks {
		if _, ok := ts.results[node]; ok || !now.Before(ts.rec.Task.Deadline) || !ts.targets[node] {
			continue
		}
		out = append(out, ts.rec.Task)
	}
	return out
}

// report describes a task, waiting up to wait for it to finish.
func (d *dispatcher) report(ctx context.Context, id string, wait time.Duration) (messages.TaskReport, error) {
	d.mu.Lock()
	ts := d.tasks[id]
	d.mu.Unlock()
	if ts != nil && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ts.done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	if ts != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		return buildReport(ts.rec, ts.results, isClosed(ts.done)), nil
	}
	e, err := d.history.Get(ctx, id)
	if err != nil {
		if e, err = d.open.Get(ctx, id); err != nil {
			return messages.TaskReport{}, messages.Errorf(messages.CodeNotFound, "no task %q", id)
		}
	}
	var rec taskRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return messages.TaskReport{}, fmt.Errorf("task %s: %w", id, err)
	}
	res := map[string]messages.NodeResult{}
	for _, n := range rec.Targets {
		if r, ok := d.lookup(ctx, n, id); ok {
			res[n] = r
		}
	}
	return buildReport(rec, res, rec.Done), nil
}

func buildReport(rec taskRecord, res map[string]messages.NodeResult, done bool) messages.TaskReport {
	rep := messages.TaskReport{V: messages.Version, TaskID: rec.Task.ID, Kind: rec.Task.Kind, Target: rec.Task.Target,
		IssuedAt: rec.Task.IssuedAt, Deadline: rec.Task.Deadline, Done: done, Results: make([]messages.NodeResult, 0, len(rec.Targets))}
	for _, n := range rec.Targets {
		r, ok := res[n]
		if !ok {
			r = messages.NodeResult{Node: n, Pending: true}
		}
		rep.Results = append(rep.Results, r)
	}
	return rep
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// recover rebuilds open tasks after a restart from the open-tasks bucket and
// the results stream, settling those whose deadline has passed.
func (d *dispatcher) recover(ctx context.Context) error {
	keys, err := d.open.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list open tasks: %w", err)
	}
	var ids []string
	for k := range keys.Keys() {
		ids = append(ids, k)
	}
	for _, id := range ids {
		e, err := d.open.Get(ctx, id)
		if err != nil {
			continue
		}
		var rec taskRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			d.log.Warn("skip unreadable task record", zap.String("task", id), zap.Error(err))
			continue
		}
		ts := newTaskState(rec)
		for _, n := range rec.Targets {
			if r, ok := d.lookup(ctx, n, id); ok {
				ts.results[n] = r
			}
		}
		d.mu.Lock()
		d.tasks[id] = ts
		if len(ts.results) == len(rec.Targets) {
			d.completeLocked(ts)
			d.mu.Unlock()
			continue
		}
		d.mu.Unlock()
		d.arm(ts)
	}
	if len(ids) > 0 {
		d.log.Info("recovered open tasks", zap.Int("count", len(ids)))
	}
	return nil
}

func (d *dispatcher) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, ts := range d.tasks {
		if ts.timer != nil {
			ts.timer.Stop()
		}
	}
}
