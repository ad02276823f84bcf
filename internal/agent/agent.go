// Package agent is the node agent's runtime: it enrolls once with a join
// token, then connects with its own NKey identity, sends heartbeats with
// the node's facts, receives tasks (live, and on every reconnect by asking
// for what it still owes), runs them from the task registry with their
// deadlines, and publishes each result, keeping it in its journal until a
// later sync says the controller has stored it.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// Config configures an agent.
type Config struct {
	// ControllerURL is the controller (comma-separated: every peer of a
	// cluster). With ControllerFromToken (the operator gave no
	// --controller), the join token's URLs replace it on the first start
	// and the URLs the node enrolled with on later ones.
	ControllerURL       string
	ControllerFromToken bool
	Token               string // join token; needed only for the first start
	Name                string
	// Cluster, Role and Labels are what the node asks to be when it
	// enrolls. After that its claims are the controller's (the join token's
	// scope, `controller nodes set`): the agent learns them from the
	// enrollment and sync replies and keeps them in the state dir.
	Cluster  string
	Role     string
	Labels   map[string]string
	StateDir string
	Settings config.Settings
	Tasks    *tasks.Registry // default tasks.Builtin()
	Version  string
	Log      *zap.Logger
	// MaxConcurrent bounds tasks running at once (default 8).
	MaxConcurrent int
	// MaxMessageBytes bounds payloads (default 1 MiB; the controller's
	// value wins after enrollment).
	MaxMessageBytes int
	// FactsEvery is how often heartbeats carry full facts (default 60s).
	FactsEvery time.Duration
	// ClaimsEvery is how often an idle agent asks whether the operator
	// changed its claims (default 60s).
	ClaimsEvery time.Duration
	// SettleEvery is how often the agent syncs while results wait to be
	// settled (default 5s; see outbox and sync).
	SettleEvery time.Duration
	// Journal overrides the on-disk task journal (simulated agents).
	Journal Journal
	// FaultTaskDelay delays the start of every task (fault injection for
	// tests: a slow agent).
	FaultTaskDelay time.Duration
	// TrimMemory makes the agent return start-up pages and freed heap to
	// the kernel when idle (see trimMemory). It is a process-wide action:
	// the agent binary sets it; many agents in one process must not.
	TrimMemory bool
	// NATSOptions are appended to the connection options (custom dialer
	// for the tailnet, TLS, ...).
	NATSOptions []nats.Option
	// Tailnet says how to reach the controller over the tailnet
	// (tailnet.go); the zero value is off.
	Tailnet TailnetConfig
}

// Agent is a running agent.
type Agent struct {
	cfg  Config
	log  *zap.Logger
	kp   nkeys.KeyPair
	pub  string
	nc   *nats.Conn
	jrnl Journal
	sem  chan struct{}

	interval  atomic.Int64 // heartbeat interval, ns
	needFacts atomic.Bool
	seq       atomic.Uint64
	refused   atomic.Uint64 // malformed tasks refused

	ready chan struct{} // closed once nc is set
	taskCounter

	// base is the parent of every task's context; Run cancels it on the
	// way out and waits for the tasks (tasksWG), so nothing writes the
	// journal after Run has returned.
	base       context.Context
	cancelBase context.CancelFunc
	tasksWG    sync.WaitGroup

	mu      sync.Mutex
	running map[string]bool
	sentAt  map[string]time.Time   // results published and not yet settled
	logs    map[string]*zap.Logger // per task kind
	kick    chan struct{}          // wakes the outbox
	facts   messages.Facts
	claims  messages.NodeClaims // what the controller says this node is
	syncMu  sync.Mutex          // one sync at a time

	tn *tailnetState // nil when not on the tailnet
}

// ErrEnrollRefused means the controller would not enroll this node; retrying
// with the same token will not help.
var ErrEnrollRefused = errors.New("enrollment refused")

// errEnrollLater is a refusal the controller says is transient
// (messages.Retryable): the agent asks again with backoff.
var errEnrollLater = errors.New("controller asks to retry the enrollment")

// New validates cfg and loads the node's state.
func New(cfg Config) (*Agent, error) {
	if err := messages.ValidNodeName(cfg.Name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if cfg.Cluster != "" {
		if err := messages.ValidClusterName(cfg.Cluster); err != nil {
			return nil, fmt.Errorf("--cluster: %w", err)
		}
	}
	if cfg.Role != "" {
		if err := messages.ValidRoleName(cfg.Role); err != nil {
			return nil, fmt.Errorf("--role: %w", err)
		}
	}
	if err := messages.ValidateLabels(cfg.Labels); err != nil {
		return nil, fmt.Errorf("--label: %w", err)
	}
	if cfg.ControllerURL == "" {
		return nil, errors.New("--controller: missing (e.g. nats://127.0.0.1:4222)")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("--state-dir: missing")
	}
	if cfg.Tasks == nil {
		cfg.Tasks = tasks.Builtin()
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 8
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = messages.DefaultMaxMessageBytes
	}
	if cfg.FactsEvery <= 0 {
		cfg.FactsEvery = time.Minute
	}
	if cfg.SettleEvery <= 0 {
		cfg.SettleEvery = 5 * time.Second
	}
	if cfg.ClaimsEvery <= 0 {
		cfg.ClaimsEvery = time.Minute
	}
	a := &Agent{cfg: cfg, log: cfg.Log, sem: make(chan struct{}, cfg.MaxConcurrent),
		running: map[string]bool{}, sentAt: map[string]time.Time{}, kick: make(chan struct{}, 1), ready: make(chan struct{})}
	a.interval.Store(int64(5 * time.Second))
	a.base, a.cancelBase = context.WithCancel(context.Background())
	var err error
	if a.kp, err = loadIdentity(cfg.StateDir, a.log); err != nil {
		return nil, err
	}
	a.pub, _ = a.kp.PublicKey()
	a.jrnl = cfg.Journal
	if a.jrnl == nil {
		if a.jrnl, err = OpenFileJournal(filepath.Join(cfg.StateDir, journalDir)); err != nil {
			return nil, err
		}
	}
	a.facts = tasks.CollectFacts(cfg.Version)
	if err := a.adoptToken(); err != nil {
		return nil, err
	}
	return a, nil
}

// Run enrolls if needed, then serves until ctx ends. It returns an error
// only for what retrying cannot fix (a refused token, a state dir that
// belongs to another node).
func (a *Agent) Run(ctx context.Context) error {
	st, err := loadNodeState(a.cfg.StateDir)
	if err != nil {
		return err
	}
	if st.Name != "" && st.Name != a.cfg.Name {
		return fmt.Errorf("state dir %s belongs to node %q, not %q: use another --state-dir", a.cfg.StateDir, st.Name, a.cfg.Name)
	}
	if st.Enrolled && st.Controller != "" && a.cfg.ControllerFromToken {
		a.cfg.ControllerURL = st.Controller // as enrolled (the join token's URLs)
	}
	if st.Claims != nil {
		a.adoptClaims(*st.Claims, false)
	} else {
		// Not enrolled yet, or enrolled by an older agent: until the
		// controller says otherwise, the node is what it asked to be.
		a.mu.Lock()
		a.claims = messages.NodeClaims{Cluster: a.cfg.Cluster, Role: a.cfg.Role, Labels: a.cfg.Labels}
		a.mu.Unlock()
	}
	stopTailnet, err := a.startTailnet(ctx)
	if err != nil {
		return err
	}
	defer stopTailnet()
	if !st.Enrolled {
		if a.cfg.Token == "" {
			return errors.New("this node is not enrolled yet: pass --token (create one with `controller token create`)")
		}
		if err := a.enroll(ctx); err != nil {
			return err
		}
		cl := a.currentClaims()
		if err := saveNodeState(a.cfg.StateDir, nodeState{Name: a.cfg.Name, Controller: a.cfg.ControllerURL, Enrolled: true, Claims: &cl}); err != nil {
			return err
		}
	} else if a.cfg.Token != "" {
		a.log.Info("this node is enrolled already: the join token is not needed and was not used (remove it from the configuration)")
	}
	a.cfg.Token = "" // never needed again
	if err := a.connect(); err != nil {
		return err
	}
	defer a.nc.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.heartbeats(ctx) }()
	go func() { defer wg.Done(); a.outbox(ctx) }()
	if a.cfg.TrimMemory {
		go a.trimMemory(ctx)
	}
	<-ctx.Done()
	a.cancelBase()
	a.tasksWG.Wait()
	wg.Wait()
	a.nc.Drain()
	return nil
}

func backoff(attempt int) time.Duration {
	d := 250 * time.Millisecond << min(attempt, 7) // up to 32 s
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d) // full jitter around the mean
}

// enroll exchanges the join token for this node's identity, retrying with
// backoff while the controller cannot be reached or says the refusal is
// transient; a permanent refusal (bad, expired or used token, a taken
// name, a scope the request breaks) ends it at once.
func (a *Agent) enroll(ctx context.Context) error {
	req := messages.EnrollRequest{V: messages.Version, Name: a.cfg.Name, Cluster: a.cfg.Cluster,
		Role: a.cfg.Role, Labels: a.cfg.Labels, Facts: a.facts}
	for attempt := 0; ; attempt++ {
		err := a.enrollOnce(ctx, req)
		if err == nil || errors.Is(err, ErrEnrollRefused) {
			return err
		}
		if errors.Is(err, errEnrollLater) {
			a.log.Info("enrollment: the controller cannot answer now, retrying", zap.String("controller", a.cfg.ControllerURL), zap.Error(err))
		} else {
			a.log.Warn("enrollment: controller not reachable, retrying", zap.String("controller", a.cfg.ControllerURL), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff(attempt)):
		}
	}
}

func (a *Agent) enrollOnce(ctx context.Context, req messages.EnrollRequest) error {
	opts := append([]nats.Option{nats.Token(a.cfg.Token), nats.Nkey(a.pub, a.kp.Sign),
		nats.CustomInboxPrefix(messages.EnrollInbox(a.pub)), nats.Name("enroll:" + a.cfg.Name),
		nats.NoReconnect(), nats.Timeout(5 * time.Second)}, a.cfg.NATSOptions...)
	nc, err := nats.Connect(a.cfg.ControllerURL, opts...)
	if err != nil {
		if isAuthErr(err) {
			return fmt.Errorf("%w: the controller did not accept the join token (expired, already used, or not from this controller): create a new one with `controller token create`", ErrEnrollRefused)
		}
		return fmt.Errorf("connect %s: %w", a.cfg.ControllerURL, err)
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, messages.EnrollSubject(a.pub), messages.MustEncode(&req))
	if err != nil {
		return fmt.Errorf("enroll request: %w", err)
	}
	if rep, err := messages.Decode[messages.EnrollReply](m.Data, a.cfg.MaxMessageBytes); err == nil {
		a.adopt(rep.HeartbeatInterval)
		if rep.Node != nil {
			a.adoptClaims(*rep.Node, false)
		}
		if rep.MaxMessageBytes > 0 {
			a.cfg.MaxMessageBytes = rep.MaxMessageBytes
		}
		a.log.Info("enrolled", zap.String("node", rep.Name), zap.String("controller", a.cfg.ControllerURL))
		return nil
	}
	if e, err := messages.Decode[messages.ErrorReply](m.Data, a.cfg.MaxMessageBytes); err == nil {
		if messages.Retryable(e.Code) {
			// Busy, a failover, or the peer's notice of this attempt not
			// arrived yet: nothing is wrong with the token.
			return fmt.Errorf("%w (%s): %s", errEnrollLater, e.Code, e.Error)
		}
		return fmt.Errorf("%w: %s", ErrEnrollRefused, e.Error)
	}
	return fmt.Errorf("%w: unreadable reply", ErrEnrollRefused)
}

func isAuthErr(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization")
}

func (a *Agent) adopt(interval string) {
	if d, err := time.ParseDuration(interval); err == nil && d >= 10*time.Millisecond && d <= 10*time.Minute {
		a.interval.Store(int64(d))
	}
}

// connect opens the long-lived connection. It reconnects forever with
// jittered backoff, also after authorization errors (the operator may fix
// them), and re-syncs on every (re)connect.
func (a *Agent) connect() error {
	var authLogged atomic.Int64
	opts := append([]nats.Option{
		nats.Nkey(a.pub, a.kp.Sign),
		nats.Name("agent:" + a.cfg.Name),
		nats.CustomInboxPrefix(messages.NodeInbox(a.cfg.Name)),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(func(attempts int) time.Duration { return backoff(attempts) }),
		nats.ReconnectBufSize(-1), // a heartbeat queued while away is stale; results are retried from the journal
		nats.PingInterval(20 * time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) { a.onConnect(nc, "connected") }),
		nats.ReconnectHandler(func(nc *nats.Conn) { a.onConnect(nc, "reconnected") }),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			// At debug: while a controller is down every pass over the
			// URLs fails once per dead server.
			a.log.Debug("reconnect attempt failed", zap.Error(err))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				a.log.Warn("disconnected from controller", zap.Error(err))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if isAuthErr(err) {
				if now := time.Now().Unix(); now-authLogged.Swap(now) >= 60 {
					a.log.Error("the controller refuses this node's identity (was it removed with `controller nodes remove`?); to rejoin, enroll again with a new --state-dir and token", zap.Error(err))
				}
				return
			}
			a.log.Warn("nats", zap.Error(err))
		}),
	}, a.cfg.NATSOptions...)
	nc, err := nats.Connect(a.cfg.ControllerURL, opts...)
	if err != nil {
		return fmt.Errorf("connect %s: %w", a.cfg.ControllerURL, err)
	}
	a.nc = nc
	close(a.ready)
	if _, err := nc.Subscribe(messages.TaskSubject(a.cfg.Name), func(m *nats.Msg) { a.receive(m.Data) }); err != nil {
		return fmt.Errorf("subscribe to tasks: %w", err)
	}
	return nil
}

func (a *Agent) onConnect(nc *nats.Conn, what string) {
	a.log.Info(what+" to controller", zap.String("url", nc.ConnectedUrlRedacted()))
	a.needFacts.Store(true)
	go func() {
		<-a.ready // the callback can fire before Connect has returned
		a.sendUnsettled()
		a.sync(settleAfter, true)
	}()
}

// sendUnsettled publishes at once the results still waiting to be settled
// whose task is not past its deadline (the controller has settled those
// without them). After a failover no controller answers a sync until one
// is active; a result published meanwhile is heard by the standbys, which
// hold results while a peer is lost (controller/held.go), so the new
// active controller has it without asking. The sync that follows skips
// what was just sent.
func (a *Agent) sendUnsettled() {
	now := time.Now()
	for _, e := range a.jrnl.Unsettled() {
		if e.Result != nil && e.Deadline.After(now) {
			a.send(e.TaskID, e.Result)
		}
	}
}

// sync asks the controller which tasks this node owes an outcome for (see
// messages.SyncReply): it forgets the results it had sent for every other
// task, sends again those of listed tasks (unless sent less than
// settleAfter ago: they are probably on their way), and runs the listed
// tasks it has not seen, which is the store-and-forward half of delivery.
// A sync that is not forced asks nothing when no result is waiting; the
// reply also carries the node's claims when they changed (adoptClaims).
func (a *Agent) sync(settleAfter time.Duration, force bool) {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	for attempt := 0; attempt < 3; {
		// Only results finished before asking can be settled by the
		// answer: a task issued meanwhile is not in it yet.
		waiting := a.jrnl.Unsettled()
		if !force && len(waiting) == 0 {
			return
		}
		asked := time.Now()
		// Bounded by the agent's life too: a sync must not hold up Run's
		// return (the outbox that calls it is waited for).
		ctx, cancel := context.WithTimeout(a.base, 10*time.Second)
		m, err := a.nc.RequestWithContext(ctx, messages.SyncSubject(a.cfg.Name), messages.MustEncode(&messages.SyncRequest{V: messages.Version, ClaimsRev: a.currentClaims().Rev}))
		cancel()
		if a.base.Err() != nil {
			return // stopping
		}
		if err != nil {
			a.log.Debug("sync: no answer", zap.Int("attempt", attempt), zap.Error(err))
			if !a.nc.IsConnected() {
				return // the next reconnect syncs again
			}
			// The retry's answer resends whatever it lists: what was sent
			// before may have reached nobody.
			settleAfter = 0
			select {
			case <-time.After(backoff(attempt)):
			case <-a.base.Done():
				return
			}
			if attempt == 0 && force && errors.Is(err, nats.ErrNoResponders) {
				// No controller is active (a failover), and this agent
				// may have reconnected before the standbys began holding
				// results (controller/held.go, within 50 ms of a peer's
				// loss): once more, after the wait. Only once: at 10,000
				// agents every extra send is load on the survivors.
				a.sendUnsettled()
			}
			attempt++
			continue
		}
		rep, derr := messages.Decode[messages.SyncReply](m.Data, a.cfg.MaxMessageBytes)
		if derr != nil {
			a.log.Warn("sync: bad reply", zap.Error(derr))
			return
		}
		a.adopt(rep.HeartbeatInterval)
		if rep.Node != nil {
			a.adoptClaims(*rep.Node, true)
		}
		owed := make(map[string]bool, len(rep.Tasks))
		for _, t := range rep.Tasks {
			owed[t.ID] = true
		}
		for _, e := range waiting {
			if !owed[e.TaskID] {
				a.settled(e)
			}
		}
		for _, t := range rep.Tasks {
			a.mu.Lock()
			at, sent := a.sentAt[t.ID]
			a.mu.Unlock()
			if sent && asked.Sub(at) < settleAfter {
				continue // just sent
			}
			a.handle(t) // runs it, or sends its result again
		}
		return
	}
}

// settled forgets a result the controller has stored. The entry stays
// (a task id is never run twice) without the result.
func (a *Agent) settled(e Entry) {
	e.Settled, e.Result = true, nil
	if err := a.jrnl.Put(e); err != nil {
		a.log.Warn("journal", zap.Error(err))
	}
	a.mu.Lock()
	delete(a.sentAt, e.TaskID)
	a.mu.Unlock()
}

func (a *Agent) heartbeats(ctx context.Context) {
	var lastFacts time.Time
	for {
		iv := time.Duration(a.interval.Load())
		jitter := time.Duration(rand.Int64N(int64(iv)/10+1)) - iv/20
		select {
		case <-ctx.Done():
			return
		case <-time.After(iv + jitter):
		}
		if !a.nc.IsConnected() {
			continue
		}
		hb := messages.Heartbeat{V: messages.Version, Seq: a.seq.Add(1), Time: time.Now().UTC(), Running: a.runningIDs()}
		if a.needFacts.Swap(false) || time.Since(lastFacts) >= a.cfg.FactsEvery {
			f := tasks.CollectFacts(a.cfg.Version)
			a.addTailnetFacts(&f)
			hb.Facts = &f
			lastFacts = time.Now()
		}
		a.nc.Publish(messages.HeartbeatSubject(a.cfg.Name), messages.MustEncode(&hb))
	}
}

// SendHeartbeat sends one heartbeat now (simulated agents and tests).
func (a *Agent) SendHeartbeat() error {
	f := a.facts
	hb := messages.Heartbeat{V: messages.Version, Seq: a.seq.Add(1), Time: time.Now().UTC(), Facts: &f}
	return a.nc.Publish(messages.HeartbeatSubject(a.cfg.Name), messages.MustEncode(&hb))
}

func (a *Agent) runningIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.running) == 0 {
		return nil
	}
	ids := make([]string, 0, len(a.running))
	for id := range a.running {
		ids = append(ids, id)
	}
	return ids
}

// receive handles a pushed task payload.
func (a *Agent) receive(data []byte) {
	t, err := messages.Decode[messages.Task](data, a.cfg.MaxMessageBytes)
	if err != nil {
		a.refused.Add(1)
		a.log.Warn("refused task", zap.Error(err))
		// Answer what can be answered: if the id is readable, the
		// controller gets a rejected outcome instead of a timeout.
		var probe struct {
			ID string `json:"id"`
		}
		if len(data) <= a.cfg.MaxMessageBytes && json.Unmarshal(data, &probe) == nil && messages.ValidTaskID(probe.ID) == nil {
			a.finish(messages.Task{ID: probe.ID, Deadline: time.Now().Add(time.Hour)}, time.Time{}, messages.Result{
				Outcome: messages.OutcomeUnknown, Reason: messages.ReasonRejected,
				Output: errOutput(fmt.Sprintf("refused: %v", err))})
		}
		return
	}
	a.handle(t)
}

// Refused counts malformed tasks this agent refused.
func (a *Agent) Refused() uint64 { return a.refused.Load() }

func errOutput(msg string) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"error": msg})
	return b
}

// handle runs a task unless this node has seen it: then it re-sends the
// stored result, or reports a task that an earlier run of the agent
// started but did not finish. A task id is never run twice.
func (a *Agent) handle(t messages.Task) {
	a.mu.Lock()
	if a.running[t.ID] {
		a.mu.Unlock()
		return
	}
	if e, seen := a.jrnl.Get(t.ID); seen {
		a.mu.Unlock()
		if e.Settled {
			return // done, and the controller has stored its result
		}
		if e.Done && e.Result != nil {
			a.publish(e)
			return
		}
		a.finish(t, time.Time{}, messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonOffline,
			Output: errOutput("the agent restarted while this task ran; it is not run twice")})
		return
	}
	now := time.Now()
	if !now.Before(t.Deadline) {
		a.mu.Unlock()
		a.finish(t, time.Time{}, messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonExpired,
			Output: errOutput(fmt.Sprintf("received %s after its deadline", now.Sub(t.Deadline).Round(time.Millisecond)))})
		return
	}
	task, ok := a.cfg.Tasks.Lookup(t.Kind)
	if !ok {
		a.mu.Unlock()
		a.finish(t, time.Time{}, messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonRejected,
			Output: errOutput(fmt.Sprintf("unknown task kind %q (this agent runs: %s)", t.Kind, strings.Join(a.cfg.Tasks.Kinds(), ", ")))})
		return
	}
	a.running[t.ID] = true
	a.mu.Unlock()
	a.tasksSinceTrim.Add(1)
	if err := a.jrnl.Put(Entry{TaskID: t.ID, Deadline: t.Deadline}); err != nil {
		a.log.Warn("journal", zap.Error(err))
	}
	a.tasksWG.Add(1)
	if in, ok := task.(tasks.Instant); ok && in.Instant() && a.cfg.FaultTaskDelay == 0 {
		a.runInstant(t, task)
		return
	}
	go a.run(t, task)
}

// runInstant runs an Instant task on the receiving goroutine, with the
// agent's context: it returns before a deadline could matter.
func (a *Agent) runInstant(t messages.Task, task tasks.Task) {
	defer a.tasksWG.Done()
	defer a.notRunning(t.ID)
	start := time.Now()
	out, err := safeRun(a.base, task, a.env(t), t.Args)
	a.finish(t, start, result(a.base, start, out, err))
}

func (a *Agent) notRunning(id string) {
	a.mu.Lock()
	delete(a.running, id)
	a.mu.Unlock()
}

func (a *Agent) env(t messages.Task) *tasks.Env {
	cl := a.currentClaims()
	return &tasks.Env{Node: a.cfg.Name, Cluster: cl.Cluster, Role: cl.Role, Labels: cl.Labels,
		Version: a.cfg.Version, Log: a.taskLog(t.Kind), Settings: withSetupFiles(a.cfg.Settings, a.cfg.StateDir),
		StateDir: a.cfg.StateDir, Sealed: t.Sealed}
}

// currentClaims returns what the controller says this node is.
func (a *Agent) currentClaims() messages.NodeClaims {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.claims
}

// Claims returns the node's cluster, role and labels as the controller
// last told them (tests).
func (a *Agent) Claims() messages.NodeClaims { return a.currentClaims() }

// adoptClaims takes the node's claims from the controller; with persist
// they are written to the state dir so a restart runs tasks as the same
// node before it reaches the controller. Flags that say otherwise are
// reported once: the controller's word wins.
func (a *Agent) adoptClaims(cl messages.NodeClaims, persist bool) {
	a.mu.Lock()
	changed := cl.Rev != a.claims.Rev
	a.claims = cl
	a.mu.Unlock()
	if changed {
		for _, d := range []struct{ flag, asked, is string }{
			{"--cluster", a.cfg.Cluster, cl.Cluster}, {"--role", a.cfg.Role, cl.Role},
		} {
			if d.asked != "" && d.asked != d.is {
				a.log.Warn("the controller has this node as "+d.flag[2:]+" "+strconv.Quote(d.is)+", not "+strconv.Quote(d.asked)+
					": the flag only counts at enrollment (change it with `controller nodes set`)", zap.String("node", a.cfg.Name))
			}
		}
	}
	if persist && changed {
		if err := saveNodeState(a.cfg.StateDir, nodeState{Name: a.cfg.Name, Controller: a.cfg.ControllerURL, Enrolled: true, Claims: &cl}); err != nil {
			a.log.Warn("save node state", zap.Error(err))
		}
	}
}

// ackAfter is how long a task runs before the agent tells the controller it
// started it. The acknowledgement only matters for telling "timed out"
// from "expired" when a node dies mid-task, so quick tasks (most of them)
// skip it and a fan-out costs one message less per node.
const ackAfter = 250 * time.Millisecond

func (a *Agent) run(t messages.Task, task tasks.Task) {
	defer a.tasksWG.Done()
	defer a.notRunning(t.ID)
	ctx, cancel := context.WithDeadline(a.base, t.Deadline)
	defer cancel()
	// A task cut short because the agent stops leaves its journal entry as
	// started: after a restart it is reported as interrupted, not run again.
	interrupted := func() bool { return a.base.Err() != nil && time.Now().Before(t.Deadline) }
	if !a.acquire(ctx) {
		if interrupted() {
			return
		}
		a.finish(t, time.Time{}, messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonTimedOut,
			Output: errOutput("waited for a free task slot until the deadline")})
		return
	}
	defer func() { <-a.sem }()
	start := time.Now()
	ack := time.AfterFunc(ackAfter, func() {
		a.nc.Publish(messages.AckSubject(a.cfg.Name), messages.MustEncode(&messages.Ack{V: messages.Version, TaskID: t.ID, Started: true}))
	})
	defer ack.Stop()
	if d := a.cfg.FaultTaskDelay; d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	out, err := safeRun(ctx, task, a.env(t), t.Args)
	if interrupted() {
		return
	}
	a.finish(t, start, result(ctx, start, out, err))
}

// result turns what a task returned into the result to report.
func result(ctx context.Context, start time.Time, out tasks.Output, err error) messages.Result {
	r := messages.Result{Outcome: out.Outcome, Reason: out.Reason}
	switch {
	case ctx.Err() != nil && (err != nil || out.Outcome == ""):
		r = messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonTimedOut,
			Output: errOutput(fmt.Sprintf("deadline reached after %s", time.Since(start).Round(time.Millisecond)))}
	case errors.Is(err, tasks.ErrBadArgs):
		r = messages.Result{Outcome: messages.OutcomeUnknown, Reason: messages.ReasonRejected, Output: errOutput(err.Error())}
	case err != nil:
		r = messages.Result{Outcome: messages.OutcomeFail, Reason: err.Error(), Output: errOutput(err.Error())}
	default:
		if !r.Outcome.Valid() {
			r.Outcome = messages.OutcomeFail
			r.Reason = fmt.Sprintf("task returned no valid outcome (%q)", out.Outcome)
		}
		if r.Outcome == messages.OutcomeUnknown && r.Reason == "" {
			r.Reason = messages.ReasonRejected
		}
		if out.Data != nil {
			b, merr := json.Marshal(out.Data)
			if merr != nil {
				b = errOutput("encode output: " + merr.Error())
			}
			r.Output = b
		}
		if len(out.Sealed) > 0 {
			// Secret outputs of a setup step: the controller keeps them
			// out of every store. (The agent's journal holds the result
			// until it is settled, in its 0700 state dir.)
			b, serr := messages.EncodeSealed(out.Sealed)
			if serr != nil {
				r = messages.Result{Outcome: messages.OutcomeFail, Reason: "sealed outputs refused: " + serr.Error(), Output: errOutput(serr.Error())}
			} else {
				r.Sealed = b
			}
		}
	}
	return r
}

// acquire takes a task slot, waiting until ctx ends. A free slot is taken
// without touching ctx.Done, which would allocate a channel per task.
func (a *Agent) acquire(ctx context.Context) bool {
	select {
	case a.sem <- struct{}{}:
		return true
	default:
	}
	select {
	case a.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// safeRun turns a panicking task into an error: one bad task must not take
// the agent down.
func safeRun(ctx context.Context, t tasks.Task, env *tasks.Env, args json.RawMessage) (out tasks.Output, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("task %s panicked: %v", t.Kind(), p)
		}
	}()
	return t.Run(ctx, env, args)
}

// finish journals a result and sends it.
func (a *Agent) finish(t messages.Task, start time.Time, r messages.Result) {
	r.V = messages.Version
	r.TaskID = t.ID
	r.Node = a.cfg.Name
	if !start.IsZero() {
		r.StartedAt = start.UTC()
		r.DurationMS = time.Since(start).Milliseconds()
	}
	b := messages.MustEncode(&r)
	if len(b) > a.cfg.MaxMessageBytes-1024 {
		r.Output = errOutput(fmt.Sprintf("output of %d bytes exceeds the message limit of %d bytes; it was dropped", len(b), a.cfg.MaxMessageBytes))
		r.Sealed = nil
		b = messages.MustEncode(&r)
	}
	e := Entry{TaskID: t.ID, Deadline: t.Deadline, Done: true, Result: b}
	if err := a.jrnl.Put(e); err != nil {
		a.log.Warn("journal", zap.Error(err))
	}
	a.send(t.ID, b)
}

// publish sends a result to the controller. The journal keeps it until a
// sync says it is settled (see sync), so a result lost on the way (the
// controller restarting, a connection dropping) is sent again; the
// controller keeps the first outcome per node, so a duplicate is harmless.
func (a *Agent) publish(e Entry) {
	if e.Result != nil {
		a.send(e.TaskID, e.Result)
	}
}

// send publishes one encoded result.
func (a *Agent) send(id string, b []byte) {
	if a.nc == nil || !a.nc.IsConnected() {
		return // the sync after the next connect sends it
	}
	if err := a.nc.Publish(messages.ResultSubject(a.cfg.Name), b); err != nil {
		a.log.Debug("result not sent yet; a later sync sends it", zap.String("task", id), zap.Error(err))
		return
	}
	a.mu.Lock()
	a.sentAt[id] = time.Now()
	a.mu.Unlock()
	a.wake()
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// settleAfter is how long a published result is given to reach the
// controller before a sync that still lists its task makes the agent send
// it again. The agent syncs every Config.SettleEvery while results wait: a
// result is safe in the journal meanwhile, so syncing rarely (one small
// request settles them all) keeps a busy fleet's background traffic near
// that of its heartbeats.
const settleAfter = time.Second

// outbox syncs while results wait to be settled (sending again what the
// controller lacks), and prunes the journal.
func (a *Agent) outbox(ctx context.Context) {
	prune := time.NewTicker(10 * time.Minute)
	defer prune.Stop()
	claims := time.NewTicker(a.cfg.ClaimsEvery)
	defer claims.Stop()
	var retry <-chan time.Time // armed while results wait
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			a.jrnl.Prune(time.Now().Add(-24 * time.Hour))
			continue
		case <-claims.C:
			// An idle agent syncs now and then all the same, to learn
			// claims the operator changed.
			if a.nc.IsConnected() {
				a.sync(min(settleAfter, a.cfg.SettleEvery), true)
			}
			continue
		case <-a.kick:
			if retry == nil {
				retry = time.After(a.settleDelay())
			}
			continue
		case <-retry:
		}
		retry = nil
		if a.nc.IsConnected() {
			a.sync(min(settleAfter, a.cfg.SettleEvery), false)
		}
		if len(a.jrnl.Unsettled()) > 0 {
			retry = time.After(a.settleDelay())
		}
	}
}

// settleDelay is SettleEvery on average, spread widely: agents that got
// the same fan-out must not all ask at once.
func (a *Agent) settleDelay() time.Duration {
	return a.cfg.SettleEvery/2 + rand.N(a.cfg.SettleEvery+1)
}

// taskLog is the logger for tasks of one kind, named once, not per task.
func (a *Agent) taskLog(kind string) *zap.Logger {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.logs[kind]
	if l == nil {
		if a.logs == nil {
			a.logs = map[string]*zap.Logger{}
		}
		l = a.log.Named(kind)
		a.logs[kind] = l
	}
	return l
}
