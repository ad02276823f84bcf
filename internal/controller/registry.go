package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/messages"
)

// nodeRecord is what the registry persists for a node.
type nodeRecord struct {
	Name       string            `json:"name"`
	PublicKey  string            `json:"public_key"`
	Cluster    string            `json:"cluster"`
	Role       string            `json:"role"`
	Labels     map[string]string `json:"labels"`
	EnrolledAt time.Time         `json:"enrolled_at"`
	LastSeen   time.Time         `json:"last_seen"`
	Facts      messages.Facts    `json:"facts"`
	// ClaimsRev grows with every change of Cluster, Role or Labels
	// (enrollment, nodes set), so a sync can tell the node when its copy
	// is old.
	ClaimsRev uint64 `json:"claims_rev,omitempty"`
}

func (rec *nodeRecord) claims() messages.NodeClaims {
	return messages.NodeClaims{Rev: rec.ClaimsRev, Cluster: rec.Cluster, Role: rec.Role, Labels: maps.Clone(rec.Labels)}
}

type node struct {
	rec     nodeRecord
	running []string
	state   string
	dirty   bool
}

// registry is the fleet: enrolled nodes, their attributes, facts and
// liveness. Heartbeats update memory only; a flusher persists changes to
// the KV bucket every few seconds. A node's record is written when it
// comes online, when its facts or claims change, and after a silence of
// 30 s, never for a heartbeat alone: a fleet beating every 5 s costs no
// writes at all. So the stored last_seen is as of the node's last change;
// after a restart a node is offline until its next heartbeat, and in a
// cluster the new active controller takes the heartbeats its standby self
// heard (warm.go).
type registry struct {
	kv           jetstream.KeyValue
	interval     time.Duration
	offlineAfter int // intervals

	mu    sync.RWMutex
	nodes map[string]*node
}

// newRegistry loads the registry from the nodes bucket without a consumer
// (kvEntries): it runs on every activation of a cluster peer.
func newRegistry(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, interval time.Duration, offlineAfter int) (*registry, error) {
	r := &registry{kv: kv, interval: interval, offlineAfter: offlineAfter, nodes: map[string]*node{}}
	entries, err := kvEntries(ctx, js, kv.Bucket())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for _, e := range entries {
		var rec nodeRecord
		if err := json.Unmarshal(e.Value, &rec); err != nil || rec.Name != e.Key {
			continue
		}
		r.load(rec)
	}
	return r, nil
}

// registryFrom builds the registry from records a cluster peer already
// holds (warmNodes) instead of reading the bucket.
func registryFrom(kv jetstream.KeyValue, interval time.Duration, offlineAfter int, recs map[string]nodeRecord) *registry {
	r := &registry{kv: kv, interval: interval, offlineAfter: offlineAfter, nodes: make(map[string]*node, len(recs))}
	for _, rec := range recs {
		r.load(rec)
	}
	return r
}

// heard raises each node's last_seen to when this peer last heard it, if
// later (warmNodes): an activation that had to read the bucket still
// starts with the nodes it heard as a standby online.
func (r *registry) heard(at map[string]time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for name, t := range at {
		if n, ok := r.nodes[name]; ok && t.After(n.rec.LastSeen) {
			n.rec.LastSeen = t
			n.state = r.stateAt(n, now)
		}
	}
}

// load adds a stored record.
func (r *registry) load(rec nodeRecord) {
	if messages.ValidateFacts(&rec.Facts) != nil {
		// Stored before facts were bounded: the next heartbeat with
		// facts fills them in again.
		rec.Facts = messages.Facts{}
	}
	n := &node{rec: rec}
	n.state = r.stateAt(n, time.Now())
	r.nodes[rec.Name] = n
}

// stateAt derives online/stale/offline from the heartbeat age: stale after
// StaleAfter missed intervals (plus half an interval of slack for jitter),
// offline after offlineAfter intervals (limits.go).
func (r *registry) stateAt(n *node, now time.Time) string {
	if n.rec.LastSeen.IsZero() {
		return messages.StateOffline
	}
	age := now.Sub(n.rec.LastSeen)
	switch {
	case age <= r.interval*(2*StaleAfter+1)/2:
		return messages.StateOnline
	case age <= r.interval*time.Duration(r.offlineAfter):
		return messages.StateStale
	default:
		return messages.StateOffline
	}
}

// canEnroll refuses a name that another key holds, before a token is spent
// on it.
func (r *registry) canEnroll(pub, name string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if n, ok := r.nodes[name]; ok && n.rec.PublicKey != pub {
		return messages.Errorf(messages.CodeConflict, "node name %q is already enrolled with another key: remove it first with `controller nodes remove %s`", name, name)
	}
	return nil
}

// scopeClaims resolves what an enrolling node asks to be against its join
// token's scope: it must stay inside it, and gets what it leaves empty.
func scopeClaims(req messages.EnrollRequest, scope messages.TokenScope) (messages.NodeClaims, error) {
	c := messages.NodeClaims{Cluster: req.Cluster, Role: req.Role, Labels: maps.Clone(req.Labels)}
	if scope.Cluster != "" {
		switch c.Cluster {
		case "":
			c.Cluster = scope.Cluster
		case scope.Cluster:
		default:
			return c, messages.Errorf(messages.CodeBadRequest, "cluster %q: the join token is for cluster %q only", c.Cluster, scope.Cluster)
		}
	}
	if len(scope.Roles) > 0 {
		switch {
		case c.Role == "" && len(scope.Roles) == 1:
			c.Role = scope.Roles[0]
		case c.Role == "":
			return c, messages.Errorf(messages.CodeBadRequest, "role: the join token allows roles %s: give one with --role", strings.Join(scope.Roles, ", "))
		case !slices.Contains(scope.Roles, c.Role):
			return c, messages.Errorf(messages.CodeBadRequest, "role %q: the join token allows only %s", c.Role, strings.Join(scope.Roles, ", "))
		}
	}
	for k, v := range scope.Labels {
		if got, ok := c.Labels[k]; ok && got != v {
			return c, messages.Errorf(messages.CodeBadRequest, "label %s=%s: the join token sets %s=%s", k, got, k, v)
		}
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		c.Labels[k] = v
	}
	return c, nil
}

// enroll adds a node with the given claims, or confirms it when the same
// key enrolls again (its claims then stay what they are: the operator's).
func (r *registry) enroll(ctx context.Context, pub string, req messages.EnrollRequest, c messages.NodeClaims) (messages.NodeClaims, error) {
	r.mu.Lock()
	old, ok := r.nodes[req.Name]
	if ok && old.rec.PublicKey != pub {
		r.mu.Unlock()
		return c, messages.Errorf(messages.CodeConflict, "node name %q is already enrolled with another key: remove it first with `controller nodes remove %s`", req.Name, req.Name)
	}
	now := time.Now().UTC()
	n := &node{rec: nodeRecord{
		Name: req.Name, PublicKey: pub, Cluster: c.Cluster, Role: c.Role,
		Labels: c.Labels, EnrolledAt: now, LastSeen: now, Facts: req.Facts, ClaimsRev: 1,
	}}
	if ok {
		n.rec.EnrolledAt = old.rec.EnrolledAt
		n.rec.Cluster, n.rec.Role, n.rec.Labels, n.rec.ClaimsRev = old.rec.Cluster, old.rec.Role, old.rec.Labels, old.rec.ClaimsRev
	}
	n.state = messages.StateOnline
	r.nodes[req.Name] = n
	rec := n.rec
	r.mu.Unlock()
	return rec.claims(), r.persist(ctx, rec)
}

// errClaims is a heartbeat that asserts claims the node does not have.
type errClaims struct{ field, got, want string }

func (e *errClaims) Error() string {
	return fmt.Sprintf("heartbeat claims %s %q, but the node is enrolled with %q (only `controller nodes set` changes it)", e.field, e.got, e.want)
}

// checkClaims refuses a heartbeat whose claims differ from the node's. An
// agent of this version sends none.
func checkClaims(hb *messages.Heartbeat, rec *nodeRecord) error {
	if hb.Cluster != "" && hb.Cluster != rec.Cluster {
		return &errClaims{"cluster", hb.Cluster, rec.Cluster}
	}
	if hb.Role != "" && hb.Role != rec.Role {
		return &errClaims{"role", hb.Role, rec.Role}
	}
	if len(hb.Labels) > 0 && !maps.Equal(hb.Labels, rec.Labels) {
		return &errClaims{"labels", fmt.Sprint(hb.Labels), fmt.Sprint(rec.Labels)}
	}
	return nil
}

// set changes a node's claims (the operator's API).
func (r *registry) set(ctx context.Context, req messages.NodesSetRequest) (messages.NodeClaims, error) {
	r.mu.Lock()
	n, ok := r.nodes[req.Name]
	if !ok {
		r.mu.Unlock()
		return messages.NodeClaims{}, messages.Errorf(messages.CodeNotFound, "no node named %q (see `controller status`)", req.Name)
	}
	rec := n.rec
	if req.Cluster != nil {
		rec.Cluster = *req.Cluster
	}
	if req.Role != nil {
		rec.Role = *req.Role
	}
	rec.Labels = maps.Clone(rec.Labels)
	if rec.Labels == nil && len(req.Labels) > 0 {
		rec.Labels = map[string]string{}
	}
	maps.Copy(rec.Labels, req.Labels)
	for _, k := range req.UnsetLabels {
		delete(rec.Labels, k)
	}
	if err := messages.ValidateLabels(rec.Labels); err != nil {
		r.mu.Unlock()
		return messages.NodeClaims{}, messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	rec.ClaimsRev++
	n.rec = rec
	r.mu.Unlock()
	return rec.claims(), r.persist(ctx, rec)
}

// enrolledAs returns the claims of node name when key pub holds it.
func (r *registry) enrolledAs(pub, name string) (messages.NodeClaims, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n, ok := r.nodes[name]
	if !ok || n.rec.PublicKey != pub {
		return messages.NodeClaims{}, false
	}
	return n.rec.claims(), true
}

// claims returns a node's claims.
func (r *registry) claims(name string) (messages.NodeClaims, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n, ok := r.nodes[name]
	if !ok {
		return messages.NodeClaims{}, false
	}
	return n.rec.claims(), true
}

func (r *registry) persist(ctx context.Context, rec nodeRecord) error {
	b, _ := json.Marshal(rec)
	if _, err := r.kv.Put(ctx, rec.Name, b); err != nil {
		return fmt.Errorf("store node %s: %w", rec.Name, err)
	}
	return nil
}

// heartbeat records a sign of life; it returns false for an unknown node,
// and an *errClaims (with nothing recorded) for a heartbeat that claims to
// be in another cluster, role or label set than the node is.
func (r *registry) heartbeat(name string, hb messages.Heartbeat, now time.Time) (prev string, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.nodes[name]
	if !ok {
		return "", false, nil
	}
	if err := checkClaims(&hb, &n.rec); err != nil {
		return n.state, true, err
	}
	prev = n.state
	// A node heard after a silence of persistEvery (or not online until
	// now) is written; its steady heartbeats are not (see registry).
	persistEvery := 30 * time.Second
	if now.Sub(n.rec.LastSeen) > persistEvery || n.state != messages.StateOnline {
		n.dirty = true
	}
	n.rec.LastSeen = now
	n.state = messages.StateOnline
	n.running = hb.Running
	if hb.Facts != nil && !factsEqual(*hb.Facts, n.rec.Facts) {
		n.rec.Facts = *hb.Facts
		n.dirty = true
	}
	return prev, true, nil
}

func factsEqual(a, b messages.Facts) bool {
	return a.Hostname == b.Hostname && a.OS == b.OS && a.Kernel == b.Kernel && a.Arch == b.Arch &&
		a.CPUs == b.CPUs && a.MemoryBytes == b.MemoryBytes && a.AgentVersion == b.AgentVersion &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.TailnetIPs, b.TailnetIPs) && a.BootTime == b.BootTime &&
		a.Tailnet.Equal(b.Tailnet)
}

// flush writes dirty records.
func (r *registry) flush(ctx context.Context) {
	r.mu.Lock()
	var recs []nodeRecord
	for _, n := range r.nodes {
		if n.dirty {
			n.dirty = false
			recs = append(recs, n.rec)
		}
	}
	r.mu.Unlock()
	for _, rec := range recs {
		r.persist(ctx, rec)
	}
}

// transition is a node whose derived state changed.
type transition struct{ node, from, to string }

// sweep recomputes states and returns the changes.
func (r *registry) sweep(now time.Time) []transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []transition
	for name, n := range r.nodes {
		s := r.stateAt(n, now)
		if s != n.state {
			out = append(out, transition{name, n.state, s})
			n.state = s
			n.dirty = true
		}
	}
	return out
}

// remove deletes a node and returns its public key.
func (r *registry) remove(ctx context.Context, name string) (string, error) {
	r.mu.Lock()
	n, ok := r.nodes[name]
	delete(r.nodes, name)
	r.mu.Unlock()
	if !ok {
		return "", messages.Errorf(messages.CodeNotFound, "no node named %q (see `controller status`)", name)
	}
	if err := r.kv.Purge(ctx, name); err != nil {
		return n.rec.PublicKey, fmt.Errorf("delete node %s: %w", name, err)
	}
	return n.rec.PublicKey, nil
}

func (r *registry) state(name string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n, ok := r.nodes[name]
	if !ok {
		return "", false
	}
	return r.stateAt(n, time.Now()), true
}

// seenSince reports whether a heartbeat of node came after t (setup waits
// for the agents of a resumed run to be back, not for a last_seen that a
// restart restored).
func (r *registry) seenSince(name string, t time.Time) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n, ok := r.nodes[name]
	return ok && n.rec.LastSeen.After(t)
}

// keys returns public key by node name, for the authenticator at start.
func (r *registry) keys() map[string]string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m := make(map[string]string, len(r.nodes))
	for name, n := range r.nodes {
		m[n.rec.PublicKey] = name
	}
	return m
}

// status builds the fleet view, sorted by cluster then name.
func (r *registry) status(now time.Time) messages.StatusReply {
	r.mu.RLock()
	out := messages.StatusReply{V: messages.Version, Nodes: make([]messages.NodeStatus, 0, len(r.nodes)), HeartbeatInterval: r.interval.String()}
	for _, n := range r.nodes {
		st := r.stateAt(n, now)
		ns := messages.NodeStatus{
			Name: n.rec.Name, Cluster: n.rec.Cluster, Role: n.rec.Role, Labels: n.rec.Labels,
			State: st, LastSeen: n.rec.LastSeen, AgentVersion: n.rec.Facts.AgentVersion,
			Addresses: n.rec.Facts.Addresses, Running: n.running, Facts: n.rec.Facts, EnrolledAt: n.rec.EnrolledAt,
			Tailnet: n.rec.Facts.Tailnet,
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		if ns.Addresses == nil {
			ns.Addresses = []string{}
		}
		if !n.rec.LastSeen.IsZero() {
			ns.AgeMS = now.Sub(n.rec.LastSeen).Milliseconds()
		}
		switch st {
		case messages.StateOnline:
			out.Summary.Online++
		case messages.StateStale:
			out.Summary.Stale++
		default:
			out.Summary.Offline++
		}
		out.Nodes = append(out.Nodes, ns)
	}
	r.mu.RUnlock()
	sort.Slice(out.Nodes, func(i, j int) bool {
		a, b := out.Nodes[i], out.Nodes[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		return a.Name < b.Name
	})
	return out
}

// selector is a parsed --target.
type selector struct {
	all   bool
	name  string
	attrs map[string]string // cluster, role, name and labels, ANDed
}

// parseSelector accepts all, NAME, cluster=C, role=R, or k=v[,k=v...].
func parseSelector(s string) (selector, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return selector{}, fmt.Errorf("target: empty selector (use all, a node name, cluster=C, role=R or k=v,...)")
	case s == "all":
		return selector{all: true}, nil
	case !strings.Contains(s, "="):
		if err := messages.ValidNodeName(s); err != nil {
			return selector{}, fmt.Errorf("target %q: %w", s, err)
		}
		return selector{name: s}, nil
	}
	sel := selector{attrs: map[string]string{}}
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" || v == "" {
			return selector{}, fmt.Errorf("target %q: %q is not k=v", s, part)
		}
		sel.attrs[k] = v
	}
	return sel, nil
}

func (sel selector) matches(rec *nodeRecord) bool {
	if sel.all {
		return true
	}
	if sel.name != "" {
		return rec.Name == sel.name
	}
	for k, v := range sel.attrs {
		var got string
		switch k {
		case "cluster":
			got = rec.Cluster
		case "role":
			got = rec.Role
		case "name":
			got = rec.Name
		default:
			got = rec.Labels[k]
		}
		if got != v {
			return false
		}
	}
	return true
}

// selectNodes resolves a selector to sorted node names, and the state of
// those that are offline (the only state issuing a task looks at).
func (r *registry) selectNodes(sel selector, now time.Time) (names []string, offline map[string]string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if sel.name == "" { // may match many: one allocation, not a doubling series
		names = make([]string, 0, len(r.nodes))
	}
	for name, n := range r.nodes {
		if sel.matches(&n.rec) {
			names = append(names, name)
			if s := r.stateAt(n, now); s == messages.StateOffline {
				if offline == nil {
					offline = map[string]string{}
				}
				offline[name] = s
			}
		}
	}
	slices.Sort(names)
	return names, offline
}

func (r *registry) counts(now time.Time) (online, stale, offline int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, n := range r.nodes {
		switch r.stateAt(n, now) {
		case messages.StateOnline:
			online++
		case messages.StateStale:
			stale++
		default:
			offline++
		}
	}
	return
}

// count is the number of enrolled nodes.
func (r *registry) count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.nodes)
}
