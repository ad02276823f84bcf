package controller

import (
	"context"
	"encoding/base64"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/guildnet/metaguildnet/messages"
)

// authenticator decides, for every connection, who it is and what it may
// do. It is plugged into the embedded server as CustomClientAuthentication so
// that the fleet registry (not a static config file) is the source of truth
// and a removal takes effect on the next connect without a reload.
//
// Kinds of clients:
//   - the operator (the CLI), by the admin NKey: no limits;
//   - the controller's own three connections, by keys that exist only in
//     this process: the state connection (JetStream, tasks, events), and
//     two responders: one serves the nodes (enroll, heartbeat, sync, ack, result),
//     one the operator API. Each may publish only into the inbox family of
//     the requesters it answers, so no request, whatever reply subject it
//     names, can make the controller write into JetStream, the KV buckets,
//     another node's subjects or the API;
//   - an enrolled node, by its own NKey, bound to subjects carrying its name;
//   - a node enrolling, by a valid join token plus a fresh NKey whose
//     signature proves possession; it may only ask to enroll that key, and
//     its connection ends when the token expires (or when it has enrolled).
//     At a relay, which holds no tokens, the hub decides (remoteAdmit).
type authenticator struct {
	adminKey string
	internal map[string]*server.User // responder keys -> their users
	tokens   *tokenStore

	// ready is closed once the enrolled nodes' keys are loaded (Start,
	// after the registry): until then the server already runs (JetStream
	// needs it) and a node reconnecting after a restart would be refused.
	ready     chan struct{}
	readyOnce sync.Once

	mu      sync.Mutex
	nodes   map[string]string        // public key -> node name
	byName  map[string]string        // node name -> public key
	pending map[string]pendingEnroll // enrolling public key -> its attempt
	refused func(reason string)      // counts refusals (metrics)
	// onPending, in a cluster, tells the other peers about an enrollment
	// connection this server admitted (cluster.go): the active controller
	// answers it.
	onPending func(pub, tokenHash string)

	// remoteAdmit is set at a relay (relay.go): it asks the hub whether
	// key pub may enroll with the token whose hash is tokenHash, and
	// returns the token's expiry; an error wrapping errAdmitRefused is the
	// hub's refusal, any other that the hub could not be asked.
	remoteAdmit func(ctx context.Context, pub, tokenHash string) (time.Time, error)
	// nudge, at a relay, asks the hub for the enrolled keys now.
	nudge func()
	// keyAdded fires when a key is added: a relay's connection waiting
	// for a key that just enrolled hears it.
	keyAdded signal
	// tokenAdded fires when a cluster peer's watch of mgn_tokens brings a
	// token; waitTokens says a peer has that watch.
	tokenAdded signal
	waitTokens bool
}

// signal wakes every waiter at once, as often as it fires; the owner's
// mutex guards it. A waiter takes next under that mutex, releases it and
// waits on the channel, so a fire between the two is not missed.
type signal struct{ ch chan struct{} }

// next returns a channel closed at the next fire.
func (s *signal) next() <-chan struct{} {
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) fire() {
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// errAdmitRefused is the hub's refusal of an enrollment connection a
// relay asked about.
var errAdmitRefused = errors.New("the hub refused the join token")

const (
	// relayAdmitWait bounds a relay's question to the hub about a join
	// token: below the agent's connect timeout, and short because the
	// connecting client waits for it.
	relayAdmitWait = 1500 * time.Millisecond
	// relayHoldFor is how long a relay keeps a connection it could not ask
	// the hub about (no permissions at all) before the server closes it:
	// the agent retries, rather than taking an unreachable hub for a
	// refused token.
	relayHoldFor = time.Second
	// relayKeyWait bounds how long a relay holds the first connection of a
	// key that enrolled through it and that it has not learnt yet.
	relayKeyWait = time.Second
)

// pendingEnroll is an enrollment connection that has not enrolled yet.
type pendingEnroll struct {
	tokenHash string
	clientID  uint64
	at        time.Time // admitted (or, from a peer, heard of)
}

// maxPendingEnrollments bounds the memory held for enrollments in flight
// (about 200 bytes each). Past it, attempts older than pendingEnrollTTL go
// first, then the oldest one: never the attempts in flight all at once
// (clearing the whole map at 4,096 refused whole batches of legitimate
// enrollments at 10,000 agents).
const maxPendingEnrollments = 4096

// pendingEnrollTTL is how long an attempt is kept: an agent asks right
// after it connects and gives up after 10 s, so an older attempt is one
// whose agent left (or enrolled through another peer); it is dropped when
// room is needed. A dropped attempt whose agent is still there gets
// "unavailable" and reconnects.
const pendingEnrollTTL = 30 * time.Second

// User names the server sees; removal finds a node's connections by them.
const (
	userAdmin     = "admin"
	userState     = "controller-state"
	userNodesResp = "controller-nodes"
	userAPIResp   = "controller-api"
)

func nodeUser(name string) string  { return "node:" + name }
func enrollUser(pub string) string { return "enroll:" + pub }

func newAuthenticator(adminKey string, tokens *tokenStore, refused func(string)) *authenticator {
	return &authenticator{
		adminKey: adminKey,
		internal: map[string]*server.User{},
		tokens:   tokens,
		nodes:    map[string]string{},
		byName:   map[string]string{},
		pending:  map[string]pendingEnroll{},
		refused:  refused,
		ready:    make(chan struct{}),
	}
}

// authReadyWait is how long a connection waits for the node keys at
// start: below the server's auth timeout (2 s), so a connection that waits
// in vain is refused rather than timed out.
const authReadyWait = 1500 * time.Millisecond

// markReady says the enrolled nodes' keys are loaded.
func (a *authenticator) markReady() { a.readyOnce.Do(func() { close(a.ready) }) }

// waitReady holds a connection until the node keys are loaded (bounded).
func (a *authenticator) waitReady() {
	select {
	case <-a.ready:
		return
	default:
	}
	t := time.NewTimer(authReadyWait)
	defer t.Stop()
	select {
	case <-a.ready:
	case <-t.C:
	}
}

// addInternal admits the controller's own restricted connection with key
// pub (generated at start, never written down).
func (a *authenticator) addInternal(pub string, u *server.User) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.internal[pub] = u
}

// Check implements server.Authentication.
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o.Nkey == "" || !verifySig(o.Nkey, o.Sig, c.GetNonce()) {
		a.refused("no_or_bad_signature")
		return false
	}
	if o.Nkey == a.adminKey {
		c.RegisterUser(&server.User{Username: userAdmin})
		return true
	}
	a.mu.Lock()
	if u, ok := a.internal[o.Nkey]; ok {
		a.mu.Unlock()
		c.RegisterUser(u)
		return true
	}
	a.mu.Unlock()
	a.waitReady()
	if a.remoteAdmit != nil {
		if o.Token != "" {
			return a.checkRelayed(c, o.Nkey, o.Token)
		}
		a.awaitEnrolledKey(o.Nkey)
	}
	if o.Token != "" {
		a.awaitToken(o.Token)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if name, ok := a.nodes[o.Nkey]; ok && o.Token == "" {
		c.RegisterUser(&server.User{Username: nodeUser(name), Permissions: nodePermissions(name)})
		return true
	}
	// A known key with a token is an agent enrolling again because it
	// never got its first answer: it gets an enrollment connection, and
	// the enrollment answers that it is enrolled (no token is spent).
	if o.Token != "" {
		h, isToken := tokenHash(o.Token)
		var exp time.Time
		ok := false
		if isToken {
			exp, ok = a.admitsLocked(o.Nkey, h)
		}
		if ok {
			a.addPendingLocked(o.Nkey, pendingEnroll{tokenHash: h, clientID: c.GetID(), at: time.Now()})
			if a.onPending != nil {
				a.onPending(o.Nkey, h)
			}
			// The server closes the connection when the token expires: an
			// enrollment connection is no credential of its own.
			c.RegisterUser(&server.User{Username: enrollUser(o.Nkey), Permissions: enrollPermissions(o.Nkey),
				ConnectionDeadline: exp})
			return true
		}
		a.refused("bad_token")
		return false
	}
	a.refused("unknown_key")
	return false
}

// admitsLocked is the hub's decision on an enrollment connection of key
// pub with the token whose hash is h: a usable token, or a known key with
// the unexpired token it enrolled with (its own single-use token: it asks
// again because it never got its first answer). It returns the token's
// expiry, when the connection must end.
func (a *authenticator) admitsLocked(pub, h string) (time.Time, bool) {
	if exp, ok := a.tokens.validHash(h); ok {
		return exp, true
	}
	if name, known := a.nodes[pub]; known && a.tokens.enrolled(h, name, time.Now()) {
		return a.tokens.expiry(h), true
	}
	return time.Time{}, false
}

// admitRelayed is the hub's answer to a relay asking about an enrollment
// connection (onRelayAdmit): as Check would decide, and the attempt is
// recorded (and, in a cluster, announced) so that the enrollment request
// that follows over the link finds it. The connection is on the relay, so
// no client of this server is recorded with it.
func (a *authenticator) admitRelayed(pub, h string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.admitsLocked(pub, h)
	if !ok {
		return exp, false // counted by the reply (kind relay_admit)
	}
	a.addPendingLocked(pub, pendingEnroll{tokenHash: h, at: time.Now()})
	if a.onPending != nil {
		a.onPending(pub, h)
	}
	return exp, true
}

// checkRelayed is a relay's Check of an enrollment connection: only the
// token's hash goes to the hub, which decides (remoteAdmit). Admitted, the
// connection gets the hub's enrollment permissions and ends when the token
// expires; refused, it is refused as at the hub. When the hub cannot be
// asked (the link is down, no controller answers in time) the connection
// is neither: it is let in with no permissions at all and closed after
// relayHoldFor, so that the agent retries instead of taking an unreachable
// hub for a bad token (an authorization error ends its enrollment).
func (a *authenticator) checkRelayed(c server.ClientAuthentication, pub, tok string) bool {
	h, ok := tokenHash(tok)
	if !ok {
		a.refused("bad_token")
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), relayAdmitWait)
	exp, err := a.remoteAdmit(ctx, pub, h)
	cancel()
	now := time.Now()
	switch {
	case err == nil && now.Before(exp):
		a.mu.Lock()
		a.addPendingLocked(pub, pendingEnroll{tokenHash: h, clientID: c.GetID(), at: now})
		a.mu.Unlock()
		c.RegisterUser(&server.User{Username: enrollUser(pub), Permissions: enrollPermissions(pub), ConnectionDeadline: exp})
		return true
	case err == nil || errors.Is(err, errAdmitRefused):
		a.refused("bad_token")
		return false
	default:
		a.refused("hub_unavailable")
		c.RegisterUser(&server.User{Username: "enroll-held:" + pub, ConnectionDeadline: now.Add(relayHoldFor),
			Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Deny: []string{">"}},
				Subscribe: &server.SubjectPermission{Deny: []string{">"}},
			}})
		return true
	}
}

// awaitEnrolledKey holds, at a relay, the connection of a key that has an
// enrollment attempt here and is not known yet: it has just enrolled
// through this relay and the hub's change notice is on its way. It asks
// for the keys at once (nudge) and waits up to relayKeyWait; any other
// key returns at once.
func (a *authenticator) awaitEnrolledKey(pub string) {
	deadline := time.NewTimer(relayKeyWait)
	defer deadline.Stop()
	for nudged := false; ; nudged = true {
		a.mu.Lock()
		_, known := a.nodes[pub]
		_, enrolling := a.pending[pub]
		if known || !enrolling {
			a.mu.Unlock()
			return
		}
		added := a.keyAdded.next()
		a.mu.Unlock()
		if !nudged && a.nudge != nil {
			a.nudge()
		}
		select {
		case <-added:
		case <-deadline.C:
			return
		}
	}
}

// awaitToken holds, at a cluster peer, an enrollment connection whose
// token this peer does not know yet (up to authReadyWait): a token just
// created on the active controller reaches a standby through its watch
// of mgn_tokens a moment later, and an agent refused meanwhile would give
// up for good. Any other connection, or a known token, returns at once.
func (a *authenticator) awaitToken(tok string) {
	h, isToken := tokenHash(tok)
	if !isToken {
		return
	}
	deadline := time.NewTimer(authReadyWait)
	defer deadline.Stop()
	for {
		if _, ok := a.tokens.validHash(h); ok {
			return
		}
		a.mu.Lock()
		if !a.waitTokens {
			a.mu.Unlock()
			return
		}
		added := a.tokenAdded.next()
		a.mu.Unlock()
		select {
		case <-added:
		case <-deadline.C:
			return
		}
	}
}

// tokenChanged wakes the connections awaitToken holds.
func (a *authenticator) tokenChanged() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokenAdded.fire()
}

// nodePermissions binds a node's connection to subjects that carry its own
// name: this is what makes the subject, not the payload, its identity.
func nodePermissions(name string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			messages.HeartbeatSubject(name),
			messages.SyncSubject(name),
			messages.AckSubject(name),
			messages.ResultSubject(name),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			messages.TaskSubject(name),
			messages.NodeInbox(name) + ".>",
		}},
	}
}

func enrollPermissions(pub string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{messages.EnrollSubject(pub)}},
		Subscribe: &server.SubjectPermission{Allow: []string{messages.EnrollInbox(pub) + ".>"}},
	}
}

// nodesResponderUser may hear what nodes send and answer only into node
// and enrollment inboxes. ReplyUnder narrows each answer further, to the
// requester's own inbox.
func nodesResponderUser() *server.User {
	return &server.User{Username: userNodesResp, Permissions: &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			messages.NodeInboxPrefix + ">",
			messages.EnrollInboxPrefix + ">",
			messages.RelayInboxPrefix + ">",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			messages.RelayKeysSubject,
			messages.RelayAdmitSubject,
			messages.EnrollPrefix + "*",
			messages.HeartbeatPfx + "*",
			messages.SyncPrefix + "*",
			messages.AckPrefix + "*",
			messages.ResultPrefix + "*",
		}},
	}}
}

// stateUser is the controller's own state connection: JetStream (its API,
// the KV buckets, object stores and the results stream), tasks to nodes
// and events. It hears only its own inbox.
func stateUser() *server.User {
	return &server.User{Username: userState, Permissions: &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>",
			messages.TaskPrefix + "*", messages.EventPrefix + "*", messages.StoredPrefix + "*",
			ctlPending, messages.RelayChangedSubject,
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{messages.OperatorInboxPrefix + ">", ctlPending}},
	}}
}

// apiResponderUser hears the operator API (which only the admin key may
// publish to) and answers only into operator inboxes.
func apiResponderUser() *server.User {
	return &server.User{Username: userAPIResp, Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{messages.OperatorInboxPrefix + ">"}},
		Subscribe: &server.SubjectPermission{Allow: []string{messages.APIPrefix + ">"}},
	}}
}

func verifySig(pub, sig string, nonce []byte) bool {
	if len(nonce) == 0 || sig == "" {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return false
		}
	}
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return false
	}
	return kp.Verify(nonce, raw) == nil
}

// addNode admits key pub as node name from now on. An attempt of that key
// still held is over when the key is new here (a standby learns
// enrollments from mgn_nodes, so its copy of the peers' attempts does not
// outlive them); a known key's later updates leave a re-enrollment alone.
func (a *authenticator) addNode(pub, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, known := a.nodes[pub]; !known {
		delete(a.pending, pub)
		a.keyAdded.fire()
	}
	a.nodes[pub] = name
	a.byName[name] = pub
}

// removeNode forgets a node's key, so that it cannot connect again. Its
// open connections are found through the server (Controller.disconnect).
func (a *authenticator) removeNode(pub string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if name, ok := a.nodes[pub]; ok && a.byName[name] == pub {
		delete(a.byName, name)
	}
	delete(a.nodes, pub)
}

// addRemotePending records an enrollment connection another peer
// admitted (clientID 0: not on this server). One this server admitted
// itself is kept as it is.
func (a *authenticator) addRemotePending(pub, tokenHash string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.pending[pub]; ok {
		return
	}
	a.addPendingLocked(pub, pendingEnroll{tokenHash: tokenHash, at: time.Now()})
}

// addPendingLocked records an attempt; when the map is full it makes room
// by dropping expired attempts, else the oldest one.
func (a *authenticator) addPendingLocked(pub string, p pendingEnroll) {
	if _, ok := a.pending[pub]; !ok && len(a.pending) >= maxPendingEnrollments {
		oldest, oldestAt := "", time.Time{}
		for k, q := range a.pending {
			if p.at.Sub(q.at) > pendingEnrollTTL {
				delete(a.pending, k)
				continue
			}
			if oldest == "" || q.at.Before(oldestAt) {
				oldest, oldestAt = k, q.at
			}
		}
		if len(a.pending) >= maxPendingEnrollments {
			delete(a.pending, oldest)
		}
	}
	a.pending[pub] = p
}

// pendingCount is the number of enrollment attempts held (tests, metrics).
func (a *authenticator) pendingCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// keyOf returns the key enrolled as node name, "" if none.
func (a *authenticator) keyOf(name string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byName[name]
}

// pendingFor returns the enrollment attempt of key pub without ending it:
// a refused enrollment leaves the attempt (and the token) as they were.
func (a *authenticator) pendingFor(pub string) (pendingEnroll, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pending[pub]
	return p, ok
}

// endPending forgets the enrollment attempt of key pub.
func (a *authenticator) endPending(pub string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pending, pub)
}

// internalKey makes a key for one of the controller's own connections.
func internalKey() (nkeys.KeyPair, string, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, "", err
	}
	pub, err := kp.PublicKey()
	return kp, pub, err
}

// nodeKeys returns a copy of the enrolled keys (public key -> name).
func (a *authenticator) nodeKeys() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.nodes)
}
