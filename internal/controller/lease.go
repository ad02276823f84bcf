package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// The lease says which controller of a cluster acts (docs/HA.md): the key
// leaseKey in the bucket messages.LeaseBucket, whose MaxAge is the lease
// TTL. A standby Creates the key (which succeeds only once the last
// holder's write aged out); the holder Updates it, conditioned on the
// revision it last wrote. The holder acts only while
//
//	now < (monotonic time before the last successful renewal was sent) + TTL − TTL/3
//
// so a controller that was paused and wakes up late finds its deadline
// passed before it does anything, whatever its goroutines were about to do.

const (
	leaseKey = "active"
	// DefaultLeaseTTL is how long a lease outlives its holder's last
	// renewal; the new controller is active about this long after the old
	// one died.
	DefaultLeaseTTL = 3 * time.Second
	MinLeaseTTL     = 500 * time.Millisecond
)

// ErrNotActive is what an action refused on a standby (or on a controller
// whose lease lapsed) returns.
var ErrNotActive = messages.Errorf(messages.CodeInternal, "this controller is not the active one (its lease lapsed or another controller holds it): retry, the request reaches the active controller")

// leaseRecord is the lease key's value: who holds it, for people.
type leaseRecord struct {
	Holder string    `json:"holder"`
	PID    int       `json:"pid"`
	Since  time.Time `json:"since"`
}

// lease is this controller's view of the lease.
type lease struct {
	kvMu   sync.Mutex
	kv     jetstream.KeyValue // set once the bucket could be opened
	ttl    time.Duration
	holder string
	pid    int

	// until is the monotonic deadline (ns since base) of acting; 0 when
	// not holding.
	base  time.Time
	until atomic.Int64
	rev   uint64 // revision last written (lease loop only)
	since time.Time

	writes *prometheus.HistogramVec // by op; nil in tests that build a lease alone
}

func (l *lease) observe(op string, sent time.Time) {
	if l.writes != nil {
		l.writes.WithLabelValues(op).Observe(time.Since(sent).Seconds())
	}
}

func newLease(kv jetstream.KeyValue, ttl time.Duration, holder string, pid int) *lease {
	return &lease{kv: kv, ttl: ttl, holder: holder, pid: pid, base: time.Now()}
}

func (l *lease) setKV(kv jetstream.KeyValue) {
	l.kvMu.Lock()
	defer l.kvMu.Unlock()
	l.kv = kv
}

func (l *lease) bucket() jetstream.KeyValue {
	if l == nil {
		return nil
	}
	l.kvMu.Lock()
	defer l.kvMu.Unlock()
	return l.kv
}

// valid reports whether this controller may act now.
func (l *lease) valid() bool {
	u := l.until.Load()
	return u != 0 && int64(time.Since(l.base)) < u
}

func (l *lease) margin() time.Duration { return l.ttl / 3 }

// extend records a successful write sent at sent.
func (l *lease) extend(sent time.Time, rev uint64) {
	l.rev = rev
	l.until.Store(int64(sent.Sub(l.base) + l.ttl - l.margin()))
}

func (l *lease) drop() { l.until.Store(0); l.rev = 0 }

func (l *lease) value() []byte {
	b, _ := json.Marshal(leaseRecord{Holder: l.holder, PID: l.pid, Since: l.since})
	return b
}

// tryAcquire creates the lease key; false with no error when another
// controller holds it.
func (l *lease) tryAcquire(ctx context.Context) (bool, error) {
	sent := time.Now()
	l.since = sent.UTC()
	rev, err := l.bucket().Create(ctx, leaseKey, l.value())
	l.observe("acquire", sent)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.extend(sent, rev)
	return true, nil
}

// renew updates the key conditioned on the revision last written. A
// revision mismatch means someone else holds it: lost for certain.
func (l *lease) renew(ctx context.Context) (lost bool, err error) {
	sent := time.Now()
	rev, err := l.bucket().Update(ctx, leaseKey, l.value(), l.rev)
	l.observe("renew", sent)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return true, err
		}
		return !l.valid(), err
	}
	l.extend(sent, rev)
	return false, nil
}

// release deletes the key if this controller still holds it, so a
// standby takes over at once after a graceful stop.
func (l *lease) release(ctx context.Context) {
	if l.valid() {
		l.bucket().Delete(ctx, leaseKey, jetstream.LastRevision(l.rev))
	}
	l.drop()
}

// LeaseHolder reads who holds the lease now ("" when nobody).
func leaseHolder(ctx context.Context, kv jetstream.KeyValue) (leaseRecord, uint64, error) {
	e, err := kv.Get(ctx, leaseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return leaseRecord{}, 0, nil
	}
	if err != nil {
		return leaseRecord{}, 0, err
	}
	var r leaseRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return leaseRecord{}, 0, fmt.Errorf("lease record: %w", err)
	}
	return r, e.Revision(), nil
}

// activeState is what a controller runs while it holds the lease: the
// registry, dispatcher, verifier, the subscriptions that feed them, and
// the loops (liveness, sweeps). It is built from the replicated state on
// every activation and torn down on every loss.
type activeState struct {
	since         time.Time // when the activation finished
	onlineAtStart int       // nodes online in the registry it was built with
	heldSettled   int       // outcomes settled from results held as a standby (held.go)
	stop          chan struct{}
	wg            sync.WaitGroup
	ctx           context.Context
	end           context.CancelFunc
}

// Active reports whether this controller may act now: always for a single
// controller, while it holds the lease in a cluster. Setup runs and
// rollouts call it (or LeaseCheck) right before each state-changing step.
func (c *Controller) Active() bool {
	if !c.acting() {
		return false
	}
	c.actMu.Lock()
	defer c.actMu.Unlock()
	return c.act != nil // activation done
}

// LeaseCheck returns ErrNotActive unless this controller may act now.
func (c *Controller) LeaseCheck() error {
	if c.acting() {
		return nil
	}
	return ErrNotActive
}

// ActiveContext returns a context that ends when this controller stops
// being active (or stops); on a standby it is already done. Long work an
// active controller starts (a setup run) uses it.
func (c *Controller) ActiveContext() context.Context {
	c.actMu.Lock()
	defer c.actMu.Unlock()
	if c.act == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	return c.act.ctx
}

// OnActive registers f to run each time this controller becomes active,
// with a context that ends when it stops being so (a single controller
// runs it once at start). Register before Start returns work, i.e. from
// code that Start calls; later registrations run at the next activation.
func (c *Controller) OnActive(f func(ctx context.Context)) {
	c.actMu.Lock()
	defer c.actMu.Unlock()
	c.onActive = append(c.onActive, f)
}

func (c *Controller) acting() bool {
	if c.lease == nil {
		return true
	}
	return c.lease.valid()
}

// fenced wraps a handler so that it does nothing unless this controller
// may act: a paused controller that wakes up with messages queued drops
// them (the agents send them again to the active one).
func (c *Controller) fenced(h nats.MsgHandler) nats.MsgHandler {
	if c.lease == nil {
		return h
	}
	return func(m *nats.Msg) {
		if !c.lease.valid() {
			return
		}
		h(m)
	}
}

// leaseLoop runs on every cluster peer: it acquires, renews and loses the
// lease, and activates or deactivates this controller accordingly.
func (c *Controller) leaseLoop() {
	defer c.wg.Done()
	log := c.log.Named("lease")
	l := c.lease
	// A standby tries every TTL/12 (250 ms at the default TTL): after a
	// kill the key ages out 2-3 s later and the standby's wait on top of
	// that is half this on average; a refused Create costs one small
	// JetStream request. The holder renews every TTL/3 while it may act
	// until TTL-TTL/3 after a renewal's send: a renewal may come a TTL/3
	// late (a busy JetStream) before the holder stops acting, and it may
	// take TTL-TTL/3 (renewWithin) before it is given up and retried. A
	// 2 s TTL lost the lease twice while 10,000 agents connected at once
	// on 2 cores (docs/HA.md).
	acquireEvery, renewEvery := l.ttl/12, l.ttl/3
	renewWithin := l.ttl - l.margin()
	timer := time.NewTimer(0)
	defer timer.Stop()
	// retrying is when this controller holds the lease but its activation
	// failed: right after a peer is lost JetStream may answer "temporarily
	// unavailable" until a new meta leader is elected. The lease is kept
	// (renewed) and the activation tried again rather than handed to a peer
	// that would meet the same election; after giveUp it is released so a
	// persistent fault on this peer cannot stall the fleet.
	var retrying time.Time
	giveUp := 2 * l.ttl
	// activateRenewing activates while it keeps renewing the lease: an
	// activation that waits for a stream's leader (an election after a
	// peer's loss) must not let the lease lapse meanwhile, which would hand
	// it to a peer that meets the same wait.
	activateRenewing := func() error {
		done := make(chan error, 1)
		go func() { done <- c.activate() }()
		tick := time.NewTicker(renewEvery)
		defer tick.Stop()
		var lost error
		for {
			select {
			case err := <-done:
				if err == nil && lost != nil {
					return fmt.Errorf("lease lost while activating: %w", lost)
				}
				return err
			case <-tick.C:
				if lost != nil {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), renewWithin)
				gone, err := l.renew(ctx)
				cancel()
				if gone {
					lost = err
					if lost == nil {
						lost = ErrNotActive
					}
				}
			}
		}
	}
	tryActivate := func() {
		err := activateRenewing()
		if err == nil {
			if !retrying.IsZero() {
				log.Info("activation succeeded on retry", zap.Duration("after", time.Since(retrying)))
			}
			retrying = time.Time{}
			timer.Reset(renewEvery)
			return
		}
		c.deactivate("activation failed")
		if retrying.IsZero() {
			retrying = time.Now()
		}
		if time.Since(retrying) < giveUp {
			c.logRate.warn(log, "activation", "activation failed: keeping the lease and retrying", zap.Error(err))
			timer.Reset(renewEvery / 4)
			return
		}
		log.Warn("activation failed: giving the lease up", zap.Error(err), zap.Duration("tried_for", time.Since(retrying)))
		retrying = time.Time{}
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		l.release(rctx)
		rcancel()
		timer.Reset(acquireEvery)
	}
	for {
		select {
		case <-c.stop:
			if c.killed.Load() {
				c.deactivate("killed") // as kill -9 would leave it: the lease held, nothing flushed
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if c.act != nil {
				if l.valid() && c.reg != nil {
					c.reg.flush(ctx) // still the holder: what changed since the last flush survives the handover
				}
				c.deactivate("stopping")
				l.release(ctx)
			} else if !retrying.IsZero() {
				l.release(ctx) // held while the activation was being retried
			}
			cancel()
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), renewWithin)
		if c.act == nil && !retrying.IsZero() {
			lost, err := l.renew(ctx)
			cancel()
			if lost {
				log.Warn("lease lost while retrying the activation", zap.Error(err))
				retrying = time.Time{}
				l.drop()
				timer.Reset(acquireEvery)
				continue
			}
			tryActivate()
			continue
		}
		if c.act == nil {
			ok, err := l.tryAcquire(ctx)
			cancel()
			if err != nil {
				c.logRate.warn(log, "lease-acquire", "lease: cannot reach the lease bucket (JetStream quorum?)", zap.Error(err))
			}
			if ok {
				log.Info("lease acquired: this controller is active", zap.String("holder", l.holder), zap.Uint64("rev", l.rev))
				tryActivate()
				continue
			}
			timer.Reset(acquireEvery)
			continue
		}
		sent := time.Now()
		lost, err := l.renew(ctx)
		cancel()
		switch {
		case lost:
			log.Warn("lease lost: this controller stops acting", zap.Error(err))
			c.deactivate("lease lost")
			l.drop()
			timer.Reset(acquireEvery)
			continue
		case err != nil:
			c.logRate.warn(log, "lease-renew", "lease: renewal failed, retrying", zap.Error(err))
			timer.Reset(renewEvery / 4)
			continue
		}
		// Every renewEvery from send to send: a slow renewal is followed
		// at once by the next rather than a whole period later, which
		// could let the right to act lapse between two successful ones.
		timer.Reset(max(renewEvery-time.Since(sent), 0))
	}
}

// activate builds the active part from the replicated state.
func (c *Controller) activate() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.openState(ctx); err != nil {
		return err
	}
	opened := time.Since(start)
	if err := c.subscribe(); err != nil {
		return err
	}
	if err := c.disp.recover(ctx); err != nil {
		return err
	}
	// Taken once the open tasks are rebuilt: until then this controller's
	// own subscription drops results (no task to settle them on) and the
	// standby's holding catches them, so the two overlap rather than
	// leave a gap (the first outcome per node wins).
	held, heldDropped := c.held.take()
	heldSettled := c.disp.applyHeld(held)
	recovered := time.Since(start)
	// The open tasks go out again before the reports are read: the
	// agents' answers are what a failover waits for, and a verifier
	// records reports in any order (verifier.record). Only to the nodes
	// that still owe an outcome once the held results are settled.
	c.disp.resendOwed()
	resent := time.Since(start)
	c.ver.loadLast(ctx)
	loaded := time.Since(start)
	// Hand the leaderships over only now: a stepdown while the reads above
	// ask the streams' leaders would make them wait for the new ones.
	c.keepNoLeaders()
	// How many nodes the new registry has online as it starts: a failover
	// should not show a healthy fleet offline (warm.go).
	online, _, _ := c.reg.counts(time.Now())
	a := &activeState{stop: make(chan struct{}), since: time.Now().UTC(), onlineAtStart: online, heldSettled: heldSettled}
	a.ctx, a.end = context.WithCancel(context.Background())
	c.actMu.Lock()
	c.act = a
	hooks := append([]func(context.Context){}, c.onActive...)
	c.actMu.Unlock()
	a.wg.Add(3)
	go func() { defer a.wg.Done(); c.housekeeping(a.stop) }()
	go func() {
		defer a.wg.Done()
		c.ver.sweeps(a.stop, c.opts.SweepInterval, c.opts.SweepLayerIntervals)
	}()
	go func() {
		defer a.wg.Done()
		c.reconcileReplicas(a.stop)
	}()
	for _, f := range hooks {
		go f(a.ctx)
	}
	// Runs resume beside the activation, not in it: their bucket reads may
	// wait for a JetStream meta leader, which must not delay (or fail) the
	// fleet's failover. deactivate waits for this before stopping the runs.
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		rctx, cancel := context.WithTimeout(a.ctx, 60*time.Second)
		defer cancel()
		if err := c.resumeRuns(rctx); err != nil {
			// The fleet is served without them; the next activation tries again.
			c.log.Error("setup runs and rollouts not resumed", zap.Error(err))
		}
	}()
	c.activeGauge.Set(1)
	c.log.Info("active", zap.Duration("activation", time.Since(start)),
		zap.Duration("state_opened", opened), zap.Bool("registry_warm", c.regWarm),
		zap.Duration("tasks_recovered", recovered), zap.Duration("owed_resent", resent),
		zap.Duration("reports_loaded", loaded), zap.Int("nodes", c.reg.count()), zap.Int("online", online),
		zap.Int("results_held", len(held)), zap.Int("held_settled", heldSettled), zap.Int("held_dropped", heldDropped))
	return nil
}

// unsubscribe ends the active part's subscriptions.
func (c *Controller) unsubscribe() {
	for _, s := range c.subs {
		s.Unsubscribe()
	}
	c.subs = nil
}

// deactivate tears the active part down. It writes nothing: whatever the
// lost lease's holder still had in memory the next holder rebuilds from
// the replicated state and the agents' journals.
func (c *Controller) deactivate(why string) {
	c.unsubscribe()
	c.actMu.Lock()
	a := c.act
	c.act = nil
	c.actMu.Unlock()
	if a != nil {
		a.end()
		close(a.stop)
		a.wg.Wait()
	}
	c.stopRuns()
	if c.disp != nil {
		c.disp.stop()
	}
	c.activeGauge.Set(0)
	c.log.Info("standby", zap.String("why", why))
}

// unregister removes the verifier's series, so that the next activation's
// verifier can register its own (activation builds everything anew).
func (v *verifier) unregister() {
	for _, m := range []prometheus.Collector{v.layerStatus, v.checkCounts, v.checkDuration, v.sweepDuration} {
		v.c.met.reg.Unregister(m)
	}
}
