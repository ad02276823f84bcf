package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// freePorts returns n distinct free loopback ports.
func freePorts(t *testing.T, n int) []int { return freeport.Get(t, n) }

// haCluster is three in-process controllers forming one NATS cluster.
type haCluster struct {
	t     *testing.T
	dir   string
	opts  []controller.Options
	c     []*controller.Controller
	cli   []*ctlclient.Client
	urls  []string
	token string
}

func newHACluster(t *testing.T) *haCluster { return newHAClusterWith(t, nil) }

// newHAClusterWith is newHACluster with mod applied to each peer's
// options before it starts.
func newHAClusterWith(t *testing.T, mod func(i int, o *controller.Options)) *haCluster {
	t.Helper()
	h := &haCluster{t: t, dir: t.TempDir()}
	ports := freePorts(t, 6)
	secret := filepath.Join(h.dir, "cluster.secret")
	if err := os.WriteFile(secret, []byte("test-cluster-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		var peers []string
		for j := range 3 {
			if j != i {
				peers = append(peers, fmt.Sprintf("nats://127.0.0.1:%d", ports[3+j]))
			}
		}
		h.opts = append(h.opts, controller.Options{
			DataDir:           filepath.Join(h.dir, fmt.Sprintf("c%d", i)),
			Listen:            fmt.Sprintf("127.0.0.1:%d", ports[i]),
			HeartbeatInterval: 100 * time.Millisecond,
			SweepInterval:     -1,
			Log:               zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(fmt.Sprintf("c%d", i)),
			Cluster: controller.ClusterOptions{Name: "mgn-test", Listen: fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
				Peers: peers, SecretFile: secret, LeaseTTL: 2 * time.Second},
		})
		h.urls = append(h.urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	if mod != nil {
		for i := range h.opts {
			mod(i, &h.opts[i])
		}
	}
	h.c = make([]*controller.Controller, 3)
	h.cli = make([]*ctlclient.Client, 3)
	for i := range 3 {
		h.start(i)
	}
	t.Cleanup(func() {
		for i := range 3 {
			h.stop(i)
		}
	})
	return h
}

func (h *haCluster) start(i int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := controller.Start(ctx, h.opts[i])
	if err != nil {
		h.t.Fatalf("start controller %d: %v", i, err)
	}
	h.c[i] = c
	if h.cli[i], err = ctlclient.Dial(h.opts[i].DataDir); err != nil {
		h.t.Fatalf("dial %d: %v", i, err)
	}
}

func (h *haCluster) stop(i int) {
	if h.cli[i] != nil {
		h.cli[i].Close()
		h.cli[i] = nil
	}
	if h.c[i] != nil {
		h.c[i].Close()
		h.c[i] = nil
	}
}

// active waits for exactly one running controller to be active and
// returns its index.
func (h *haCluster) active(within time.Duration) int {
	h.t.Helper()
	idx := -1
	poll.Until(h.t, within, "exactly one active controller", func() bool {
		n := 0
		for i, c := range h.c {
			if c != nil && c.Active() {
				n++
				idx = i
			}
		}
		return n == 1
	})
	return idx
}

// noLeadership waits until controller i holds no Raft leadership
// (cluster.go keepNoLeaders), as an active one settles to.
func (h *haCluster) noLeadership(i int) {
	h.t.Helper()
	ns := h.c[i].Server()
	poll.Until(h.t, 20*time.Second, "no leadership on the active controller", func() bool {
		if ns.JetStreamIsLeader() {
			return false
		}
		ad, err := ns.JszAccount(&server.JSzOptions{Account: "$G", Streams: true})
		if err != nil {
			return false
		}
		for _, sd := range ad.Streams {
			if sd.Cluster != nil && sd.Cluster.Leader == ns.Name() {
				return false
			}
		}
		return true
	})
}

func (h *haCluster) agent(name string) *agent.Agent {
	h.t.Helper()
	return runAgent(h.t, agent.Config{
		ControllerURL: strings.Join(h.urls, ","), Token: h.token, Name: name,
		StateDir: filepath.Join(h.dir, "agents", name), Version: "test", Tasks: tasks.Builtin(),
		Log: zaptest.NewLogger(h.t, zaptest.Level(zap.WarnLevel)).Named(name),
	})
}

func (h *haCluster) online(via int, names ...string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := h.cli[via].Status(ctx)
	if err != nil {
		return false
	}
	on := map[string]bool{}
	for _, n := range st.Nodes {
		on[n.Name] = n.State == messages.StateOnline
	}
	for _, n := range names {
		if !on[n] {
			return false
		}
	}
	return true
}

// TestClusterLeaseAndFailover: three controllers elect one active, a
// standby's CLI serves the fleet (token, status, run go to the active
// one), agents enroll through any peer, every stream has three replicas,
// and when the active controller stops another one takes over and
// finishes the fleet's work; each peer's authenticator knows the nodes.
func TestClusterLeaseAndFailover(t *testing.T) {
	h := newHACluster(t)
	act := h.active(30 * time.Second)
	sb := (act + 1) % 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var rep messages.TokenCreateReply
	// The first write after the cluster formed: its streams may still be
	// moving to 3 replicas and their leaders off the active controller.
	var lastErr string
	poll.Until(t, 30*time.Second, "token through a standby", func() bool {
		var err error
		rep, err = h.cli[sb].TokenCreate(ctx, "1h", true, messages.TokenScope{})
		if err != nil && err.Error() != lastErr {
			lastErr = err.Error()
			t.Logf("token through a standby: %v", err)
		}
		return err == nil
	})
	h.token = rep.Token
	names := []string{"n1", "n2", "n3", "n4"}
	for _, n := range names {
		h.agent(n)
	}
	poll.Until(t, 20*time.Second, "agents online", func() bool { return h.online(sb, names...) })

	js, _ := jetstream.New(h.cli[sb].Conn())
	poll.Until(t, 30*time.Second, "every stream with 3 replicas", func() bool {
		l := js.ListStreams(ctx)
		n := 0
		for si := range l.Info() {
			if si.Config.Replicas != 3 {
				return false
			}
			n++
		}
		return l.Err() == nil && n >= 6
	})

	// The active controller holds no Raft leadership (cluster.go
	// keepNoLeaders): killing it costs no election.
	h.noLeadership(act)
	ns := h.c[act].Server()

	// A standby admits the agents' connections as soon as its watch of
	// the nodes bucket has the keys: before, each waited authReadyWait
	// (1.5 s) in the authenticator, and a failover's reconnect storm took
	// seconds longer than the lease.
	for i := range h.c {
		if i != act {
			poll.Until(t, 20*time.Second, fmt.Sprintf("standby %d's authenticator ready", i), h.c[i].AuthReady)
		}
	}

	run := func(via int) messages.TaskReport {
		t.Helper()
		var rr messages.RunReply
		poll.Until(t, 20*time.Second, "run accepted", func() bool {
			var err error
			rr, err = h.cli[via].Run(ctx, messages.RunRequest{V: messages.Version, Target: "all", Kind: "ping", Timeout: "20s"})
			return err == nil
		})
		var tr messages.TaskReport
		poll.Until(t, 40*time.Second, "task "+rr.TaskID+" done", func() bool {
			var err error
			tr, err = h.cli[via].Report(ctx, rr.TaskID, time.Second)
			return err == nil && tr.Done
		})
		return tr
	}
	for _, r := range run(sb).Results {
		if r.Outcome != messages.OutcomeOK {
			t.Fatalf("before failover: %s %s %s", r.Node, r.Outcome, r.Reason)
		}
	}

	// Every agent beating at the cluster's interval (its first heartbeat,
	// with facts, can take a second under load).
	poll.Until(t, 20*time.Second, "every agent heartbeating", func() bool {
		st, err := h.cli[act].Status(ctx)
		if err != nil || len(st.Nodes) != len(names) {
			return false
		}
		for _, n := range st.Nodes {
			if time.Since(n.LastSeen) > 200*time.Millisecond {
				return false
			}
		}
		return true
	})
	// The agents on the stopped controller's server lose their connection
	// and are not heard from until they reconnect elsewhere.
	onStopped := agentConns(t, ns)
	start := time.Now()
	h.stop(act)
	next := h.active(15 * time.Second)
	t.Logf("graceful stop of the active controller: %d active after %v", next, time.Since(start))
	if next == act {
		t.Fatal("the stopped controller is still active")
	}
	// The standby usually had every node from its watch and read no
	// bucket for them (warm.go; it reads when its watch is behind the
	// bucket, as when the stopped controller's last flush has not reached
	// it yet). Either way it starts with the fleet online, from the
	// heartbeats it heard as a standby: the bucket's last_seen is as of
	// each node's last change (enrollment here, seconds ago: offline at
	// 100 ms heartbeats).
	t.Logf("registry from the warm copy: %v", h.c[next].RegistryWarm())
	if got := h.c[next].OnlineAtActivation(); got < len(names)-onStopped {
		t.Errorf("the new active controller started with %d of %d nodes online (%d were on the stopped one)", got, len(names), onStopped)
	}
	poll.Until(t, 20*time.Second, "agents online after failover", func() bool { return h.online(next, names...) })
	for _, r := range run(next).Results {
		if r.Outcome != messages.OutcomeOK {
			t.Fatalf("after failover: %s %s %s", r.Node, r.Outcome, r.Reason)
		}
	}
	// An enrolled key is admitted by every server: connect as nobody is
	// refused, the same at each peer.
	for i, u := range h.urls {
		if h.c[i] == nil {
			continue
		}
		if _, err := nats.Connect(u, nats.Timeout(2*time.Second)); err == nil {
			t.Fatalf("peer %d admitted a connection without a key", i)
		}
	}
	// The stopped peer restarted with another --lease-ttl runs with the
	// bucket's, which its peers share: a holder acting longer than the
	// key lives could overlap the next one.
	h.opts[act].Cluster.LeaseTTL = 5 * time.Second
	h.start(act)
	poll.Until(t, 30*time.Second, "the restarted peer adopts the bucket's lease TTL", func() bool {
		return h.c[act].LeaseTTL() == 2*time.Second
	})
}

// TestClusterReactivation: taking the lease away (deleting its key, as an
// expiry would) makes the holder stand down and some controller take it
// again; a controller active a second time in one process rebuilds its
// active part (no duplicate registrations) and the fleet keeps working.
func TestClusterReactivation(t *testing.T) {
	h := newHACluster(t)
	h.active(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	js, _ := jetstream.New(h.cli[0].Conn())
	kv, err := js.KeyValue(ctx, "mgn_lease")
	if err != nil {
		t.Fatal(err)
	}
	times := map[int]int{}
	for round := 0; round < 8; round++ {
		act := h.active(30 * time.Second)
		times[act]++
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		err := kv.Delete(dctx, "active")
		dcancel()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		poll.Until(t, 10*time.Second, "the holder stands down", func() bool { return !h.c[act].Active() || h.c[act].Lease(ctx).Rev > 0 })
	}
	act := h.active(30 * time.Second)
	t.Logf("activations per controller: %v", times)
	var rep messages.TokenCreateReply
	poll.Until(t, 20*time.Second, "token", func() bool {
		var err error
		rep, err = h.cli[act].TokenCreate(ctx, "1h", true, messages.TokenScope{})
		return err == nil
	})
	h.token = rep.Token
	h.agent("r1")
	poll.Until(t, 20*time.Second, "agent online", func() bool { return h.online(act, "r1") })

	// The join token carries every peer's URL: an agent given only the
	// token (no --controller) dials them.
	jt, err := messages.ParseJoinToken(rep.Token)
	if err != nil {
		t.Fatal(err)
	}
	got, want := slices.Sorted(slices.Values(jt.URLs)), slices.Sorted(slices.Values(h.urls))
	if !slices.Equal(got, want) {
		t.Fatalf("the join token's URLs are %v, want every peer's %v", got, want)
	}
	runAgent(t, agent.Config{
		ControllerURL: "nats://127.0.0.1:1", ControllerFromToken: true, Token: rep.Token, Name: "r2",
		StateDir: filepath.Join(h.dir, "agents", "r2"), Version: "test", Tasks: tasks.Builtin(),
		Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("r2"),
	})
	poll.Until(t, 20*time.Second, "the agent given only the token online", func() bool { return h.online(act, "r2") })
}
