package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// ClusterOptions make the controller one peer of a cluster (docs/HA.md).
// The zero value is a single controller.
type ClusterOptions struct {
	// Name is the NATS cluster's name (--cluster-name); "" for a single
	// controller.
	Name string
	// Listen is where this peer accepts routes (--cluster-listen).
	Listen string
	// Peers are the other peers' route URLs (--peers nats://A,nats://B).
	Peers []string
	// SecretFile holds the secret routes authenticate with; every peer
	// has the same one (default DATA_DIR/cluster.secret).
	SecretFile string
	// LeaseTTL is how long the active controller's lease outlives its
	// last renewal (default DefaultLeaseTTL).
	LeaseTTL time.Duration
}

// Enabled reports whether these options make a cluster peer.
func (o ClusterOptions) Enabled() bool { return o.Name != "" }

const (
	// A route to a peer that answers no ping for routeMaxPingsOut
	// intervals, or takes writes for routeWriteDeadline, is closed.
	routePingInterval  = time.Second
	routeMaxPingsOut   = 2
	routeWriteDeadline = 2 * time.Second

	routeUser = "mgn-route"
	// ctlPending is where a peer tells the others about an enrollment
	// connection it admitted: the active controller, which answers the
	// enrollment, must know the attempt (auth.go). Only the controllers'
	// state connections may publish or subscribe here.
	ctlPending    = "mgn.ctl.pending"
	globalAccount = "$G"
	nodesBucket   = "mgn_nodes"
	tokensBucket  = "mgn_tokens"
	// leaseBucket holds the lease (lease.go); backups leave it out.
	leaseBucket    = "mgn_lease"
	leaderStepdown = "$JS.API.META.LEADER.STEPDOWN"
)

func (o *ClusterOptions) resolve(dataDir string) error {
	if !o.Enabled() {
		if o.Listen != "" || len(o.Peers) > 0 {
			return errors.New("--cluster-listen and --peers need --cluster-name")
		}
		return nil
	}
	if err := messages.ValidClusterName(o.Name); err != nil {
		return fmt.Errorf("--cluster-name %q: %w", o.Name, err)
	}
	if o.Listen == "" {
		return errors.New("--cluster-listen: required with --cluster-name (HOST:PORT the peers' routes reach)")
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return fmt.Errorf("--cluster-listen %q: %w", o.Listen, err)
	}
	for _, p := range o.Peers {
		u, err := url.Parse(p)
		if err != nil || u.Scheme != "nats" || u.Host == "" || u.User != nil {
			return fmt.Errorf("--peers %q: want nats://HOST:PORT (no credentials: routes authenticate with the cluster secret file)", p)
		}
	}
	if o.SecretFile == "" {
		o.SecretFile = filepath.Join(dataDir, "cluster.secret")
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.LeaseTTL < MinLeaseTTL {
		return fmt.Errorf("--lease-ttl %v: must be at least %v", o.LeaseTTL, MinLeaseTTL)
	}
	return nil
}

// readClusterSecret reads the routes' shared secret. A missing file is
// an error that says how to make one: peers must share it, so none is
// made silently.
func readClusterSecret(path string) (string, error) {
	return readSecretFile("cluster secret", path)
}

// serverName is this peer's stable name, made once and kept in the data
// dir: JetStream knows its peers by name across restarts.
func serverName(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "server-name")
	if b, err := os.ReadFile(p); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" && len(s) <= 64 {
			return s, nil
		}
	}
	var r [4]byte
	rand.Read(r[:])
	s := "mgn-" + hex.EncodeToString(r[:])
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("server name: %w", err)
	}
	return s, nil
}

// applyCluster adds routes, their authentication and the stable server
// name to the server options.
func (c *Controller) applyCluster(sopts *server.Options) error {
	o := c.opts.Cluster
	if !o.Enabled() {
		return nil
	}
	secret, err := readClusterSecret(o.SecretFile)
	if err != nil {
		return err
	}
	name, err := serverName(c.opts.DataDir)
	if err != nil {
		return err
	}
	host, portStr, _ := net.SplitHostPort(o.Listen)
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("--cluster-listen %q: bad port", o.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts.ServerName = name
	// A peer that stops reading (paused by SIGSTOP, a frozen VM) keeps its
	// TCP connections open: NATS' route defaults (a ping every 2 minutes, a
	// 10 s write deadline after which the route is kept and the write
	// retried) let it stall the survivors' routes, Raft traffic included,
	// for far longer than a failover may take. Pings every second and a
	// write deadline that closes the route drop such a peer within ~3 s,
	// like a dead one.
	sopts.Cluster = server.ClusterOpts{Name: o.Name, Host: host, Port: port,
		Username: routeUser, Password: secret, ConnectRetries: -1,
		PingInterval: routePingInterval, MaxPingsOut: routeMaxPingsOut,
		WriteDeadline: routeWriteDeadline, WriteTimeout: server.WriteTimeoutPolicyClose}
	for _, p := range o.Peers {
		u, _ := url.Parse(p)
		u.User = url.UserPassword(routeUser, secret)
		sopts.Routes = append(sopts.Routes, u)
	}
	return nil
}

// Replicas is what a stream, bucket or object store of this controller is
// created with: 3 once the JetStream cluster has 3 or more peers, else 1.
// Buckets created with fewer are raised when peers join
// (reconcileReplicas), so code adding a bucket uses Replicas() and never
// lowers a replica count.
func (c *Controller) Replicas() int {
	if !c.opts.Cluster.Enabled() || c.ns == nil {
		return 1
	}
	if c.peersUp() >= 3 {
		return 3
	}
	return 1
}

// peersUp counts this server and the peers it has routes to now.
func (c *Controller) peersUp() int {
	rz, err := c.ns.Routez(nil)
	if err != nil {
		return 1
	}
	seen := map[string]bool{}
	for _, r := range rz.Routes {
		seen[r.RemoteName] = true
	}
	return len(seen) + 1
}

// reconcileReplicas raises every stream whose replica count is below
// Replicas(), every 10 s while active, and keeps raft leaderships off this
// server (keepNoLeaders, every second). The two run apart: raising
// replicas lists streams, which waits for a JetStream meta leader, and
// must not hold the leaderships back.
func (c *Controller) reconcileReplicas(stop <-chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			c.keepNoLeaders()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { <-done }()
	active, end := context.WithCancel(context.Background())
	defer end()
	go func() {
		select {
		case <-stop:
		case <-active.Done():
		}
		end()
	}()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(active, 10*time.Second)
		c.raiseReplicas(ctx)
		cancel()
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func (c *Controller) raiseReplicas(ctx context.Context) {
	want := c.Replicas()
	if want <= 1 {
		return
	}
	l := c.js.ListStreams(ctx)
	var low []jetstream.StreamConfig
	for si := range l.Info() {
		if si.Config.Replicas < want {
			low = append(low, si.Config)
		}
	}
	for _, cfg := range low {
		if !c.acting() {
			return
		}
		cfg.Replicas = want
		if _, err := c.js.UpdateStream(ctx, cfg); err != nil {
			c.logRate.warn(c.log, "replicas:"+cfg.Name, "raise replicas", zap.String("stream", cfg.Name), zap.Int("replicas", want), zap.Error(err))
			continue
		}
		c.log.Info("stream replicas raised", zap.String("stream", cfg.Name), zap.Int("replicas", want))
	}
}

// keepNoLeaders asks this server to step down from the Raft leaderships
// it holds (each stream's, and the meta leadership), so that killing the
// active controller costs no Raft election (4-9 s in NATS), only the
// lease TTL. It reads local state only.
//
// Only with every peer of a 3-peer cluster up, and only for a group that
// has another replica caught up and heard from within the last
// healthyPeer: a stepdown with no healthy peer to hand over to leaves the
// group without a leader until an election (a peer paused by SIGSTOP keeps
// its routes, so the route count alone does not tell).
func (c *Controller) keepNoLeaders() {
	if !c.opts.Cluster.Enabled() || c.peersUp() < 3 {
		return
	}
	me := c.ns.Name()
	ad, err := c.ns.JszAccount(&server.JSzOptions{Account: globalAccount, Streams: true})
	if err == nil && ad != nil {
		for _, sd := range ad.Streams {
			if sd.Cluster != nil && sd.Cluster.Leader == me && healthyReplica(sd.Cluster.Replicas) {
				if err := c.ns.JetStreamStepdownStream(globalAccount, sd.Name); err == nil {
					c.log.Debug("stream leadership handed over", zap.String("stream", sd.Name))
				}
			}
		}
	}
	if c.sysNC == nil || !c.ns.JetStreamIsLeader() {
		return
	}
	if jz, err := c.ns.Jsz(&server.JSzOptions{}); err == nil && jz.Meta != nil && healthyReplica(jz.Meta.Replicas) {
		c.log.Debug("meta leadership handed over")
		c.sysNC.Publish(leaderStepdown, nil)
	}
}

// healthyPeer is how recently a replica must have been heard from to be
// handed a leadership (NATS' own live window is 3 heartbeats of 1 s).
const healthyPeer = 2 * time.Second

func healthyReplica(rs []*server.PeerInfo) bool {
	for _, r := range rs {
		if r != nil && r.Current && !r.Offline && r.Active < healthyPeer {
			return true
		}
	}
	return false
}

// systemUser may only ask the meta leader to step down.
func systemUser(acc *server.Account) *server.User {
	return &server.User{Username: "controller-sys", Account: acc, Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{leaderStepdown}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}}
}

// startCluster runs on every peer after the server is up: it waits for
// JetStream, keeps the authenticator in step with the replicated nodes
// and tokens, and runs the lease loop that activates this controller.
func (c *Controller) startCluster() error {
	var err error
	c.ctlNC.Store(c.nc)
	if c.sysNC, err = c.connectInternal(systemUser(c.ns.SystemAccount())); err != nil {
		return err
	}
	sub, err := c.nc.Subscribe(ctlPending, func(m *nats.Msg) {
		var p pendingNotice
		if len(m.Data) > 1024 || json.Unmarshal(m.Data, &p) != nil || p.Pub == "" || p.TokenHash == "" {
			return
		}
		if p.From == c.ns.ID() {
			// Its own notice: the attempt is in the map already, and may
			// have enrolled and left it since (re-adding it leaked one
			// entry per enrollment at the active controller).
			return
		}
		c.auth.addRemotePending(p.Pub, p.TokenHash)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", ctlPending, err)
	}
	sub.SetPendingLimits(1<<16, 64<<20)
	c.wg.Add(3)
	c.warm = newWarmNodes()
	c.held = &heldResults{}
	c.wg.Add(1)
	go c.watchRoutes()
	hb, err := c.nodesNC.Subscribe(messages.HeartbeatPfx+"*", c.onStandbyHeartbeat)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", messages.HeartbeatPfx+"*", err)
	}
	hb.SetPendingLimits(1<<17, 64<<20) // a heartbeat dropped here costs nothing
	go func() { defer c.wg.Done(); c.watchAuth(nodesBucket, c.onNodeRecord, c.warm.restart) }()
	c.auth.mu.Lock()
	c.auth.waitTokens = true
	c.auth.mu.Unlock()
	go func() { defer c.wg.Done(); c.watchAuth(tokensBucket, c.onTokenRecord, nil) }()
	go func() {
		// The lease bucket needs JetStream, which needs a quorum of peers:
		// wait for it here rather than in Start.
		kv := c.openLeaseBucket()
		if kv == nil {
			c.wg.Done()
			return
		}
		c.lease.setKV(kv)
		c.adoptLeaseTTL(kv)
		c.leaseLoop()
	}()
	return nil
}

// announcePending tells the other peers about an enrollment connection
// this server admitted (authenticator.onPending).
func (c *Controller) announcePending(pub, tokenHash string) {
	if nc := c.stateConn(); nc != nil {
		b, _ := json.Marshal(pendingNotice{Pub: pub, TokenHash: tokenHash, From: c.ns.ID()})
		nc.Publish(ctlPending, b)
	}
}

type pendingNotice struct {
	Pub       string `json:"pub"`
	TokenHash string `json:"token_hash"`
	From      string `json:"from,omitempty"` // the announcing server's ID
}

func (c *Controller) openLeaseBucket() jetstream.KeyValue {
	var kv jetstream.KeyValue
	ok := c.retryUntil("lease-bucket", "waiting for JetStream (a quorum of peers) to open the lease bucket", func(ctx context.Context) (err error) {
		kv, err = c.js.KeyValue(ctx, leaseBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			// File storage, though the key is tiny: an R3 memory stream
			// whose leadership moved several times in a few seconds (a new
			// active controller hands its leaderships over, keepNoLeaders)
			// could stop committing writes for minutes while every replica
			// reported it healthy (TestClusterReactivation failed so 1 run
			// in 2, and no controller could renew or take the lease); with
			// file storage 0 in 10.
			kv, err = c.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: leaseBucket,
				History: 1, TTL: c.opts.Cluster.LeaseTTL, Storage: jetstream.FileStorage, Replicas: c.Replicas(),
				Description: "which controller is active (docs/HA.md)"})
			if errors.Is(err, jetstream.ErrBucketExists) {
				kv, err = c.js.KeyValue(ctx, leaseBucket)
			}
		}
		return err
	})
	if !ok {
		return nil
	}
	return kv
}

// retryUntil calls f (5 s each time) until it succeeds, true, or the
// controller stops, false; a failure is logged as what, rate-limited
// under key.
func (c *Controller) retryUntil(key, what string, f func(ctx context.Context) error) bool {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return true
		}
		c.logRate.warn(c.log, key, what, zap.Error(err))
		select {
		case <-c.stop:
			return false
		case <-time.After(retryWait(attempt)):
		}
	}
}

// retryWait is the wait before a peer's next attempt at something another
// peer or JetStream has to answer (a quorum, a bucket's creation): short,
// as a failover waits on it, and doubling up to 2 s.
func retryWait(attempt int) time.Duration {
	return min(250*time.Millisecond<<min(attempt, 3), 2*time.Second)
}

// adoptLeaseTTL makes the lease's TTL the bucket's: the key's lifetime
// is the bucket's MaxAge, set when the cluster's first controller created
// it, and a holder acting longer than the key lives (a --lease-ttl above
// the bucket's) could overlap the next holder. A cluster keeps its TTL
// until the bucket is recreated (docs/HA.md).
func (c *Controller) adoptLeaseTTL(kv jetstream.KeyValue) {
	var st jetstream.KeyValueStatus
	if !c.retryUntil("lease-bucket", "waiting for JetStream to read the lease bucket's TTL", func(ctx context.Context) (err error) {
		st, err = kv.Status(ctx)
		return err
	}) {
		return
	}
	if st.TTL() <= 0 || st.TTL() == c.lease.ttl {
		return
	}
	c.log.Warn("the lease bucket's TTL differs from --lease-ttl: using the bucket's, which every peer shares",
		zap.Duration("bucket_ttl", st.TTL()), zap.Duration("lease_ttl_flag", c.lease.ttl))
	c.lease.kvMu.Lock() // for readers outside the lease loop (watchPeers, tests)
	c.lease.ttl = st.TTL()
	c.lease.kvMu.Unlock()
}

// watchAuth follows a bucket the authenticator depends on, from its
// current values on, until the controller stops; it waits for the bucket
// to exist (the first active controller creates it).
func (c *Controller) watchAuth(bucket string, apply func(jetstream.KeyValueEntry), restarted func()) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-c.stop; cancel() }()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		kv, err := c.js.KeyValue(ctx, bucket)
		if err == nil {
			var w jetstream.KeyWatcher
			if w, err = kv.WatchAll(ctx); err == nil {
				attempt = 0
				if restarted != nil {
					restarted()
				}
				for e := range w.Updates() {
					apply(e) // nil: the bucket's contents have all been delivered
				}
				w.Stop()
			}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.logRate.warn(c.log, "watch:"+bucket, "watch bucket (retrying)", zap.String("bucket", bucket), zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryWait(attempt)):
		}
	}
}

// onNodeRecord keeps the authenticator's keys as the nodes bucket has
// them; a deleted node's connections to this server are closed.
func (c *Controller) onNodeRecord(e jetstream.KeyValueEntry) {
	if e == nil {
		c.warm.caughtUp()
		// The keys are loaded: connections stop waiting for them. Until
		// this a standby held every agent's connection authReadyWait
		// (1.5 s) in its authenticator, so the agents of a lost peer took
		// 2-5 s to reconnect, most of a failover at 10,000 agents.
		c.auth.markReady()
		return
	}
	name := e.Key()
	rec, ok := parseNodeEntry(e)
	c.warm.apply(e, rec, ok)
	switch e.Operation() {
	case jetstream.KeyValuePut:
		if !ok || rec.PublicKey == "" {
			return
		}
		old := c.auth.keyOf(name)
		if old == rec.PublicKey {
			return // a heartbeat's flush: same key
		}
		if old != "" {
			c.auth.removeNode(old)
			c.disconnectKey(old)
		}
		c.auth.addNode(rec.PublicKey, name)
	default:
		if pub := c.auth.keyOf(name); pub != "" {
			c.auth.removeNode(pub)
			c.disconnectKey(pub)
		}
	}
}

func (c *Controller) onTokenRecord(e jetstream.KeyValueEntry) {
	if e == nil {
		return
	}
	defer c.auth.tokenChanged() // after the update below
	c.tokens.mu.Lock()
	defer c.tokens.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(c.tokens.m, e.Key())
		return
	}
	var r tokenRecord
	if json.Unmarshal(e.Value(), &r) == nil {
		c.tokens.m[e.Key()] = r
	}
}

// LeaseInfo says who holds the lease (for /leasez and tests).
type LeaseInfo struct {
	Cluster bool   `json:"cluster"`
	Server  string `json:"server"`
	Active  bool   `json:"active"`
	Holder  string `json:"holder,omitempty"`
	Rev     uint64 `json:"rev,omitempty"`
	// ActiveSince is when this controller's activation finished (zero on
	// a standby): a failover's length is ActiveSince minus the loss.
	ActiveSince time.Time `json:"active_since,omitzero"`
}

// Lease reports this controller's role and the lease's holder.
func (c *Controller) Lease(ctx context.Context) LeaseInfo {
	li := LeaseInfo{Cluster: c.opts.Cluster.Enabled(), Active: c.Active()}
	c.actMu.Lock()
	if c.act != nil && li.Active {
		li.ActiveSince = c.act.since
	}
	c.actMu.Unlock()
	if c.ns != nil {
		li.Server = c.ns.Name()
	}
	if kv := c.lease.bucket(); kv != nil {
		if r, rev, err := leaseHolder(ctx, kv); err == nil {
			li.Holder, li.Rev = r.Holder, rev
		}
	}
	return li
}

// replicasFor is the replica count to create or update stream name with:
// Replicas(), or more if the stream has more already (never lowered).
func (c *Controller) replicasFor(ctx context.Context, name string) int {
	want := c.Replicas()
	if !c.opts.Cluster.Enabled() {
		return want
	}
	if s, err := c.js.Stream(ctx, name); err == nil {
		want = max(want, s.CachedInfo().Config.Replicas)
	}
	return want
}

func (c *Controller) stateConn() *nats.Conn { return c.ctlNC.Load() }

func (c *Controller) setActiveMetric(on bool) {
	if on {
		c.activeGauge.Set(1)
	} else {
		c.activeGauge.Set(0)
	}
}

// serveLeasez answers GET /leasez: this controller's role and the lease's
// holder, as JSON (status 200 on the active controller, 503 on a standby,
// so a load balancer or a probe can tell them apart).
func (c *Controller) serveLeasez(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	li := c.Lease(ctx)
	w.Header().Set("Content-Type", "application/json")
	if !li.Active {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(li)
}

// existingKV, existingStream and existingObjectStore open what exists
// without touching its configuration when this controller is a cluster
// peer: an activation then needs only the streams' leaders, never a
// JetStream meta-layer update (which waits for an election when a peer
// is gone). Opening is a STREAM.INFO, which a stream's leader answers; it
// is tried in short attempts (leaderAttempt) so that a request lost while
// a leadership moves costs one attempt, not the API timeout. Only a
// bucket that does not exist falls through to its creation (a meta-layer
// write); any other error fails the activation, which is retried. A single
// controller creates or updates as before.
func (c *Controller) existingKV(ctx context.Context, name string) (jetstream.KeyValue, bool, error) {
	if !c.opts.Cluster.Enabled() {
		return nil, false, nil
	}
	var kv jetstream.KeyValue
	err := leaderRetry(ctx, func(ctx context.Context) (err error) {
		kv, err = c.js.KeyValue(ctx, name)
		return err
	})
	switch {
	case err == nil:
		return kv, true, nil
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("open bucket %s: %w", name, err)
}

func (c *Controller) existingStream(ctx context.Context, name string, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if c.opts.Cluster.Enabled() {
		var s jetstream.Stream
		err := leaderRetry(ctx, func(ctx context.Context) (err error) {
			s, err = c.js.Stream(ctx, name)
			return err
		})
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, err
		}
	}
	return c.js.CreateOrUpdateStream(ctx, cfg)
}

func (c *Controller) existingObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	if c.opts.Cluster.Enabled() {
		var o jetstream.ObjectStore
		err := leaderRetry(ctx, func(ctx context.Context) (err error) {
			o, err = c.js.ObjectStore(ctx, cfg.Bucket)
			return err
		})
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, err
		}
	}
	return c.js.CreateOrUpdateObjectStore(ctx, cfg)
}

// leaderAttempt bounds one request that a stream leader answers. Right
// after a leadership moved (a stepdown, a lost peer) a request may reach
// no leader and get no answer at all: it is sent again rather than waited
// for until the API timeout.
const leaderAttempt = time.Second

// leaderRetry runs f in attempts of leaderAttempt until it succeeds,
// fails with an answer that is not about availability, or ctx ends (30 s
// when ctx has no deadline).
func leaderRetry(ctx context.Context, f func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	for {
		actx, cancel := context.WithTimeout(ctx, leaderAttempt)
		err := f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// retryable reports an error that says no leader answered (yet).
func retryable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: "JetStream system temporarily unavailable" (no meta
		// leader), and the like.
		return apiErr.Code == 503 || apiErr.ErrorCode == 10008 // JSClusterNotAvailErr
	}
	return strings.Contains(err.Error(), "temporarily unavailable")
}
