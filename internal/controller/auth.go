package controller

import (
	"encoding/base64"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/guildnet/metaguildnet/messages"
)

// authenticator decides, for every connection, who it is and what it may
// do. It is plugged into the embedded server as CustomClientAuthentication so
// that the fleet registry (not a static config file) is the source of truth
// and a removal takes effect on the next connect without a reload.
//
// Three kinds of clients exist:
//   - the operator (the controller itself and the CLI), by the admin NKey;
//   - an enrolled node, by its own NKey, bound to subjects carrying its name;
//   - a node enrolling, by a valid join token plus a fresh NKey whose
//     signature proves possession; it may only ask to enroll that key.
type authenticator struct {
	adminKey string
	tokens   *tokenStore

	mu      sync.Mutex
	nodes   map[string]string          // public key -> node name
	conns   map[string]map[uint64]bool // node name -> client ids seen
	pending map[string]string          // enrolling public key -> token hash
	refused func(reason string)        // counts refusals (metrics)
}

// maxPendingEnrollments bounds the memory held for enrollments in flight.
const maxPendingEnrollments = 4096

func newAuthenticator(adminKey string, tokens *tokenStore, refused func(string)) *authenticator {
	return &authenticator{
		adminKey: adminKey,
		tokens:   tokens,
		nodes:    map[string]string{},
		conns:    map[string]map[uint64]bool{},
		pending:  map[string]string{},
		refused:  refused,
	}
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
		c.RegisterUser(&server.User{Username: "admin"})
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if name, ok := a.nodes[o.Nkey]; ok {
		ids := a.conns[name]
		if ids == nil || len(ids) > 16 {
			ids = map[uint64]bool{}
			a.conns[name] = ids
		}
		ids[c.GetID()] = true
		c.RegisterUser(&server.User{Username: "node:" + name, Permissions: nodePermissions(name)})
		return true
	}
	if o.Token != "" {
		if h, ok := a.tokens.valid(o.Token); ok {
			if len(a.pending) >= maxPendingEnrollments {
				clear(a.pending) // abandoned attempts; their owners reconnect
			}
			a.pending[o.Nkey] = h
			c.RegisterUser(&server.User{Username: "enroll:" + o.Nkey, Permissions: enrollPermissions(o.Nkey)})
			return true
		}
		a.refused("bad_token")
		return false
	}
	a.refused("unknown_key")
	return false
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
			messages.InboxFor(name) + ".>",
		}},
	}
}

func enrollPermissions(pub string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{messages.EnrollSubject(pub)}},
		Subscribe: &server.SubjectPermission{Allow: []string{messages.InboxFor(pub) + ".>"}},
	}
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

func (a *authenticator) addNode(pub, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes[pub] = name
}

// removeNode forgets a node's key and returns the client ids it used, so
// the caller can disconnect them.
func (a *authenticator) removeNode(pub, name string) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.nodes, pub)
	var ids []uint64
	for id := range a.conns[name] {
		ids = append(ids, id)
	}
	delete(a.conns, name)
	return ids
}

// takePending returns the token hash an enrolling key connected with.
func (a *authenticator) takePending(pub string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.pending[pub]
	delete(a.pending, pub)
	return h, ok
}
