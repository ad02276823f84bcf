package controller

import (
	"fmt"
	"time"
)

// PublishAsResponders publishes data on subject from both of the
// controller's responder connections, as a bug that skipped ReplyUnder
// would: the server must deny it (adversary_test.go).
func (c *Controller) PublishAsResponders(subject string, data []byte) error {
	for _, nc := range []interface {
		Publish(string, []byte) error
		Flush() error
	}{c.nodesNC, c.apiNC} {
		if err := nc.Publish(subject, data); err != nil {
			return fmt.Errorf("publish %s: %w", subject, err)
		}
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// HoldPendingNotices makes this peer hold its notices of the enrollment
// attempts it admits (mgn.ctl.pending) until release is closed, as a peer
// under load whose notices trail its agents' requests
// (enroll_transient_test.go).
func (c *Controller) HoldPendingNotices(release <-chan struct{}) {
	c.auth.mu.Lock()
	defer c.auth.mu.Unlock()
	send := c.auth.onPending
	c.auth.onPending = func(pub, tokenHash string) {
		select {
		case <-release:
			send(pub, tokenHash)
		default:
			go func() { <-release; send(pub, tokenHash) }()
		}
	}
}

// RegistryWarm reports whether the last activation built the registry
// from the peer's warm copy of the nodes bucket (warm.go) rather than
// reading the bucket.
func (c *Controller) RegistryWarm() bool {
	c.actMu.Lock()
	defer c.actMu.Unlock()
	return c.act != nil && c.regWarm
}

// OnlineAtActivation is how many nodes the registry had online when this
// controller's activation finished (-1 when it is not active).
func (c *Controller) OnlineAtActivation() int {
	c.actMu.Lock()
	defer c.actMu.Unlock()
	if c.act == nil {
		return -1
	}
	return c.act.onlineAtStart
}

// LeaseTTL is the TTL this cluster peer's lease runs with (the bucket's,
// adoptLeaseTTL).
func (c *Controller) LeaseTTL() time.Duration {
	c.lease.kvMu.Lock()
	defer c.lease.kvMu.Unlock()
	return c.lease.ttl
}

// AuthReady reports whether the controller's authenticator stopped
// holding connections for the node keys (a standby's is once its watch of
// the nodes bucket has caught up; an active one's once its state is open).
func (c *Controller) AuthReady() bool { return authReady(c.auth) }

// AuthReady reports whether the relay's authenticator stopped holding
// connections for the keys (it is once the relay has the hub's list).
func (r *Relay) AuthReady() bool { return authReady(r.auth) }

func authReady(a *authenticator) bool {
	select {
	case <-a.ready:
		return true
	default:
		return false
	}
}

// DropChangeNotices makes the relay deaf to the hub's change notices
// (mgn.relay.changed), as a relay that missed one: it then learns a new
// key only when it asks on its own (relayRefresh, or nudge).
func (r *Relay) DropChangeNotices() error { return r.changedSub.Unsubscribe() }

// Kill stops the controller as kill -9 would look to its peers: its lease
// is left to age out and nothing is flushed.
func (c *Controller) Kill() {
	c.killed.Store(true)
	c.Close()
}

// HeldSettled is how many outcomes this controller's activation settled
// from results it held as a standby (held.go); -1 when it is not active.
func (c *Controller) HeldSettled() int {
	c.actMu.Lock()
	defer c.actMu.Unlock()
	if c.act == nil {
		return -1
	}
	return c.act.heldSettled
}

// Holding reports whether this standby holds the results it hears (a peer
// is lost, held.go).
func (c *Controller) Holding() bool {
	c.held.mu.Lock()
	defer c.held.mu.Unlock()
	return !c.held.since.IsZero()
}
