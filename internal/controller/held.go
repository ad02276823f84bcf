package controller

import (
	"bytes"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// heldResults keeps the results a standby hears while a peer is lost, so
// that the controller activated after a failover starts with them.
//
// Only the active controller subscribes to results. When it dies, the
// results its agents send until another controller is active (the lease
// ages out 2-3 s after a kill) reach nobody; the agents keep them in their
// journals and send them again when the new controller resends the open
// tasks, so nothing is lost, but that round trip is a whole fan-out's worth
// of time at the end of a failover (about 1-2 s at 10,000 agents,
// docs/HA.md). A standby that sees a peer's routes go (watchRoutes)
// starts listening for results, keeping them undecoded, and the one that
// becomes active settles them before it resends anything (activate,
// dispatcher.applyHeld). Every
// result held is validated then exactly as one heard live (onResult). An
// activation that fails after taking them costs only the round trip: the
// agents' journals still have every result.
//
// A standby does not listen while every peer is there: its interest would
// make each server forward every result to it too, on every fan-out. What
// it held is dropped heldWindow after the loss if no activation took it
// (the lost peer was a standby, and the active controller heard the
// results), not when the peer comes back: a killed active controller
// restarted at once is back before any controller is active.
//
// Everything held came from nodes, so it is bounded: in all, per node (one
// node must not crowd out the others), and by its bytes, which are copied
// out of the message (a held nats.Msg would keep its header bytes and the
// messages queued behind it alive). A result with headers is not held:
// agents send none.
type heldResults struct {
	mu      sync.Mutex
	sub     *nats.Subscription
	since   time.Time // holding since; zero when not holding
	spent   bool      // this loss's window passed: hold again only for another loss
	spentAt int       // peers routed to when the window passed
	msgs    []heldResult
	perNode map[string]int // held per result subject
	bytes   int
	dropped int
	maxPeer int // the most peers this server was routed to at once
}

// heldResult is one result as it came: its subject names the node.
type heldResult struct {
	subject string
	data    []byte
}

// The bounds of what a standby holds, beyond which results are dropped
// (the resend after the activation brings them). At 10,000 agents one
// fan-out's results are about 10,000 messages of a few hundred bytes; a
// node owes one result per open task. The subscription's own pending
// buffer (heldPending*) comes on top while the handler catches up.
const (
	maxHeldResults     = 100_000
	maxHeldResultBytes = 64 << 20
	maxHeldPerNode     = 64
	heldOverhead       = 64 // counted per result beside its subject and data
	heldPendingMsgs    = 1 << 16
	heldPendingBytes   = 16 << 20
)

// heldWindow is how long a standby holds results after it saw a peer go:
// the lease ages out within a TTL, and an activation may be retried for
// two more (leaseLoop's giveUp).
func heldWindow(ttl time.Duration) time.Duration { return 3 * ttl }

func (h *heldResults) add(m *nats.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() {
		return // a message queued before the subscription ended
	}
	size := len(m.Subject) + len(m.Data) + heldOverhead
	if len(m.Header) > 0 || len(h.msgs) >= maxHeldResults || h.bytes+size > maxHeldResultBytes ||
		h.perNode[m.Subject] >= maxHeldPerNode {
		h.dropped++
		return
	}
	if h.perNode == nil {
		h.perNode = map[string]int{}
	}
	h.perNode[m.Subject]++
	h.msgs = append(h.msgs, heldResult{subject: m.Subject, data: bytes.Clone(m.Data)})
	h.bytes += size
}

// stopLocked ends the subscription and returns what was held.
func (h *heldResults) stopLocked() (msgs []heldResult, dropped int) {
	if h.sub != nil {
		h.sub.Unsubscribe()
		h.sub = nil
	}
	msgs, dropped = h.msgs, h.dropped
	h.msgs, h.perNode, h.bytes, h.dropped, h.since = nil, nil, 0, 0, time.Time{}
	return msgs, dropped
}

// take ends holding and returns the results held (activate).
func (h *heldResults) take() (msgs []heldResult, dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopLocked()
}

// routedPeers counts the servers this one has routes to.
func routedPeers(ns *server.Server) int {
	rz, err := ns.Routez(&server.RoutezOptions{})
	if err != nil {
		return -1
	}
	names := map[string]bool{}
	for _, r := range rz.Routes {
		names[r.RemoteName] = true
	}
	return len(names)
}

// holdStep is what a standby does with results at one look at its peers.
type holdStep int

const (
	holdKeep   holdStep = iota // go on as it is (holding or not)
	holdStart                  // a peer is lost: start holding
	holdExpire                 // the window passed and no activation took them: drop them
)

// step decides what to do when peers are routed to at now; h.mu held.
func (h *heldResults) step(peers int, now time.Time, window time.Duration) holdStep {
	h.maxPeer = max(h.maxPeer, peers)
	if h.spent && (peers == h.maxPeer || peers < h.spentAt) {
		h.spent = false // the peers came back, or another is lost (it may be the active one)
	}
	switch {
	case !h.since.IsZero() && now.Sub(h.since) > window:
		h.spent, h.spentAt = true, peers
		return holdExpire
	case h.since.IsZero() && !h.spent && peers < h.maxPeer:
		return holdStart
	}
	return holdKeep
}

// heldEvery is how often a standby looks at its routes: an agent of a
// lost peer reconnects to another within milliseconds and sends its
// unsettled results at once, and again 125-375 ms later if no controller
// answered its sync (agent.sync). Looking costs a route count; the routes
// are listed only when it changed.
const heldEvery = 50 * time.Millisecond

// watchRoutes runs watchPeers on a standby until the controller stops.
func (c *Controller) watchRoutes() {
	defer c.wg.Done()
	t := time.NewTicker(heldEvery)
	defer t.Stop()
	last, lastAt := -1, time.Time{}
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			if c.acting() {
				// The lease is this controller's: it hears the results
				// itself once active, and an activation under way takes
				// what it held (a new hold would only duplicate that).
				continue
			}
			// The route count changes when a peer goes or comes; the
			// window's end needs a look now and then too.
			if n := c.ns.NumRoutes(); n != last || now.Sub(lastAt) >= time.Second {
				last, lastAt = n, now
				c.watchPeers(now)
			}
		}
	}
}

// watchPeers starts or ends holding results on a standby.
func (c *Controller) watchPeers(now time.Time) {
	h := c.held
	c.lease.kvMu.Lock() // the lease loop may adopt the bucket's TTL meanwhile
	window := heldWindow(c.lease.ttl)
	c.lease.kvMu.Unlock()
	peers := routedPeers(c.ns)
	if peers < 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch h.step(peers, now, window) {
	case holdStart:
		sub, err := c.nodesNC.Subscribe(messages.ResultPrefix+"*", h.add)
		if err != nil {
			c.logRate.warn(c.log, "held", "cannot hold results while a peer is lost", zap.Error(err))
			return
		}
		sub.SetPendingLimits(heldPendingMsgs, heldPendingBytes)
		h.sub, h.since = sub, now
		c.log.Info("a peer is lost: holding the results heard until a controller is active",
			zap.Int("peers", peers), zap.Int("had", h.maxPeer))
	case holdExpire:
		msgs, dropped := h.stopLocked()
		c.log.Info("no activation took the results held since a peer was lost: dropped",
			zap.Int("held", len(msgs)), zap.Int("dropped", dropped))
	}
}
