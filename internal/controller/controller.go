// Package controller is the controller's runtime: an embedded NATS server
// with JetStream that holds all fleet state under the data dir, the
// registry of enrolled nodes and their liveness, the task dispatcher, the
// operator API on mgn.api.*, and the HTTP endpoint for /healthz and
// /metrics. cmd/controller only parses flags and calls [Start].
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/dashboard"
	"github.com/guildnet/metaguildnet/internal/privdir"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// Options configure a controller. Zero values mean the defaults, and
// values that cannot work are refused by Start, both in limits.go.
type Options struct {
	DataDir string
	// Listen is the NATS client address (host:port; port 0 picks one).
	Listen string
	// Advertise is the URL agents reach this controller at when it is not
	// Listen's (NAT, a load balancer, a DNS name): join tokens carry it and
	// the server's INFO advertises it to clients (and, in a cluster, to
	// every peer's clients). See joinURLs.
	Advertise string
	// HTTP is the /healthz and /metrics address; "" disables it.
	HTTP string
	// HeartbeatInterval is what agents are told to use (default 5s).
	HeartbeatInterval time.Duration
	// OfflineAfter is how many intervals without a heartbeat make a node
	// offline (default 6); it is stale after 2.
	OfflineAfter int
	// MaxMessageBytes bounds every payload (default 1 MiB).
	MaxMessageBytes int
	// Retention is how long task history and results are kept (default 7 days).
	Retention time.Duration
	// SweepInterval is how often the controller verifies the whole fleet
	// (default 60s; negative disables), SweepLayerIntervals overrides it per
	// layer, and HistoryRetention is how long reports are kept (default 7
	// days).
	SweepInterval       time.Duration
	SweepLayerIntervals map[string]time.Duration
	HistoryRetention    time.Duration
	// Tailnet and TLS choose how agents reach the controller (tailnet.go).
	Tailnet TailnetOptions
	TLS     TLSOptions
	// RulesFile extends the built-in diagnostic rules (YAML); "" for none.
	RulesFile string
	// Pprof serves /debug/pprof on the HTTP address.
	Pprof bool
	// HTTPTLSCert and HTTPTLSKey serve the HTTP address (dashboard,
	// /metrics) over TLS. Bound to anything but loopback, the controller
	// refuses to start without them, and the dashboard needs a sign-in to
	// read as well as to act (dashboard.go).
	HTTPTLSCert string
	HTTPTLSKey  string
	// Steps is the registry of setup steps (default steps.Builtin()); the
	// controller runs their Seal and orders them, the agents run them.
	Steps *steps.Registry
	// SetupBackoff is the first wait before a setup step is retried
	// (default 2 s, doubling up to 30 s).
	SetupBackoff time.Duration
	// SetupVerifySettle is how long a layer just set up may take to verify
	// healthy (verified again every second until then); 0 means
	// DefaultSetupVerifySettle, negative verifies once.
	SetupVerifySettle time.Duration
	// Cluster makes this controller one peer of a cluster (cluster.go).
	Cluster ClusterOptions
	// LeafListen, if set, makes this controller a hub that accepts relays'
	// leaf links (relay.go), authenticated with the secret in
	// RelaySecretFile (default DATA_DIR/relay.secret).
	LeafListen      string
	RelaySecretFile string
	Log             *zap.Logger
}

// Controller is a running controller.
type Controller struct {
	opts Options
	// warm is a cluster peer's copy of the nodes bucket (warm.go); nil
	// for a single controller, which reads the bucket once at start.
	warm    *warmNodes
	regWarm bool // the last activation's registry came from warm
	// held is what a cluster peer keeps of the results it hears while a
	// peer is lost (held.go); nil for a single controller.
	held *heldResults
	// killed makes Close leave the lease held and unflushed, as kill -9
	// would (tests of a failover in one process: export_test.go Kill).
	killed atomic.Bool
	log    *zap.Logger
	ns     *server.Server
	// nc is the state connection: JetStream state, tasks and
	// events, all on subjects the controller chooses itself. What others
	// send is heard on nodesNC and apiNC, whose permissions let them answer
	// only into inboxes (auth.go), so no request can steer a write.
	nc      *nats.Conn
	nodesNC *nats.Conn
	apiNC   *nats.Conn
	js      jetstream.JetStream
	auth    *authenticator
	tokens  *tokenStore
	reg     *registry
	disp    *dispatcher
	ver     *verifier
	setup   *setupRunner
	revs    *revisions
	rollout *rolloutRunner
	met     *metrics

	diagnoses jetstream.ObjectStore
	http      *http.Server
	// dash is set when HTTP starts, after the subscriptions whose
	// handlers notify it: read it atomically.
	dash    atomic.Pointer[dashboard.Server]
	httpURL string
	httpTLS *tls.Config
	lock    *os.File
	info    runinfo.Info

	tr     *transport // tailnet, local socket, TLS (tailnet.go)
	apiSem chan struct{}

	// Per-node limits (guard.go) and the rate limit on repeated log lines.
	hbLimit   *nodeLimiter
	syncLimit *nodeLimiter
	logRate   *logLimiter
	logOnce   *logLimiter // a node's refused claims: said once a day
	stop      chan struct{}
	wg        sync.WaitGroup

	// Cluster mode (cluster.go, lease.go): lease is nil for a single
	// controller, which is always active. subs are the subscriptions of
	// the active part.
	lease       *lease
	sysNC       *nats.Conn
	ctlNC       atomic.Pointer[nats.Conn] // c.nc, for the authenticator's notices
	enrollWait  chan struct{}             // enrollments waiting for a peer's notice (handlers.go)
	subs        []*nats.Subscription
	actMu       sync.Mutex
	act         *activeState
	onActive    []func(context.Context)
	activeGauge prometheus.Gauge
	metricsOnce sync.Once
}

// Start brings a controller up and returns once it serves.
func Start(ctx context.Context, o Options) (_ *Controller, err error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.DataDir == "" {
		return nil, errors.New("data dir: empty")
	}
	if o.HTTP != "" {
		// Refused before anything starts: plain text off loopback.
		if _, _, err := httpExposure(o); err != nil {
			return nil, err
		}
	}
	if err := o.Cluster.resolve(o.DataDir); err != nil {
		return nil, err
	}
	c := &Controller{opts: o, log: o.Log, met: newMetrics(o.MaxMessageBytes), apiSem: make(chan struct{}, maxAPIRequests), stop: make(chan struct{}),
		hbLimit:   heartbeatLimiter(o.HeartbeatInterval),
		syncLimit: newNodeLimiter(syncRate, syncBurst, syncInFlight),
		logRate:   newLogLimiter(10 * time.Second),
		logOnce:   newLogLimiter(24 * time.Hour), enrollWait: make(chan struct{}, 256)}
	if was, err := privdir.Ensure(o.DataDir); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	} else if was != 0 {
		c.log.Warn("data dir was readable by others: tightened it to 0700 (it holds the operator key and the fleet's state)",
			zap.String("data_dir", o.DataDir), zap.String("was", fmt.Sprintf("%04o", was)))
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.lock, err = lockDir(o.DataDir); err != nil {
		return nil, err
	}
	admin, err := runinfo.AdminKey(o.DataDir, true)
	if err != nil {
		return nil, err
	}
	adminPub, _ := admin.PublicKey()

	// The token store and registry need JetStream, which needs the server,
	// whose authenticator needs them: the authenticator is built first
	// around a token store that is filled in before any client can connect
	// with a token (only the admin connects until Start returns).
	c.tokens = &tokenStore{m: map[string]tokenRecord{}}
	c.auth = newAuthenticator(adminPub, c.tokens, func(r string) { c.met.refused("connect", r) })
	if o.Cluster.Enabled() {
		c.auth.onPending = c.announcePending
	}
	if err := c.prepareTransport(ctx); err != nil {
		return nil, err
	}
	if err := c.startServer(); err != nil {
		return nil, err
	}
	if err := c.tr.serve(c.ns, o.DataDir); err != nil {
		return nil, err
	}
	if c.nc, err = c.connectInternal(stateUser()); err != nil {
		return nil, err
	}
	if c.nodesNC, err = c.connectInternal(nodesResponderUser()); err != nil {
		return nil, err
	}
	if c.apiNC, err = c.connectInternal(apiResponderUser()); err != nil {
		return nil, err
	}
	if c.js, err = jetstream.New(c.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.activeGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mgn_controller_active",
		Help: "1 while this controller is the active one (holds the lease; always for a single controller)."})
	c.met.reg.MustRegister(c.activeGauge)
	if c.opts.Cluster.Enabled() {
		// Standby until the lease says otherwise (lease.go): the active
		// part is built by activate.
		c.lease = newLease(nil, c.opts.Cluster.LeaseTTL, c.ns.Name(), os.Getpid())
		c.lease.writes = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mgn_lease_write_seconds",
			Help:    "How long the lease's writes took (acquire: a standby's Create, renew: the holder's Update); the active controller may act until 2/3 of the TTL after its last successful renewal was sent, and renews every TTL/3.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"op"})
		c.met.reg.MustRegister(c.lease.writes)
		if err := c.startCluster(); err != nil {
			return nil, err
		}
	} else {
		if err := c.openState(ctx); err != nil {
			return nil, err
		}
		if err := c.subscribe(); err != nil {
			return nil, err
		}
		if err := c.disp.recover(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.subscribeRelayAdmit(); err != nil {
		return nil, err
	}
	if err := c.startHTTP(); err != nil {
		return nil, err
	}
	c.info = runinfo.Info{PID: os.Getpid(), NATSURL: c.ns.ClientURL(), Version: buildinfo.Version}
	c.tr.describe(&c.info)
	if c.http != nil {
		c.info.HTTPURL = c.httpURL
	}
	if err := runinfo.Write(o.DataDir, c.info); err != nil {
		return nil, err
	}
	if !c.opts.Cluster.Enabled() {
		c.ver.loadLast(ctx)
		a := &activeState{stop: c.stop}
		a.ctx, a.end = context.WithCancel(context.Background())
		c.actMu.Lock()
		c.act = a
		hooks := append([]func(context.Context){}, c.onActive...)
		c.actMu.Unlock()
		c.activeGauge.Set(1)
		c.wg.Add(2)
		go func() { defer c.wg.Done(); c.housekeeping(c.stop) }()
		go func() {
			defer c.wg.Done()
			c.ver.sweeps(c.stop, c.opts.SweepInterval, c.opts.SweepLayerIntervals)
		}()
		for _, f := range hooks {
			go f(a.ctx)
		}
		if err := c.resumeRuns(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.log.Info("controller serving", zap.String("nats", c.info.NATSURL), zap.String("http", c.info.HTTPURL),
		zap.String("data_dir", o.DataDir), zap.Duration("heartbeat_interval", o.HeartbeatInterval))
	return c, nil
}

func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another controller (stop it first)", dir)
	}
	return f, nil
}

func (c *Controller) startServer() error {
	host, portStr, err := net.SplitHostPort(c.opts.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", c.opts.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("--listen %q: bad port", c.opts.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts := &server.Options{
		ServerName: "mgn-controller",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(c.opts.DataDir, "jetstream"),
		// The server's own limit sits above ours so that an oversize
		// payload reaches the decoder and gets a clear error reply
		// instead of a dropped connection.
		MaxPayload:                 int32(c.opts.MaxMessageBytes + serverPayloadMargin),
		MaxPending:                 server.MAX_PENDING_SIZE, // MaxMaxMessageBytes is below it
		CustomClientAuthentication: c.auth,
		AlwaysEnableNonce:          true,
		NoSigs:                     true,
		DisableJetStreamBanner:     true,
		MaxClosedClients:           maxClosedClients,
	}
	c.tr.apply(sopts)
	if u, err := url.Parse(c.opts.Advertise); err == nil && c.opts.Advertise != "" {
		sopts.ClientAdvertise = u.Host // validated in limits.go
	}
	if err := c.applyCluster(sopts); err != nil {
		return err
	}
	if err := c.applyLeaf(sopts); err != nil {
		return err
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	ns.SetLoggerV2(natsLogger{l: c.log.Named("nats").WithOptions(zap.AddStacktrace(zap.FatalLevel)), met: c.met, rate: c.logRate}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return fmt.Errorf("nats server on %s did not become ready (port in use? see the log)", c.opts.Listen)
	}
	c.ns = ns
	return nil
}

func (c *Controller) openState(ctx context.Context) error {
	kv := func(name string, ttl time.Duration) (jetstream.KeyValue, error) {
		if b, ok, err := c.existingKV(ctx, name); err != nil || ok {
			return b, err
		}
		b, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Storage: jetstream.FileStorage, History: 1, TTL: ttl,
			MaxValueSize: int32(c.opts.MaxMessageBytes), Replicas: c.replicasFor(ctx, "KV_"+name),
		})
		if err != nil {
			return nil, fmt.Errorf("open bucket %s: %w", name, err)
		}
		return b, nil
	}
	nodesKV, err := kv("mgn_nodes", 0)
	if err != nil {
		return err
	}
	tokensKV, err := kv("mgn_tokens", 0)
	if err != nil {
		return err
	}
	openKV, err := kv("mgn_tasks_open", 0)
	if err != nil {
		return err
	}
	histKV, err := kv("mgn_tasks", c.opts.Retention)
	if err != nil {
		return err
	}
	// Only the controller writes here (resultStore): agents' result
	// subjects (mgn.res.>) are not captured.
	results, err := c.existingStream(ctx, messages.ResultsStream, jetstream.StreamConfig{
		Name: messages.ResultsStream, Subjects: []string{messages.StoredPrefix + ">"},
		Storage: jetstream.FileStorage, MaxMsgsPerSubject: -1, MaxAge: c.opts.Retention,
		Discard: jetstream.DiscardOld, Duplicates: 2 * time.Minute, AllowDirect: true,
		MaxMsgSize: int32(c.opts.MaxMessageBytes + 4<<10), Replicas: c.replicasFor(ctx, messages.ResultsStream),
	})
	if err != nil {
		return fmt.Errorf("open stream %s: %w", messages.ResultsStream, err)
	}
	reports, err := c.existingObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: messages.ReportsBucket, Storage: jetstream.FileStorage, TTL: c.opts.HistoryRetention,
		Description: "verification reports", Replicas: c.replicasFor(ctx, "OBJ_"+messages.ReportsBucket),
	})
	if err != nil {
		return fmt.Errorf("open report store: %w", err)
	}
	c.diagnoses, err = c.existingObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: messages.DiagnosesBucket, Storage: jetstream.FileStorage, TTL: c.opts.HistoryRetention,
		Description: "diagnoses", Replicas: c.replicasFor(ctx, "OBJ_"+messages.DiagnosesBucket),
	})
	if err != nil {
		return fmt.Errorf("open diagnosis store: %w", err)
	}
	loaded, err := newTokenStore(ctx, c.js, tokensKV)
	if err != nil {
		return err
	}
	c.tokens.kv = tokensKV
	c.tokens.mu.Lock()
	c.tokens.m = loaded.m
	c.tokens.mu.Unlock()
	var recs map[string]nodeRecord
	if recs, c.regWarm = c.warm.upTo(ctx, c.js, nodesKV.Bucket()); c.regWarm {
		c.reg = registryFrom(nodesKV, c.opts.HeartbeatInterval, c.opts.OfflineAfter, recs)
	} else if c.reg, err = newRegistry(ctx, c.js, nodesKV, c.opts.HeartbeatInterval, c.opts.OfflineAfter); err != nil {
		return err
	} else {
		c.reg.heard(c.warm.heardTimes())
	}
	for pub, name := range c.reg.keys() {
		c.auth.addNode(pub, name)
	}
	c.auth.markReady()
	setupRuns, err := kv(setupRunsBucket, 0)
	if err != nil {
		return err
	}
	setupDurs, err := kv(setupDurationsBucket, 0)
	if err != nil {
		return err
	}
	c.disp = newDispatcher(c, results, openKV, histKV)
	if c.ver != nil {
		c.ver.unregister() // a cluster peer activating again (lease.go)
	}
	c.ver = newVerifier(c, reports)
	c.setup = newSetupRunner(c, setupRuns, setupDurs)
	revsKV, err := kv(specRevisionsBucket, 0)
	if err != nil {
		return err
	}
	rolloutsKV, err := kv(rolloutsBucket, 0)
	if err != nil {
		return err
	}
	c.revs = &revisions{kv: revsKV}
	c.rollout = newRolloutRunner(c, rolloutsKV, c.revs)
	c.metricsOnce.Do(func() {
		c.met.reg.MustRegister(fleetCollector{c: c, desc: prometheus.NewDesc("mgn_nodes",
			"Enrolled nodes by liveness state.", []string{"state"}, nil)})
	})
	return nil
}

// connectInternal opens one of the controller's restricted connections
// with a key made for it now and known only to this process.
func (c *Controller) connectInternal(u *server.User) (*nats.Conn, error) {
	kp, pub, err := internalKey()
	if err != nil {
		return nil, fmt.Errorf("key for %s: %w", u.Username, err)
	}
	c.auth.addInternal(pub, u)
	nc, err := nats.Connect("", nats.InProcessServer(c.ns), nats.Nkey(pub, kp.Sign),
		nats.Name(u.Username), nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			// A denial here means a reply subject got past ReplyUnder:
			// the server stopped it, the log says so (rate-limited).
			c.logRate.warn(c.log, "internal:"+u.Username, "controller connection error", zap.String("conn", u.Username), zap.Error(err))
		}))
	if err != nil {
		return nil, fmt.Errorf("connect %s to embedded server: %w", u.Username, err)
	}
	return nc, nil
}

// subscribe hears the nodes on nodesNC and the operator on apiNC: two
// connections, so a flood from nodes does not queue in front of the API.
func (c *Controller) subscribe() error {
	subs := []struct {
		nc   *nats.Conn
		subj string
		h    nats.MsgHandler
	}{
		{c.nodesNC, messages.EnrollPrefix + "*", c.onEnroll},
		{c.nodesNC, messages.HeartbeatPfx + "*", c.onHeartbeat},
		{c.nodesNC, messages.SyncPrefix + "*", c.onSync},
		{c.nodesNC, messages.AckPrefix + "*", c.onAck},
		{c.nodesNC, messages.ResultPrefix + "*", c.disp.onResult},
		{c.nodesNC, messages.RelayKeysSubject, c.onRelayKeys},
		{c.apiNC, messages.APIPrefix + ">", c.onAPI},
	}
	for _, s := range subs {
		sub, err := s.nc.Subscribe(s.subj, c.fenced(s.h))
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", s.subj, err)
		}
		c.subs = append(c.subs, sub)
		// Large pending limits: a burst of 5,000 results must not be
		// dropped as a slow consumer (the stream is the backstop anyway).
		sub.SetPendingLimits(1<<20, 1<<30)
	}
	if err := c.nodesNC.Flush(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	return c.apiNC.Flush()
}

// Info returns what the controller published about itself.
func (c *Controller) Info() runinfo.Info { return c.info }

// Server returns the embedded NATS server (tests and the tailnet listener).
func (c *Controller) Server() *server.Server { return c.ns }

// Close stops the controller. It is safe on a partly started one.
func (c *Controller) Close() {
	select {
	case <-c.stop:
		return
	default:
		close(c.stop)
	}
	if c.auth != nil {
		c.auth.markReady() // release connections waiting on a start that failed
	}
	c.wg.Wait()
	c.stopRuns()
	if c.disp != nil && !c.opts.Cluster.Enabled() {
		c.disp.stop() // a cluster peer stopped its dispatcher when it deactivated
	}
	if c.reg != nil && !c.opts.Cluster.Enabled() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.reg.flush(ctx)
		cancel()
	}
	if d := c.dash.Load(); d != nil {
		d.Close() // ends the dashboards' event streams
	}
	if c.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.http.Shutdown(ctx)
		cancel()
	}
	if c.act != nil && c.act.end != nil {
		c.act.end()
	}
	for _, nc := range []*nats.Conn{c.nodesNC, c.apiNC, c.sysNC, c.nc} {
		if nc != nil {
			nc.Close()
		}
	}
	c.tr.close()
	if c.ns != nil {
		c.ns.Shutdown()
		c.ns.WaitForShutdown()
	}
	if c.lock != nil {
		if c.info.NATSURL != "" {
			runinfo.Remove(c.opts.DataDir)
		}
		c.lock.Close()
	}
}

// housekeeping derives liveness, announces state changes, and persists
// registry changes.
func (c *Controller) housekeeping(stop <-chan struct{}) {
	tick := time.NewTicker(c.opts.HeartbeatInterval / 2)
	defer tick.Stop()
	repush := time.NewTicker(repushTick)
	defer repush.Stop()
	flush := time.NewTicker(5 * time.Second)
	defer flush.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			if !c.acting() {
				continue
			}
			for _, t := range c.reg.sweep(now) {
				c.announce(t)
			}
		case now := <-repush.C:
			if c.acting() {
				c.disp.repush(now)
			}
		case <-flush.C:
			if !c.acting() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c.reg.flush(ctx)
			cancel()
		case <-prune.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c.tokens.prune(ctx)
			cancel()
		}
	}
}

func (c *Controller) announce(t transition) {
	c.log.Info("node state", zap.String("node", t.node), zap.String("from", t.from), zap.String("to", t.to))
	ev := messages.Event{V: messages.Version, Time: time.Now().UTC(), Kind: "node_state", Node: t.node, From: t.from, To: t.to}
	c.nc.Publish(messages.EventSubject("node_state"), messages.MustEncode(&ev))
	c.changed("node_state")
}

func (c *Controller) startHTTP() error {
	if c.opts.HTTP == "" {
		return nil
	}
	tlsOn, loopback, err := httpExposure(c.opts)
	if err != nil {
		return err
	}
	ln, err := c.listenHTTP()
	if err != nil {
		return err
	}
	// Set before the dashboard is published (mountDashboard): sign-in
	// links are made of it.
	c.httpURL = "http://" + c.httpAddr(ln)
	if tlsOn {
		c.httpURL = "https://" + c.httpAddr(ln)
	}
	mux := http.NewServeMux()
	if err := c.mountDashboard(mux, tlsOn, !loopback); err != nil {
		ln.Close()
		return err
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !c.ns.Running() || !c.ns.JetStreamEnabled() || !c.nc.IsConnected() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.met.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /leasez", c.serveLeasez)
	if c.opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	c.http = &http.Server{Addr: ln.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if tlsOn {
		c.http.TLSConfig = c.httpTLS
		go c.http.ServeTLS(ln, "", "")
		return nil
	}
	go c.http.Serve(ln)
	return nil
}

// natsLogger sends the embedded server's log lines to zap, without stack
// traces. Lines a client can cause at will (permission violations, auth
// failures) are counted and logged at most once per interval per kind, so
// a hostile node cannot grow the log faster than the fleet runs.
type natsLogger struct {
	l    *zap.Logger
	met  *metrics
	rate *logLimiter
}

func (n natsLogger) Noticef(f string, a ...any) { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n natsLogger) Warnf(f string, a ...any)   { n.limited(zap.WarnLevel, fmt.Sprintf(f, a...)) }
func (n natsLogger) Fatalf(f string, a ...any)  { n.l.Error(fmt.Sprintf(f, a...)) }
func (n natsLogger) Errorf(f string, a ...any)  { n.limited(zap.ErrorLevel, fmt.Sprintf(f, a...)) }
func (n natsLogger) Debugf(f string, a ...any)  { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n natsLogger) Tracef(f string, a ...any)  {}

func (n natsLogger) limited(level zapcore.Level, msg string) {
	key := "nats"
	switch {
	case strings.Contains(msg, "Publish Violation"), strings.Contains(msg, "Violation for Publish"):
		n.met.permDenied.WithLabelValues("publish").Inc()
		key, level = "perm-publish", zap.WarnLevel
	case strings.Contains(msg, "Subscription Violation"), strings.Contains(msg, "Violation for Subscription"):
		n.met.permDenied.WithLabelValues("subscribe").Inc()
		key, level = "perm-subscribe", zap.WarnLevel
	case strings.Contains(msg, "Authorization Error"), strings.Contains(msg, "authentication error"):
		key, level = "auth", zap.WarnLevel
	default:
		if i := strings.IndexByte(msg, '-'); i > 0 && i < 40 {
			key += msg[i:min(len(msg), i+40)]
		} else {
			key += msg[:min(len(msg), 40)]
		}
	}
	ok, held := n.rate.allow(key, time.Now())
	if !ok {
		return
	}
	fields := []zap.Field{}
	if held > 0 {
		fields = append(fields, zap.Int("suppressed_since_last", held))
	}
	if ce := n.l.Check(level, msg); ce != nil {
		ce.Write(fields...)
	}
}

// resumeRuns picks up the setup runs and rollouts a previous active
// controller left running (after a restart or a failover). Only the active
// controller runs them.
func (c *Controller) resumeRuns(ctx context.Context) error {
	if err := c.setup.resume(ctx); err != nil {
		return err
	}
	return c.rollout.resume(ctx)
}

// stopRuns stops this controller's setup runs and rollouts where they are
// (persisted; the next active controller resumes them).
func (c *Controller) stopRuns() {
	if c.rollout != nil {
		c.rollout.stop()
	}
	if c.setup != nil {
		c.setup.stop()
	}
}
