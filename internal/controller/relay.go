package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// A relay is a NATS leaf node in a site (docs/HA.md): agents there
// connect to it with their own NKeys, and it connects to the hub (a
// controller or a cluster of them) with one leaf link. It holds no
// state: it learns the enrolled keys by asking the hub over the link
// (mgn.relay.keys, again whenever the hub announces a change), and its
// authenticator gives each agent the same per-node permissions the hub
// would (nodePermissions).
//
// Agents enroll through a relay as at the hub. A relay knows no tokens:
// when an agent connects with one, the relay's authenticator sends the
// hub the agent's public key and the token's hash (mgn.relay.admit, never
// the token) and waits up to relayAdmitWait; the hub decides as its own
// Check would, records the attempt, and answers with the token's expiry.
// The relay then gives the connection the enrollment permissions
// (enrollPermissions) until that expiry, and the agent's enrollment
// request crosses the link to the hub's enrollment handler like any
// other request. Its first connection with its new key waits (briefly)
// for the relay to learn that key (awaitEnrolledKey).

const (
	// relayUser is the hub-side user of every relay's leaf link.
	relayUser = "mgn-relay"
)

// relayLinkPermissions are the leaf link's permissions at the hub, from
// the relay's side: what it may send into the hub (the nodes' own
// subjects, enrollment requests, read-only requests about the enrolled
// keys, and questions about a token by its hash) and receive (tasks,
// node and enrollment inboxes, its own inbox). It can reach no operator
// API, no token, no bucket.
func relayLinkPermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			messages.HeartbeatPfx + "*", messages.SyncPrefix + "*", messages.AckPrefix + "*", messages.ResultPrefix + "*",
			messages.EnrollPrefix + "*", messages.RelayKeysSubject, messages.RelayAdmitSubject,
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			messages.TaskPrefix + "*", messages.NodeInboxPrefix + ">", messages.EnrollInboxPrefix + ">",
			messages.RelayInboxPrefix + ">", messages.RelayChangedSubject,
		}},
	}
}

// relayWatcherUser is the relay's own connection: it may ask the hub
// about the enrolled keys and about join tokens (by hash) and hear the
// answers, nothing else.
func relayWatcherUser() *server.User {
	return &server.User{Username: "relay-watcher", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{messages.RelayKeysSubject, messages.RelayAdmitSubject}},
		Subscribe: &server.SubjectPermission{Allow: []string{messages.RelayInboxPrefix + ">", messages.RelayChangedSubject}},
	}}
}

// readSecretFile reads a shared secret (cluster routes, relay links).
func readSecretFile(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w (make one with `head -c 32 /dev/urandom | base64 > %s`, chmod 600, and copy it where it is needed)", what, path, err, path)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s %s: mode %04o: must not be readable by others (chmod 600)", what, path, st.Mode().Perm())
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 16 {
		return "", fmt.Errorf("%s %s: shorter than 16 characters", what, path)
	}
	return s, nil
}

// applyLeaf makes a controller a hub: it accepts relays' leaf links on
// LeafListen, authenticated with the relay secret.
func (c *Controller) applyLeaf(sopts *server.Options) error {
	if c.opts.LeafListen == "" {
		return nil
	}
	file := c.opts.RelaySecretFile
	if file == "" {
		file = filepath.Join(c.opts.DataDir, "relay.secret")
	}
	secret, err := readSecretFile("relay secret", file)
	if err != nil {
		return err
	}
	host, port, err := hostPort("--leaf-listen", c.opts.LeafListen)
	if err != nil {
		return err
	}
	sopts.LeafNode.Host, sopts.LeafNode.Port = host, port
	sopts.LeafNode.Users = []*server.User{{Username: relayUser, Password: secret, Permissions: relayLinkPermissions()}}
	return nil
}

func hostPort(flag, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: %w", flag, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%s %q: bad port", flag, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// RelayOptions configure a relay.
type RelayOptions struct {
	// Hub lists the hub's leaf URLs (nats://HOST:PORT of its
	// --leaf-listen, every peer's for a cluster).
	Hub []string
	// Listen is where the site's agents connect.
	Listen string
	// SecretFile holds the relay secret the hub accepts.
	SecretFile      string
	MaxMessageBytes int
	Log             *zap.Logger
}

// Relay is a running relay.
type Relay struct {
	opts Options
	ro   RelayOptions
	log  *zap.Logger
	ns   *server.Server
	auth *authenticator
	nc   *nats.Conn
	met  *metrics
	stop chan struct{}
	wg   sync.WaitGroup
	// synced is closed once the first full view of the nodes bucket is in.
	synced chan struct{}
	// changed asks the watcher for the keys now (the hub announced a
	// change, or a key that enrolled here connects: nudge).
	changed    chan struct{}
	changedSub *nats.Subscription // the hub's change notices (tests drop it)
	// watcher is nc once connected: the authenticator asks the hub through
	// it, and may be called before it exists.
	watcher atomic.Pointer[nats.Conn]
	// admitting bounds the questions about join tokens in flight: past
	// it, a connection is held as when the hub cannot be asked.
	admitting chan struct{}
}

// maxRelayAdmitsInFlight bounds a relay's questions to the hub about join
// tokens (each holds one connecting client for up to relayAdmitWait).
const maxRelayAdmitsInFlight = 256

// StartRelay brings a relay up; it returns once agents can connect (keys
// arrive as soon as the hub is reached: until then agents are refused
// and retry).
func StartRelay(ctx context.Context, ro RelayOptions) (*Relay, error) {
	if len(ro.Hub) == 0 {
		return nil, errors.New("--hub: required (the hub's leaf URL, nats://HOST:PORT)")
	}
	if ro.Log == nil {
		ro.Log = zap.NewNop()
	}
	if ro.MaxMessageBytes == 0 {
		ro.MaxMessageBytes = messages.DefaultMaxMessageBytes
	}
	secret, err := readSecretFile("relay secret", ro.SecretFile)
	if err != nil {
		return nil, err
	}
	var hubs []*url.URL
	for _, h := range ro.Hub {
		u, err := url.Parse(h)
		if err != nil || u.Scheme != "nats" || u.Host == "" || u.User != nil {
			return nil, fmt.Errorf("--hub %q: want nats://HOST:PORT (no credentials: the link authenticates with the relay secret file)", h)
		}
		u.User = url.UserPassword(relayUser, secret)
		hubs = append(hubs, u)
	}
	host, port, err := hostPort("--listen", ro.Listen)
	if err != nil {
		return nil, err
	}
	r := &Relay{ro: ro, log: ro.Log, met: newMetrics(ro.MaxMessageBytes), stop: make(chan struct{}), synced: make(chan struct{}),
		changed: make(chan struct{}, 1), admitting: make(chan struct{}, maxRelayAdmitsInFlight)}
	r.auth = newAuthenticator("", &tokenStore{m: map[string]tokenRecord{}}, func(reason string) { r.met.refused("connect", reason) })
	r.auth.remoteAdmit = r.admit
	r.auth.nudge = r.nudge
	sopts := &server.Options{
		ServerName: "mgn-relay-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(port),
		Host:       host, Port: port,
		MaxPayload:                 int32(ro.MaxMessageBytes + serverPayloadMargin),
		MaxPending:                 server.MAX_PENDING_SIZE,
		CustomClientAuthentication: r.auth,
		AlwaysEnableNonce:          true,
		NoSigs:                     true,
		LeafNode:                   server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{URLs: hubs}}, ReconnectInterval: time.Second},
		MaxClosedClients:           maxClosedClients,
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("relay server: %w", err)
	}
	ns.SetLoggerV2(natsLogger{l: r.log.Named("nats"), met: r.met, rate: newLogLimiter(10 * time.Second)}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("relay server on %s did not become ready", ro.Listen)
	}
	r.ns = ns
	kp, pub, err := internalKey()
	if err != nil {
		r.Close()
		return nil, err
	}
	r.auth.addInternal(pub, relayWatcherUser())
	r.nc, err = nats.Connect("", nats.InProcessServer(ns), nats.Nkey(pub, kp.Sign), nats.Name("relay-watcher"),
		nats.CustomInboxPrefix(strings.TrimSuffix(messages.RelayInboxPrefix, ".")), nats.MaxReconnects(-1))
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("relay: connect watcher: %w", err)
	}
	r.watcher.Store(r.nc)
	r.wg.Add(1)
	go r.watch()
	r.log.Info("relay serving", zap.String("listen", r.URL()), zap.Strings("hub", ro.Hub))
	return r, nil
}

// URL is where agents connect.
func (r *Relay) URL() string { return r.ns.ClientURL() }

// Server returns the relay's NATS server (tests).
func (r *Relay) Server() *server.Server { return r.ns }

// Synced is closed once the relay has the hub's whole list of nodes.
func (r *Relay) Synced() <-chan struct{} { return r.synced }

// Metrics is the relay's Prometheus registry: mgn_messages_refused_total
// (kind "connect": refused connections by reason, as at the hub) and
// mgn_permission_denied_total.
func (r *Relay) Metrics() *prometheus.Registry { return r.met.reg }

// admit asks the hub whether key pub may open an enrollment connection
// with the token whose hash is tokenHash (authenticator.remoteAdmit).
func (r *Relay) admit(ctx context.Context, pub, tokenHash string) (time.Time, error) {
	nc := r.watcher.Load()
	if nc == nil {
		return time.Time{}, errors.New("the relay is starting")
	}
	select {
	case r.admitting <- struct{}{}:
		defer func() { <-r.admitting }()
	default:
		return time.Time{}, fmt.Errorf("%d questions about join tokens in flight already", maxRelayAdmitsInFlight)
	}
	req := messages.RelayAdmitRequest{V: messages.Version, PublicKey: pub, TokenHash: tokenHash}
	m, err := nc.RequestWithContext(ctx, messages.RelayAdmitSubject, messages.MustEncode(&req))
	if err != nil {
		return time.Time{}, fmt.Errorf("ask the hub about a join token: %w", err)
	}
	if rep, err := messages.Decode[messages.RelayAdmitReply](m.Data, r.ro.MaxMessageBytes); err == nil {
		return rep.ExpiresAt, nil
	}
	e, err := messages.Decode[messages.ErrorReply](m.Data, r.ro.MaxMessageBytes)
	if err != nil {
		return time.Time{}, fmt.Errorf("the hub's answer about a join token: %w", err)
	}
	if messages.Retryable(e.Code) {
		return time.Time{}, fmt.Errorf("the hub cannot answer about a join token now: %s", e.Error)
	}
	return time.Time{}, fmt.Errorf("%w: %s", errAdmitRefused, e.Error)
}

// nudge asks the watcher for the keys now; requests coalesce.
func (r *Relay) nudge() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Close stops the relay.
func (r *Relay) Close() {
	select {
	case <-r.stop:
		return
	default:
		close(r.stop)
	}
	r.wg.Wait()
	if r.nc != nil {
		r.nc.Close()
	}
	if r.ns != nil {
		r.ns.Shutdown()
		r.ns.WaitForShutdown()
	}
}

// watch keeps the relay's keys as the hub has them: a full refresh at
// start, on every change the hub announces, and every relayRefresh.
func (r *Relay) watch() {
	defer r.wg.Done()
	changed := r.changed
	sub, err := r.nc.Subscribe(messages.RelayChangedSubject, func(*nats.Msg) { r.nudge() })
	if err != nil {
		r.log.Error("relay: subscribe to changes", zap.Error(err))
		return
	}
	r.changedSub = sub // set before synced is closed
	defer sub.Unsubscribe()
	once := sync.Once{}
	var wait time.Duration
	for attempt := 0; ; attempt++ {
		select {
		case <-r.stop:
			return
		case <-changed:
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.refresh(ctx)
		cancel()
		if err != nil {
			r.log.Warn("relay: ask the hub for the enrolled keys (retrying)", zap.Error(err))
			wait = retryWait(attempt)
			continue
		}
		attempt = 0
		once.Do(func() {
			r.auth.markReady() // connections no longer wait for the keys
			close(r.synced)
		})
		wait = relayRefresh
	}
}

// relayRefresh is how often a relay reads the whole key list even when no
// change was announced (one it missed while the link was down).
const relayRefresh = 30 * time.Second

func (r *Relay) refresh(ctx context.Context) error {
	keys := map[string]string{} // pub -> name
	after := ""
	for page := 0; ; page++ {
		req := messages.RelayKeysRequest{V: messages.Version, After: after}
		m, err := r.nc.RequestWithContext(ctx, messages.RelayKeysSubject, messages.MustEncode(&req))
		if err != nil {
			return fmt.Errorf("keys after %q: %w", after, err)
		}
		rep, err := messages.Decode[messages.RelayKeysReply](m.Data, r.ro.MaxMessageBytes)
		if err != nil {
			if e, derr := messages.Decode[messages.ErrorReply](m.Data, r.ro.MaxMessageBytes); derr == nil {
				return fmt.Errorf("keys: %s", e.Error)
			}
			return fmt.Errorf("keys: %w", err)
		}
		for _, n := range rep.Nodes {
			keys[n.PublicKey] = n.Name
		}
		if rep.Next == "" || rep.Next <= after {
			break
		}
		after = rep.Next
	}
	for pub := range r.auth.nodeKeys() {
		if _, ok := keys[pub]; !ok {
			r.auth.removeNode(pub)
			disconnectKey(r.ns, r.log, pub)
		}
	}
	known := r.auth.nodeKeys()
	for pub, name := range keys {
		if _, ok := known[pub]; !ok {
			if p, ok := r.auth.pendingFor(pub); ok && p.clientID != 0 {
				// It enrolled through this relay: its enrollment connection
				// is no longer needed (the agent closes it itself as soon
				// as it has its answer; this is for one that does not).
				id := p.clientID
				time.AfterFunc(time.Second, func() { r.ns.DisconnectClientByID(id) })
			}
		}
		r.auth.addNode(pub, name)
	}
	return nil
}

// disconnectKey closes every connection of key pub on ns.
func disconnectKey(ns *server.Server, log *zap.Logger, pub string) int {
	n := 0
	cz, err := ns.Connz(&server.ConnzOptions{User: pub, State: server.ConnOpen, Limit: 1 << 20})
	if err != nil {
		log.Warn("list connections", zap.String("key", pub), zap.Error(err))
		return 0
	}
	for _, ci := range cz.Conns {
		if ns.DisconnectClientByID(ci.Cid) == nil {
			n++
		}
	}
	return n
}

// onRelayAdmit answers a relay that asks whether an agent may open an
// enrollment connection there (Relay.admit): as this server's own Check
// would, from the tokens this controller holds (every peer of a cluster
// has them, watchAuth), and the attempt is recorded and announced to the
// peers so that whichever is active answers the enrollment. Every peer
// serving a leaf link answers (a queue group: the relay's own hub server
// first), active or standby.
func (c *Controller) onRelayAdmit(m *nats.Msg) {
	if !c.replyOK(m, "relay_admit", messages.RelayInboxPrefix) {
		return
	}
	req, err := messages.Decode[messages.RelayAdmitRequest](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.reply(m, "relay_admit", messages.RelayInboxPrefix, nil, err)
		return
	}
	exp, ok := c.auth.admitRelayed(req.PublicKey, req.TokenHash)
	if !ok {
		c.reply(m, "relay_admit", messages.RelayInboxPrefix, nil,
			messages.Errorf(messages.CodeBadRequest, "join token not valid (expired, already used, or not from this controller)"))
		return
	}
	c.reply(m, "relay_admit", messages.RelayInboxPrefix, &messages.RelayAdmitReply{V: messages.Version, ExpiresAt: exp.UTC()}, nil)
}

// relayAdmitQueue is the queue group every peer answers mgn.relay.admit
// in: one answer per question, from the server the relay is linked to
// when it has a subscriber.
const relayAdmitQueue = "mgn-relay-admit"

// subscribeRelayAdmit makes this controller answer relays' questions
// about join tokens for as long as it runs (active or not). A single
// controller subscribes once its tokens are loaded; a cluster peer at
// start (its tokens arrive through watchAuth).
func (c *Controller) subscribeRelayAdmit() error {
	if c.opts.LeafListen == "" {
		return nil
	}
	sub, err := c.nodesNC.QueueSubscribe(messages.RelayAdmitSubject, relayAdmitQueue, c.onRelayAdmit)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", messages.RelayAdmitSubject, err)
	}
	sub.SetPendingLimits(1<<16, 64<<20)
	return c.nodesNC.Flush()
}

// onRelayKeys answers a relay's request for the enrolled keys, one page
// of names after req.After in name order, bounded in count and bytes.
func (c *Controller) onRelayKeys(m *nats.Msg) {
	if !c.replyOK(m, "relay", messages.RelayInboxPrefix) {
		return
	}
	req, err := messages.Decode[messages.RelayKeysRequest](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.reply(m, "relay", messages.RelayInboxPrefix, nil, err)
		return
	}
	byName := map[string]string{}
	for pub, name := range c.reg.keys() {
		if name > req.After {
			byName[name] = pub
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.Sort(names)
	rep := messages.RelayKeysReply{V: messages.Version}
	size := 64
	for _, n := range names {
		if len(rep.Nodes) == messages.MaxRelayKeysPage || size+len(n)+100 > c.opts.MaxMessageBytes/2 {
			rep.Next = rep.Nodes[len(rep.Nodes)-1].Name
			break
		}
		rep.Nodes = append(rep.Nodes, messages.RelayKey{Name: n, PublicKey: byName[n]})
		size += len(n) + 100
	}
	c.reply(m, "relay", messages.RelayInboxPrefix, &rep, nil)
}
