package controller

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"slices"
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

// recoverGrace is how long a controller that recovers open tasks (after a
// restart or a failover) waits at least before it settles missing results
// as expired: agents that finished while no controller stored their
// results send them again on their next sync (every 2.5-7.5 s while
// results wait), and that must not lose them.
const recoverGrace = 10 * time.Second

// taskRecord is what is persisted for a task. Results live in the results
// stream (resultStore), so they are never rewritten here.
type taskRecord struct {
	Task        messages.Task `json:"task"`
	Targets     []string      `json:"targets"`
	SkipOffline bool          `json:"skip_offline,omitempty"`
	Done        bool          `json:"done,omitempty"`
}

// taskState is an open (or just finished) task in memory. Guarded by
// dispatcher.mu.
type taskState struct {
	rec taskRecord
	// rows has one row per target, in rec.Targets order; a row's Outcome
	// is "" until its node settles. idx maps a node to its row; it is nil
	// once the task is done and its results are stored.
	rows    []messages.NodeResult
	idx     map[string]int32
	settled int
	started map[string]bool // nodes that said they started (long tasks)
	done    chan struct{}
	timer   *time.Timer
	lastSeq uint64 // resultStore sequence of the last result settled
	// sealed is Task.Sealed, kept here only (never in rec, which is
	// stored) so that a resend on sync carries it; lost on a restart.
	sealed json.RawMessage
	// takesSealed: the task's issuer takes Result.Sealed (setup steps)
	// from dispatcher.sealedOut.
	takesSealed bool
	// notBefore, set on recovery, is the earliest the task may expire.
	notBefore time.Time
	// pushed is when the task was last sent to the nodes that owe an
	// outcome (repush).
	pushed time.Time
	// recoveredAt is when a new active controller rebuilt the task (zero
	// for a task issued here): its completion is the end of a failover
	// for the operator, logged with how long it took.
	recoveredAt time.Time
}

// pendingRow returns node's row if node is a target whose outcome is not
// settled yet.
func (ts *taskState) pendingRow(node string) (*messages.NodeResult, bool) {
	i, ok := ts.idx[node]
	if !ok || ts.rows[i].Outcome != "" {
		return nil, false
	}
	return &ts.rows[i], true
}

// owes reports whether node is a target with no outcome yet.
func (ts *taskState) owes(node string) bool {
	_, ok := ts.pendingRow(node)
	return ok
}

// dispatcher issues tasks, collects results and settles every targeted node
// to exactly one outcome.
//
// Durability: a task is written to the open-tasks bucket before it is sent.
// Agents publish results on mgn.res.NODE; the dispatcher settles
// each node's first outcome in memory (that is what a report shows at once)
// and queues it for the results stream (resultStore, batched). An agent
// keeps a result in its journal until a later sync says it is settled, and
// a task leaves the open bucket only after its results are stored, so a
// controller killed at any point loses nothing: open tasks are rebuilt from
// the bucket and the stream, and agents send again what is missing.
type dispatcher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	results jetstream.Stream
	store   *resultStore
	// ctx ends when the controller stops; background writes use it.
	ctx       context.Context
	cancel    context.CancelFunc
	stopStore context.CancelFunc
	maxBytes  int
	// recovered is closed once open tasks are rebuilt: until then the
	// dispatcher cannot tell an agent which results it may forget.
	recovered chan struct{}
	open      jetstream.KeyValue // id -> taskRecord while open
	history   jetstream.KeyValue // id -> taskRecord, kept for the retention period
	reg       *registry
	log       *zap.Logger
	met       *metrics
	// changed tells the dashboard a task finished (Controller.changed).
	changed func(kind string)
	// acting is the lease check (Controller.acting): nothing is issued or
	// settled without it.
	acting func() bool

	mu     sync.Mutex
	tasks  map[string]*taskState
	closed bool
	// sealedOut holds the sealed values nodes returned for tasks issued
	// with takesSealed (task -> node -> values) until the issuer takes
	// them: memory only, never stored.
	sealedOut map[string]map[string]json.RawMessage
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
	return d.issueSealed(ctx, req, targets, states, nil, false)
}

// issueSealed is issueTo for a task that carries sealed values (sent, never
// stored) and, with takesSealed, whose results' sealed values the issuer
// takes with takeSealed.
func (d *dispatcher) issueSealed(ctx context.Context, req messages.RunRequest, targets []string, states map[string]string, sealed json.RawMessage, takesSealed bool) (messages.RunReply, error) {
	if err := messages.ValidTaskKind(req.Kind); err != nil {
		return messages.RunReply{}, messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	if !d.acting() {
		return messages.RunReply{}, ErrNotActive
	}
	timeout := messages.DefaultRunTimeout
	if req.Timeout != "" {
		timeout, _ = time.ParseDuration(req.Timeout) // validated by the decoder
	}
	now := time.Now().UTC()
	t := messages.Task{
		V: messages.Version, ID: newTaskID(now), Kind: req.Kind, Target: req.Target,
		Args: req.Args, Deadline: now.Add(timeout), IssuedAt: now,
	}
	ts := newTaskState(taskRecord{Task: t, Targets: targets, SkipOffline: req.SkipOffline})
	ts.sealed, ts.takesSealed = sealed, takesSealed
	b, _ := json.Marshal(ts.rec) // without the sealed values
	if _, err := d.open.Put(ctx, t.ID, b); err != nil {
		return messages.RunReply{}, fmt.Errorf("store task %s: %w", t.ID, err)
	}
	d.mu.Lock()
	d.tasks[t.ID] = ts
	d.mu.Unlock()
	d.met.tasksIssued.Inc()

	sent := t
	sent.Sealed = sealed
	payload := messages.MustEncode(&sent)
	if !d.acting() {
		// Lost the lease while storing the task: the next active
		// controller finds it open and sends it (recover, sync).
		return messages.RunReply{}, ErrNotActive
	}
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
	d.mu.Lock()
	ts.pushed = time.Now()
	d.mu.Unlock()
	for _, n := range skipped {
		d.settle(ts, unknownResult(t.ID, n, messages.ReasonOffline, nil), nil)
	}
	d.arm(ts)
	return messages.RunReply{V: messages.Version, TaskID: t.ID, Nodes: targets, Deadline: t.Deadline}, nil
}

// repushEvery is how often an open task is sent again to the nodes that
// owe an outcome and have not said they started it. A task is pushed on
// core NATS, at most once: a push can be lost (a route to a peer that was
// paused is closed with what it buffered, and an agent that stayed
// connected to that peer does not sync again for a minute). An agent runs
// a task id at most once, so a push it already had is ignored, and one it
// finished is answered from its journal.
const repushEvery = 3 * time.Second

// repushAfterRecovery is when a task recovered by a new active controller
// is first sent again after the one resend of the activation
// (resendOwed): agents of the lost controller that were still
// reconnecting then, and whose own sync on reconnecting found no active
// controller yet, would otherwise wait a whole repushEvery (at 10,000
// agents a handful do). repushTick is how often repush looks.
const (
	repushAfterRecovery = time.Second
	repushTick          = 500 * time.Millisecond
)

// repush sends open tasks again (repushEvery) to the nodes that owe an
// outcome and have not acknowledged starting them.
func (d *dispatcher) repush(now time.Time) { d.push(now, false) }

// resendOwed sends every open task again to every node that owes an
// outcome, at once: the activation's resend (Controller.activate). An
// agent that finished it while no controller was active answers with the
// result from its journal (it never runs a task id twice); one still
// running it ignores it. Without this, agents that stayed connected to a
// surviving peer would resend only on their next periodic sync, seconds
// later.
func (d *dispatcher) resendOwed() { d.push(time.Time{}, true) }

// push is repush (all false: the tasks due, to the owing nodes that have
// not said they started) and resendOwed (all true: every open task, to
// every owing node, leaving the repush schedule as it is).
func (d *dispatcher) push(now time.Time, all bool) {
	type owed struct {
		payload []byte
		nodes   []string
	}
	var out []owed
	d.mu.Lock()
	for _, ts := range d.tasks {
		if isClosed(ts.done) {
			continue
		}
		if !all {
			if ts.pushed.IsZero() || now.Sub(ts.pushed) < repushEvery {
				continue
			}
			ts.pushed = now
		}
		var o owed
		for _, n := range ts.rec.Targets {
			if ts.owes(n) && (all || !ts.started[n]) {
				o.nodes = append(o.nodes, n)
			}
		}
		if len(o.nodes) == 0 {
			continue
		}
		t := ts.rec.Task
		t.Sealed = ts.sealed
		o.payload = messages.MustEncode(&t)
		out = append(out, o)
	}
	d.mu.Unlock()
	for _, o := range out {
		for _, n := range o.nodes {
			if !d.acting() {
				return
			}
			d.nc.Publish(messages.TaskSubject(n), o.payload)
		}
	}
}

// waitTarget blocks until no open task issued with target (the selector,
// e.g. a setup run's "setup:RUN") is left, or ctx ends. Each ends by its
// outcomes or its deadline.
func (d *dispatcher) waitTarget(ctx context.Context, target string) error {
	for {
		var open chan struct{}
		d.mu.Lock()
		for _, ts := range d.tasks {
			if ts.rec.Task.Target == target && !isClosed(ts.done) {
				open = ts.done
				break
			}
		}
		d.mu.Unlock()
		if open == nil {
			return nil
		}
		select {
		case <-open:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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
		rec:  rec,
		rows: make([]messages.NodeResult, len(rec.Targets)),
		idx:  make(map[string]int32, len(rec.Targets)),
		done: make(chan struct{}),
	}
	for i, n := range rec.Targets {
		ts.idx[n] = int32(i)
		ts.rows[i].Node = n
	}
	return ts
}

// arm starts the task's deadline timer. The timer is set under d.mu, as
// stop and completeLocked read it there; a task that finished (or a
// dispatcher that stopped) meanwhile gets no timer.
func (d *dispatcher) arm(ts *taskState) {
	id := ts.rec.Task.ID
	t := time.AfterFunc(max(time.Until(ts.rec.Task.Deadline)+settleGrace, time.Until(ts.notBefore)), func() {
		d.expire(id)
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-ts.done:
		t.Stop()
		return
	default:
	}
	if d.closed {
		t.Stop()
		return
	}
	ts.timer = t
}

// onResult takes a result an agent published. The node is the subject's,
// which the server binds to the agent's identity; the payload's is ignored.
func (d *dispatcher) onResult(m *nats.Msg) { d.result(m.Subject, m.Data) }

// applyHeld settles the results a standby held while a peer was lost
// (held.go), as heard live, and returns how many settled an outcome.
func (d *dispatcher) applyHeld(held []heldResult) int {
	n := 0
	for _, h := range held {
		if d.result(h.subject, h.data) {
			n++
		}
	}
	return n
}

// result handles one node's result, data published on subject, and
// reports whether it settled that node's outcome (false: refused, a
// duplicate, or for no open task).
func (d *dispatcher) result(subject string, data []byte) bool {
	node, err := messages.NodeFromSubject(messages.ResultPrefix, subject)
	if err != nil {
		d.met.refused("result", "bad_subject")
		return false
	}
	r, err := messages.Decode[messages.Result](data, d.met.maxBytes)
	if err != nil {
		d.met.refused("result", messages.CodeOf(err))
		d.log.Warn("refused result", zap.String("node", node), zap.Error(err))
		return false
	}
	id := r.TaskID
	d.met.resultsReceived.Inc()
	raw := data // stored as sent when it names its node truly
	if r.Node != node {
		r.Node, raw = node, nil
	}
	// Sealed values are never stored: they leave the result here and go
	// to the task's issuer in memory, if it takes them.
	sealed := r.Sealed
	if len(sealed) > 0 {
		r.Sealed, raw = nil, nil
	}
	d.mu.Lock()
	ts := d.tasks[id]
	d.mu.Unlock()
	if ts == nil {
		return false // closed already (this node's outcome is settled), or unknown
	}
	return d.settleSealed(ts, r, raw, sealed)
}

// takeSealed returns (and forgets) the sealed values node returned for
// task id, which must have been issued with takesSealed.
func (d *dispatcher) takeSealed(id, node string) json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.sealedOut[id][node]
	delete(d.sealedOut[id], node)
	if len(d.sealedOut[id]) == 0 {
		delete(d.sealedOut, id)
	}
	return v
}

// dropSealed forgets whatever sealed values are left for task id.
func (d *dispatcher) dropSealed(id string) {
	d.mu.Lock()
	delete(d.sealedOut, id)
	d.mu.Unlock()
}

func unknownResult(id, node, reason string, output json.RawMessage) messages.Result {
	return messages.Result{V: messages.Version, TaskID: id, Node: node, Outcome: messages.OutcomeUnknown, Reason: reason, Output: output}
}

func nodeResult(r messages.Result) messages.NodeResult {
	return messages.NodeResult{Node: r.Node, Outcome: r.Outcome, Reason: r.Reason, DurationMS: r.DurationMS, Output: r.Output}
}

func (d *dispatcher) onAck(node string, a messages.Ack) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ts := d.tasks[a.TaskID]; ts != nil && a.Started && ts.owes(node) {
		if ts.started == nil {
			ts.started = map[string]bool{}
		}
		ts.started[node] = true
	}
}

// settle records one node's outcome if it has none yet (the first outcome
// wins) and queues it for the results stream; raw, if set, is r encoded.
func (d *dispatcher) settle(ts *taskState, r messages.Result, raw []byte) {
	d.settleSealed(ts, r, raw, nil)
}

// settleSealed is settle for a result that came with sealed values (already
// stripped from r and raw): kept in memory for the issuer when it takes
// them, else dropped.
func (d *dispatcher) settleSealed(ts *taskState, r messages.Result, raw []byte, sealed json.RawMessage) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	row, ok := ts.pendingRow(r.Node)
	if !ok || d.closed || !d.acting() {
		return false
	}
	if len(sealed) > 0 {
		if ts.takesSealed {
			if d.sealedOut == nil {
				d.sealedOut = map[string]map[string]json.RawMessage{}
			}
			if d.sealedOut[r.TaskID] == nil {
				d.sealedOut[r.TaskID] = map[string]json.RawMessage{}
			}
			d.sealedOut[r.TaskID][r.Node] = sealed
		} else {
			d.log.Warn("dropped sealed values a node returned for a task that takes none", zap.String("task", r.TaskID), zap.String("node", r.Node))
		}
	}
	*row = nodeResult(r)
	ts.settled++
	if raw == nil {
		rr := r // only this copy escapes, and only here
		raw = messages.MustEncode(&rr)
	}
	ts.lastSeq = d.store.add(r.TaskID, raw)
	d.met.outcome(string(r.Outcome))
	if ts.settled == len(ts.rows) {
		d.completeLocked(ts)
	}
	return true
}

// doneLinger is how long a closed task stays in memory for its reports.
const doneLinger = 10 * time.Second

// completeLocked marks a task done. It is closed (moved from the open
// bucket to history) only once its results are stored: until then a
// restart must still find it open. Then, doneLinger later, it leaves
// memory: reports of a closed task come from history and the results
// stream, so the memory a controller holds follows its open tasks (and
// those closed in the last doneLinger), not its past ones.
func (d *dispatcher) completeLocked(ts *taskState) {
	if ts.timer != nil {
		ts.timer.Stop()
	}
	id := ts.rec.Task.ID
	close(ts.done)
	d.met.observeTask(time.Since(ts.rec.Task.IssuedAt))
	if !ts.recoveredAt.IsZero() {
		d.log.Info("recovered task done", zap.String("task", id), zap.Int("nodes", len(ts.rows)),
			zap.Duration("since_recovery", time.Since(ts.recoveredAt)), zap.Time("issued_at", ts.rec.Task.IssuedAt))
	}
	if d.changed != nil {
		d.changed("task")
	}
	rec := ts.rec
	rec.Done = true
	seq := ts.lastSeq
	go func() {
		if err := d.store.wait(d.ctx, seq); err != nil {
			return // the controller stops; the task stays open and is recovered
		}
		d.mu.Lock()
		ts.idx, ts.started = nil, nil // rows are all a done task needs
		d.mu.Unlock()
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		defer cancel()
		b, _ := json.Marshal(rec)
		if _, err := d.history.Put(ctx, id, b); err != nil {
			d.log.Warn("store task history", zap.String("task", id), zap.Error(err))
		} else if err := d.open.Delete(ctx, id); err != nil {
			d.log.Warn("close task", zap.String("task", id), zap.Error(err))
		}
		// Reports asked right after completion (an operator's `run`, then
		// `report`) come from memory a little longer: from history they
		// are JetStream reads, which wait while a stream's leadership
		// moves, as it does right after a failover (keepNoLeaders; the
		// failover bench's report of the recovered task once waited 10 s).
		select {
		case <-time.After(doneLinger):
		case <-d.ctx.Done():
		}
		d.mu.Lock()
		if d.tasks[id] == ts {
			delete(d.tasks, id)
		}
		d.mu.Unlock()
	}()
}

// expire settles every node still missing at the deadline: timed_out when it
// had started, expired when it never did.
func (d *dispatcher) expire(id string) {
	d.mu.Lock()
	ts := d.tasks[id]
	var missing []string
	if ts != nil {
		for _, n := range ts.rec.Targets {
			if ts.owes(n) {
				missing = append(missing, n)
			}
		}
	}
	d.mu.Unlock()
	for _, n := range missing {
		d.mu.Lock()
		started := ts.started[n]
		d.mu.Unlock()
		reason, output := messages.ReasonExpired, json.RawMessage(nil)
		if started {
			reason = messages.ReasonTimedOut
			// A node that started the task and stopped beating has died
			// mid-task (its heartbeats run beside tasks): that is offline,
			// not a task that ran too long.
			if st, ok := d.reg.state(n); ok && st != messages.StateOnline {
				reason = messages.ReasonOffline
				output = json.RawMessage(`{"error":"the node stopped sending heartbeats while it ran the task (` + st + `)"}`)
			}
		}
		d.settle(ts, unknownResult(id, n, reason, output), nil)
	}
}

// nodeRemoved settles a removed node's open tasks as unknown/offline.
func (d *dispatcher) nodeRemoved(node string) {
	d.mu.Lock()
	var open []*taskState
	for _, ts := range d.tasks {
		if ts.owes(node) {
			open = append(open, ts)
		}
	}
	d.mu.Unlock()
	for _, ts := range open {
		d.settle(ts, unknownResult(ts.rec.Task.ID, node, messages.ReasonOffline, json.RawMessage(`{"error":"node removed from the fleet"}`)), nil)
	}
}

// owedBy lists the open tasks node owes an outcome for (also those past
// their deadline that are not settled yet), once every outcome received
// so far is stored: whatever the node sent for a task not listed is
// therefore settled (see messages.SyncReply).
func (d *dispatcher) owedBy(ctx context.Context, node string) ([]messages.Task, error) {
	d.mu.Lock()
	var out []messages.Task
	for _, ts := range d.tasks {
		if ts.owes(node) {
			t := ts.rec.Task
			t.Sealed = ts.sealed
			out = append(out, t)
		}
	}
	d.mu.Unlock()
	if err := d.store.wait(ctx, d.store.last()); err != nil {
		return nil, err
	}
	return out, nil
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
		done := isClosed(ts.done)
		rep := reportHeader(ts.rec, done)
		if done {
			rep.Results = ts.rows // every row settled: they no longer change
			return rep, nil
		}
		rep.Results = slices.Clone(ts.rows)
		for i := range rep.Results {
			if rep.Results[i].Outcome == "" {
				rep.Results[i].Pending = true
			}
		}
		return rep, nil
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
	stored, err := storedResults(ctx, d.results, id, d.maxBytes)
	if err != nil {
		return messages.TaskReport{}, err
	}
	rep := reportHeader(rec, rec.Done)
	rep.Results = make([]messages.NodeResult, len(rec.Targets))
	for i, n := range rec.Targets {
		if r, ok := stored[n]; ok {
			rep.Results[i] = nodeResult(r)
		} else {
			rep.Results[i] = messages.NodeResult{Node: n, Pending: true}
		}
	}
	return rep, nil
}

func reportHeader(rec taskRecord, done bool) messages.TaskReport {
	return messages.TaskReport{V: messages.Version, TaskID: rec.Task.ID, Kind: rec.Task.Kind, Target: rec.Task.Target,
		IssuedAt: rec.Task.IssuedAt, Deadline: rec.Task.Deadline, Done: done}
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
	defer close(d.recovered)
	// No consumer (kvEntries): a failover must not wait for a JetStream
	// meta leader.
	entries, err := kvEntries(ctx, d.js, d.open.Bucket())
	if err != nil {
		return fmt.Errorf("list open tasks: %w", err)
	}
	for _, e := range entries {
		id := e.Key
		var rec taskRecord
		if err := json.Unmarshal(e.Value, &rec); err != nil {
			d.log.Warn("skip unreadable task record", zap.String("task", id), zap.Error(err))
			continue
		}
		ts := newTaskState(rec)
		ts.recoveredAt = time.Now()
		ts.notBefore = ts.recoveredAt.Add(recoverGrace)
		// resendOwed sends it once the activation is done; repush again
		// repushAfterRecovery later.
		ts.pushed = time.Now().Add(repushAfterRecovery - repushEvery)
		stored, err := storedResults(ctx, d.results, id, d.maxBytes)
		if err != nil {
			return err
		}
		for n, r := range stored {
			if row, ok := ts.pendingRow(n); ok {
				*row = nodeResult(r)
				ts.settled++
			}
		}
		d.mu.Lock()
		d.tasks[id] = ts
		if ts.settled == len(ts.rows) {
			d.completeLocked(ts)
			d.mu.Unlock()
			continue
		}
		d.mu.Unlock()
		d.arm(ts)
	}
	if len(entries) > 0 {
		d.log.Info("recovered open tasks", zap.Int("count", len(entries)))
	}
	return nil
}

func newDispatcher(c *Controller, results jetstream.Stream, open, history jetstream.KeyValue) *dispatcher {
	d := &dispatcher{nc: c.nc, js: c.js, results: results, open: open, history: history,
		reg: c.reg, log: c.log.Named("dispatch"), met: c.met, tasks: map[string]*taskState{},
		maxBytes: c.opts.MaxMessageBytes, recovered: make(chan struct{}), changed: c.changed, acting: c.acting}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.store = newResultStore(c.js, d.log, c.opts.MaxMessageBytes)
	d.store.acting = c.acting
	var storeCtx context.Context
	storeCtx, d.stopStore = context.WithCancel(context.Background())
	go d.store.run(storeCtx, 5*time.Second)
	return d
}

// stop settles nothing more, stores what is queued, and ends background
// work.
func (d *dispatcher) stop() {
	d.mu.Lock()
	d.closed = true
	for _, ts := range d.tasks {
		if ts.timer != nil {
			ts.timer.Stop()
		}
	}
	d.mu.Unlock()
	d.stopStore()
	<-d.store.done
	d.cancel()
}
