package controller

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/messages"
)

// warmNodes is a cluster peer's copy of the nodes bucket, kept from the
// watch the authenticator already runs on it (watchAuth, onNodeRecord),
// so that becoming active reads nothing it already has: at 10,000 nodes
// reading the bucket was most of a failover's activation (1.8 s of it,
// docs/HA.md). It is used only when it provably holds everything the
// bucket's leader has (upTo); otherwise the activation reads the bucket.
//
// It also knows when each node was last heard from: the nodes bucket keeps
// last_seen only as of a node's last change (registry.heartbeat), so a
// registry built from it alone would show a healthy fleet offline after a
// failover until every node's next heartbeat (5 s by default), and
// announce 10,000 offline→online transitions. A standby hears the
// heartbeats beside the active controller (onStandbyHeartbeat) and keeps
// only the time: it does not decode them, so a heartbeat the active
// controller would refuse for its claims still counts here, for at most
// one offline window after a failover. Only nodes of the bucket are
// kept: a relay link may publish any node's heartbeat subject.
type warmNodes struct {
	mu   sync.Mutex
	recs map[string]nodeRecord
	rev  uint64               // the newest entry applied
	live bool                 // the watch has delivered the bucket's contents once
	seen map[string]time.Time // node → last heartbeat heard on this peer
}

func newWarmNodes() *warmNodes {
	return &warmNodes{recs: map[string]nodeRecord{}, seen: map[string]time.Time{}}
}

// heard records a heartbeat of node at, if node is enrolled.
func (w *warmNodes) heard(node string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.recs[node]; ok {
		w.seen[node] = at
	}
}

// restart forgets everything: a new watch delivers the bucket again, and
// a key deleted meanwhile may not be delivered at all.
func (w *warmNodes) restart() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recs, w.rev, w.live = map[string]nodeRecord{}, 0, false
}

// caughtUp marks the end of the watch's initial delivery.
func (w *warmNodes) caughtUp() {
	w.mu.Lock()
	w.live = true
	w.mu.Unlock()
}

// apply records one entry of the watch. rec is the entry's parsed value
// (ok false when it is not a node record newRegistry would load).
// Records are never changed in place once stored (the registry clones
// labels before changing them), so handing them over shares nothing that
// is written.
func (w *warmNodes) apply(e jetstream.KeyValueEntry, rec nodeRecord, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev = max(w.rev, e.Revision())
	if e.Operation() == jetstream.KeyValuePut && ok {
		w.recs[e.Key()] = rec
		return
	}
	delete(w.recs, e.Key())
	delete(w.seen, e.Key())
}

// heardTimes copies when each node was last heard on this peer; nil for a
// single controller.
func (w *warmNodes) heardTimes() map[string]time.Time {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]time.Time, len(w.seen))
	for k, v := range w.seen {
		out[k] = v
	}
	return out
}

// parseNodeEntry parses a put as newRegistry does: a record whose name is
// its key.
func parseNodeEntry(e jetstream.KeyValueEntry) (nodeRecord, bool) {
	var rec nodeRecord
	if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &rec) != nil || rec.Name != e.Key() {
		return nodeRecord{}, false
	}
	return rec, true
}

// warmWait bounds how long an activation waits for the watch to reach the
// bucket leader's last sequence before it reads the bucket instead.
const warmWait = 500 * time.Millisecond

// upTo returns a copy of the records, each with the last heartbeat this
// peer heard as its last_seen when that is newer, once the watch has
// applied every entry up to the bucket's last sequence as its leader
// knows it; false
// when it does not within warmWait (a watch that is restarting, or whose
// consumer was on the lost peer) or the leader cannot be asked.
func (w *warmNodes) upTo(ctx context.Context, js jetstream.JetStream, bucket string) (map[string]nodeRecord, bool) {
	if w == nil {
		return nil, false
	}
	target, err := streamLastSeq(ctx, js, "KV_"+bucket)
	if err != nil {
		return nil, false
	}
	deadline := time.Now().Add(warmWait)
	for {
		w.mu.Lock()
		if w.live && w.rev >= target {
			out := make(map[string]nodeRecord, len(w.recs))
			for k, r := range w.recs {
				if at := w.seen[k]; at.After(r.LastSeen) {
					r.LastSeen = at
				}
				out[k] = r
			}
			w.mu.Unlock()
			return out, true
		}
		w.mu.Unlock()
		if time.Now().After(deadline) {
			return nil, false
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// onStandbyHeartbeat notes when a node was heard from while this peer is
// not the active controller (warmNodes). The subject names the node: the
// server lets a node publish only its own.
func (c *Controller) onStandbyHeartbeat(m *nats.Msg) {
	if c.acting() {
		return // the registry has it
	}
	node, err := messages.NodeFromSubject(messages.HeartbeatPfx, m.Subject)
	if err != nil {
		return
	}
	c.warm.heard(node, time.Now().UTC())
}
