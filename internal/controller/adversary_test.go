package controller_test

// The adversarial suite: each test speaks the wire protocol as a hostile
// node that owns one enrolled identity (its identity.seed) or one join
// token, with a plain nats.go client, and asserts that the attack is
// refused, that nothing in the controller's store changed (every stream's
// message count and last sequence: the KV buckets, the results stream and
// the object stores are all streams), and that the controller still answers
// its operator. docs/SECURITY.md says what these tests defend.

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

// hostile is a fleet with two enrolled nodes: a (the attacker's) and b (the
// victim, enrolled and then stopped so that nothing it sends is mistaken
// for the controller's), no background sweeps, and a spy that sees every
// message on subjects outside JetStream.
type hostile struct {
	*fleet
	tok   string // a reusable join token
	aSeed string // the attacker's identity
	lines atomic.Int64
}

func newHostile(t *testing.T, mod func(*controller.Options)) *hostile {
	h := &hostile{}
	count := zapcore.RegisterHooks(zapcore.NewNopCore(), func(zapcore.Entry) error { h.lines.Add(1); return nil })
	h.fleet = newFleet(t, func(o *controller.Options) {
		o.SweepInterval = -1
		o.Log = zap.New(zapcore.NewTee(count, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Core())).Named("controller")
		if mod != nil {
			mod(o)
		}
	})
	h.tok = h.token(true, "1h")
	a := h.runAgent(h.agentCfg("a", "c1", h.tok))
	b := h.runAgent(h.agentCfg("b", "c1", h.tok))
	h.waitOnline("a", "b")
	b.stop()
	a.stop() // the attacker speaks for a from here on, by hand
	h.aSeed = filepath.Join(a.cfg.StateDir, "identity.seed")
	for _, n := range []string{"a", "b"} {
		// Offline, so that no state change of theirs is announced during
		// an attack (the spy would see it).
		poll.Until(t, 10*time.Second, n+" offline", func() bool { return h.state(n) == messages.StateOffline })
	}
	return h
}

// asNode connects with the attacker's identity; inbox "" keeps nats.go's
// default inbox prefix.
func (h *hostile) asNode(inbox string) *nats.Conn {
	h.t.Helper()
	opts := []nats.Option{}
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	nc, err := connectAs(h.t, h.c.Info().NATSURL, h.aSeed, make(chan error, 1024), opts...)
	if err != nil {
		h.t.Fatalf("connect as a: %v", err)
	}
	h.t.Cleanup(nc.Close)
	return nc
}

// storeState is every stream's size and last sequence.
func (h *hostile) storeState() map[string]string {
	h.t.Helper()
	js, err := jetstream.New(h.cli.Conn())
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[string]string{}
	l := js.ListStreams(ctx)
	for si := range l.Info() {
		out[si.Config.Name] = fmt.Sprintf("msgs=%d last=%d", si.State.Msgs, si.State.LastSeq)
	}
	if err := l.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// unchanged waits for the controller to have handled what was sent (the
// operator's own round trip through it), then compares the store with
// before and checks the operator is still answered.
func (h *hostile) unchanged(before map[string]string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.cli.Status(ctx); err != nil {
		h.t.Fatalf("the operator is not answered after the attack: %v", err)
	}
	after := h.storeState()
	if !maps.Equal(before, after) {
		h.t.Fatalf("the store changed:\nbefore %v\nafter  %v", before, after)
	}
}

// spy records every message outside JetStream's subjects that reaches the
// given subjects (the admin may subscribe anywhere).
func (h *hostile) spy(subjects ...string) *atomic.Int64 {
	h.t.Helper()
	var n atomic.Int64
	for _, s := range subjects {
		sub, err := h.cli.Conn().Subscribe(s, func(m *nats.Msg) {
			h.t.Logf("spy: %s got %q", m.Subject, m.Data)
			n.Add(1)
		})
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { sub.Unsubscribe() })
	}
	h.cli.Conn().Flush()
	return &n
}

// metric returns the value of one series on /metrics (0 when absent).
func metric(t *testing.T, f *fleet, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(scrape(t, f))
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// replyTargets are reply subjects a hostile requester might name: every
// family the controller's own state or other parties live under.
func replyTargets(taskID string) []string {
	return []string{
		"$KV.mgn_nodes.b", "$KV.mgn_nodes.evil", "$KV.mgn_tasks_open." + taskID, "$KV.mgn_tasks." + taskID,
		"$KV.mgn_tokens.0000", "$JS.API.STREAM.DELETE.MGN_RESULTS", "$JS.API.STREAM.PURGE.KV_mgn_nodes",
		"$JS.API.STREAM.MSG.DELETE.KV_mgn_nodes", "$JS.API.CONSUMER.CREATE.MGN_RESULTS", "$JS.API.STREAM.CREATE.EVIL",
		"$JS.ACK.MGN_RESULTS.x.1.1.1.1.0", "$O.mgn_reports.M.x", "$O.mgn_reports.C.x", "$SYS.REQ.SERVER.PING",
		"mgn.hb.b", "mgn.results." + taskID, "mgn.res.b", "mgn.task.b", "mgn.sync.b", "mgn.evt.node_state",
		"mgn.api.verify", "mgn.api.diagnose", "mgn.api.token.create", "mgn.api.nodes.remove", "mgn.api.run",
		"_INBOX_N.b.x", "_INBOX_N.a", "_INBOX.operator.x", "_INBOX_E.UEVIL.x", "_INBOX_N.a.*", "_INBOX_N.a.>",
	}
}

// reachable counts the targets the server lets a client name as a reply at
// all: it refuses JetStream's acknowledgement subjects itself.
func reachable(targets []string) int {
	n := 0
	for _, s := range targets {
		if !strings.HasPrefix(s, "$JS.ACK.") {
			n++
		}
	}
	return n
}

// nonJSTargets are the targets a spy can watch (the rest are checked by
// the store comparison).
// (mgn.evt.> is left out: nodes' state changes are announced there.)
// Every target is also covered by the count of dropped replies, which
// reaches what the test waits for only if no reply was sent.
var nonJSTargets = []string{"mgn.hb.b", "mgn.res.b", "mgn.task.b", "mgn.sync.b", "mgn.api.>", "_INBOX_N.b.>", "_INBOX.operator.>", "_INBOX_E.>", "mgn.results.>"}

func TestAdversaryReplySubjectInjection(t *testing.T) {
	h := newHostile(t, nil)
	// An open task on b, so that its bucket key exists to be aimed at.
	ctx := context.Background()
	run, err := h.cli.Run(ctx, messages.RunRequest{Target: "b", Kind: "ping", Timeout: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	targets := replyTargets(run.TaskID)
	nc := h.asNode("")
	before := h.storeState()
	spied := h.spy(nonJSTargets...)
	dropped := metric(t, h.fleet, `mgn_replies_dropped_total{kind="sync"}`)

	for _, reply := range targets {
		for _, body := range []string{`{"v":1}`, `{"v":1,"claims_rev":7}`, `[]`} {
			if err := nc.PublishMsg(&nats.Msg{Subject: messages.SyncSubject("a"), Reply: reply, Data: []byte(body)}); err != nil {
				t.Fatalf("publish: %v", err)
			}
		}
		// Reply subjects on messages that are never answered.
		for _, subj := range []string{messages.AckSubject("a"), messages.ResultSubject("a")} {
			nc.PublishMsg(&nats.Msg{Subject: subj, Reply: reply, Data: []byte(`{"v":1,"task_id":"` + run.TaskID + `","outcome":"fail"}`)})
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := dropped + float64(3*reachable(targets))
	poll.Until(t, 10*time.Second, "every injected sync reply dropped and counted", func() bool {
		return metric(t, h.fleet, `mgn_replies_dropped_total{kind="sync"}`) >= want
	})
	if n := spied.Load(); n != 0 { // before the operator's own API calls below
		t.Fatalf("%d messages reached subjects the attacker named", n)
	}
	h.unchanged(before)
	// b's task is still open and b still owes it: nothing settled it.
	rep, err := h.cli.Report(ctx, run.TaskID, 0)
	if err != nil || rep.Done || !byNode(rep)["b"].Pending {
		t.Fatalf("b's task after the attack: %+v %v", rep, err)
	}
	// b is still enrolled as it was, and comes back with its own key.
	st, err := h.cli.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Name == "b" && (n.Cluster != "c1" || n.State == messages.StateOnline) {
			t.Fatalf("b after the attack: %+v", n)
		}
	}

	// The node's own inbox still gets its answer.
	own := h.asNode(messages.NodeInbox("a"))
	m, err := own.Request(messages.SyncSubject("a"), []byte(`{"v":1}`), 5*time.Second)
	if err != nil {
		t.Fatalf("sync in the node's own inbox: %v", err)
	}
	if _, err := messages.Decode[messages.SyncReply](m.Data, 0); err != nil {
		t.Fatalf("sync reply: %s", m.Data)
	}
}

func TestAdversaryEnrollReplyInjection(t *testing.T) {
	h := newHostile(t, nil)
	single := h.token(false, "1h")
	before := h.storeState()
	spied := h.spy(nonJSTargets...)
	dropped := metric(t, h.fleet, `mgn_replies_dropped_total{kind="enroll"}`)

	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	nc, err := nats.Connect(h.c.Info().NATSURL, nats.Token(single), nats.Nkey(pub, kp.Sign), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	targets := replyTargets("tnone")
	for _, reply := range targets {
		body := `{"v":1,"name":"evil","facts":{"hostname":"x","os":"linux","arch":"amd64","cpus":1,"agent_version":"x"}}`
		nc.PublishMsg(&nats.Msg{Subject: messages.EnrollSubject(pub), Reply: reply, Data: []byte(body)})
	}
	nc.Flush()
	poll.Until(t, 10*time.Second, "every injected enroll reply dropped", func() bool {
		return metric(t, h.fleet, `mgn_replies_dropped_total{kind="enroll"}`) >= dropped+float64(reachable(targets))
	})
	if n := spied.Load(); n != 0 { // before the operator's own API calls below
		t.Fatalf("%d messages reached subjects the attacker named", n)
	}
	h.unchanged(before)
	// Nothing was enrolled and the single-use token is not spent: the same
	// key enrolls properly in its own inbox.
	ok, err := nats.Connect(h.c.Info().NATSURL, nats.Token(single), nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
		nats.CustomInboxPrefix(messages.EnrollInbox(pub)))
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Close()
	m, err := ok.Request(messages.EnrollSubject(pub), []byte(`{"v":1,"name":"evil","facts":{"hostname":"x","os":"linux","arch":"amd64","cpus":1,"agent_version":"x"}}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := messages.Decode[messages.EnrollReply](m.Data, 0); err != nil || rep.Name != "evil" {
		t.Fatalf("enrollment after the attack: %s", m.Data)
	}
}

func TestAdversaryCannotReachTheAPI(t *testing.T) {
	h := newHostile(t, nil)
	nc := h.asNode(messages.NodeInbox("a"))
	errs := make(chan error, 16)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	before := h.storeState()
	for _, verb := range []string{messages.APIVerify, messages.APITokenCreate, messages.APINodesRemove, messages.APINodesSet, messages.APIStatus} {
		if _, err := nc.Request(messages.APISubject(verb), []byte(`{"v":1,"name":"b"}`), 300*time.Millisecond); err == nil {
			t.Fatalf("a node was answered on mgn.api.%s", verb)
		}
	}
	expectViolation(t, errs, "publish to mgn.api")
	h.unchanged(before)
}

func TestAdversaryClaimsComeFromEnrollment(t *testing.T) {
	h := newHostile(t, nil)
	ctx := context.Background()
	nc := h.asNode(messages.NodeInbox("a"))
	refused := metric(t, h.fleet, `mgn_messages_refused_total{kind="heartbeat",reason="claims"}`)
	for _, hb := range []string{
		`{"v":1,"seq":1,"time":"2026-01-01T00:00:00Z","cluster":"c2","role":"controlplane"}`,
		`{"v":1,"seq":2,"time":"2026-01-01T00:00:00Z","role":"controlplane"}`,
		`{"v":1,"seq":3,"time":"2026-01-01T00:00:00Z","labels":{"tier":"prod"}}`,
	} {
		nc.Publish(messages.HeartbeatSubject("a"), []byte(hb))
	}
	nc.Flush()
	poll.Until(t, 5*time.Second, "claiming heartbeats refused", func() bool {
		return metric(t, h.fleet, `mgn_messages_refused_total{kind="heartbeat",reason="claims"}`) >= refused+3
	})
	st, err := h.cli.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Name == "a" && (n.Cluster != "c1" || n.Role != "" || len(n.Labels) != 0 || n.State == messages.StateOnline) {
			t.Fatalf("a after claiming heartbeats: %+v (a refused heartbeat must not count as a sign of life either)", n)
		}
	}
	// Tasks aimed at the claimed attributes do not reach a.
	for _, target := range []string{"cluster=c2", "role=controlplane", "tier=prod"} {
		if _, err := h.cli.Run(ctx, messages.RunRequest{Target: target, Kind: "ping"}); err == nil {
			t.Fatalf("target %s matched a node after a claiming heartbeat", target)
		}
	}
	// An honest heartbeat (no claims) counts.
	nc.Publish(messages.HeartbeatSubject("a"), []byte(`{"v":1,"seq":4,"time":"2026-01-01T00:00:00Z"}`))
	nc.Flush()
	poll.Until(t, 5*time.Second, "a online after an honest heartbeat", func() bool { return h.state("a") == messages.StateOnline })

	// The operator changes claims; the node learns them in its sync reply.
	cl := "c2"
	rep, err := h.cli.NodesSet(ctx, messages.NodesSetRequest{Name: "a", Cluster: &cl, Labels: map[string]string{"tier": "prod"}})
	if err != nil || rep.Node.Cluster != "c2" || rep.Node.Labels["tier"] != "prod" {
		t.Fatalf("nodes set: %+v %v", rep, err)
	}
	m, err := nc.Request(messages.SyncSubject("a"), []byte(`{"v":1,"claims_rev":1}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sr, err := messages.Decode[messages.SyncReply](m.Data, 0)
	if err != nil || sr.Node == nil || sr.Node.Cluster != "c2" || sr.Node.Rev != rep.Node.Rev {
		t.Fatalf("sync after nodes set: %s", m.Data)
	}
	if _, err := h.cli.Run(ctx, messages.RunRequest{Target: "tier=prod", Kind: "ping", Timeout: "1s"}); err != nil {
		t.Fatalf("target tier=prod after nodes set: %v", err)
	}
}

func TestAdversaryTokenScope(t *testing.T) {
	h := newHostile(t, nil)
	ctx := context.Background()
	rep, err := h.cli.TokenCreate(ctx, "1h", true, messages.TokenScope{Cluster: "c9", Roles: []string{"worker"}, Labels: map[string]string{"site": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	enroll := func(name, body string) (messages.EnrollReply, error) {
		kp, _ := nkeys.CreateUser()
		pub, _ := kp.PublicKey()
		nc, err := nats.Connect(h.c.Info().NATSURL, nats.Token(rep.Token), nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
			nats.CustomInboxPrefix(messages.EnrollInbox(pub)))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		m, err := nc.Request(messages.EnrollSubject(pub), []byte(`{"v":1,"name":"`+name+`",`+body+`"facts":{}}`), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if e, err := messages.Decode[messages.ErrorReply](m.Data, 0); err == nil && e.Code != "" {
			return messages.EnrollReply{}, fmt.Errorf("%s", e.Error)
		}
		return messages.Decode[messages.EnrollReply](m.Data, 0)
	}
	for name, body := range map[string]string{
		"s1": `"cluster":"c1",`, "s2": `"role":"controlplane",`, "s3": `"labels":{"site":"y"},`,
	} {
		if _, err := enroll(name, body); err == nil {
			t.Errorf("%s: enrolled outside the token's scope (%s)", name, body)
		}
	}
	got, err := enroll("s4", ``)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node == nil || got.Node.Cluster != "c9" || got.Node.Role != "worker" || got.Node.Labels["site"] != "x" {
		t.Fatalf("scoped enrollment gave %+v", got.Node)
	}
}

func TestAdversaryConnectionsEnd(t *testing.T) {
	h := newHostile(t, nil)
	ctx := context.Background()

	t.Run("enrollment connection ends with its token", func(t *testing.T) {
		rep, err := h.cli.TokenCreate(ctx, "2s", true, messages.TokenScope{})
		if err != nil {
			t.Fatal(err)
		}
		kp, _ := nkeys.CreateUser()
		pub, _ := kp.PublicKey()
		closed := make(chan struct{})
		nc, err := nats.Connect(h.c.Info().NATSURL, nats.Token(rep.Token), nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
			nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		select {
		case <-closed:
		case <-time.After(time.Until(rep.ExpiresAt) + 5*time.Second):
			t.Fatal("the enrollment connection outlived its token")
		}
	})

	t.Run("removal closes every connection of the identity", func(t *testing.T) {
		var closed atomic.Int64
		const n = 40 // the old bookkeeping forgot them all past 16
		for i := 0; i < n; i++ {
			if _, err := connectAs(t, h.c.Info().NATSURL, h.aSeed, make(chan error, 16),
				nats.ClosedHandler(func(*nats.Conn) { closed.Add(1) })); err != nil {
				t.Fatal(err)
			}
		}
		rm, err := h.cli.NodesRemove(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if rm.Disconnected < n {
			t.Errorf("removal closed %d connections, want %d", rm.Disconnected, n)
		}
		poll.Until(t, 5*time.Second, "every connection of a closed", func() bool { return closed.Load() == n })
		if _, err := connectAs(t, h.c.Info().NATSURL, h.aSeed, make(chan error, 1)); err == nil {
			t.Fatal("a removed node connected again")
		}
	})

	t.Run("a refused enrollment does not burn a single-use token", func(t *testing.T) {
		single := h.token(false, "1h")
		freshKey, _ := nkeys.CreateUser()
		try := func(name string) string {
			kp, _ := nkeys.CreateUser()
			if name == "fresh" {
				kp = freshKey // enrolls twice below
			}
			pub, _ := kp.PublicKey()
			nc, err := nats.Connect(h.c.Info().NATSURL, nats.Token(single), nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
				nats.CustomInboxPrefix(messages.EnrollInbox(pub)))
			if err != nil {
				return "connect: " + err.Error()
			}
			defer nc.Close()
			m, err := nc.Request(messages.EnrollSubject(pub), []byte(`{"v":1,"name":"`+name+`","facts":{}}`), 5*time.Second)
			if err != nil {
				return err.Error()
			}
			return string(m.Data)
		}
		if got := try("b"); !strings.Contains(got, "already enrolled") {
			t.Fatalf("enrolling a taken name: %s", got)
		}
		if got := try("fresh"); !strings.Contains(got, `"name":"fresh"`) {
			t.Fatalf("the single-use token after a refused enrollment: %s", got)
		}
		// The same key asking again (its reply was lost) is told it is
		// enrolled, without a second token.
		if got := try("fresh"); !strings.Contains(got, `"name":"fresh"`) {
			t.Fatalf("the same key enrolling again: %s", got)
		}
		if got := try("fresh2"); strings.Contains(got, `"name":"fresh2"`) {
			t.Fatalf("the single-use token worked twice: %s", got)
		}
	})
}

func TestAdversaryLimits(t *testing.T) {
	h := newHostile(t, nil)
	ctx := context.Background()
	nc := h.asNode(messages.NodeInbox("a"))

	t.Run("oversized facts are refused, the fleet view still fits", func(t *testing.T) {
		big := strings.Repeat("x", 540<<10)
		hb := `{"v":1,"seq":1,"time":"2026-01-01T00:00:00Z","facts":{"hostname":"` + big + `","os":"linux","arch":"amd64","cpus":1,"agent_version":"x"}}`
		nc.Publish(messages.HeartbeatSubject("a"), []byte(hb))
		// Facts at every bound, which the controller accepts: the status
		// reply must still page under the message limit.
		addrs := make([]string, messages.MaxFactAddresses)
		for i := range addrs {
			addrs[i] = fmt.Sprintf(`"%s"`, strings.Repeat("f", messages.MaxAddressLen-4)+fmt.Sprintf("%04d", i))
		}
		long := strings.Repeat("y", messages.MaxFactString)
		maxed := `{"v":1,"seq":2,"time":"2026-01-01T00:00:00Z","facts":{"hostname":"` + long + `","os":"` + long + `","kernel":"` + long +
			`","arch":"` + long + `","cpus":1,"agent_version":"` + long + `","addresses":[` + strings.Join(addrs, ",") + `],"tailnet_ips":[` + strings.Join(addrs, ",") + `]}}`
		nc.Publish(messages.HeartbeatSubject("a"), []byte(maxed))
		nc.Flush()
		poll.Until(t, 5*time.Second, "the maxed facts stored", func() bool {
			st, err := h.cli.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range st.Nodes {
				if n.Name == "a" && n.Facts.Hostname == long {
					return true
				}
			}
			return false
		})
		if metric(t, h.fleet, `mgn_messages_refused_total{kind="heartbeat",reason="bad_request"}`) < 1 {
			t.Fatal("the oversized heartbeat was not refused")
		}
	})

	t.Run("denials are counted, not logged one by one", func(t *testing.T) {
		lines := h.lines.Load()
		const n = 3000
		for i := 0; i < n; i++ {
			nc.Publish("mgn.hb.b", []byte(`{}`))
		}
		nc.Flush()
		poll.Until(t, 10*time.Second, "denials counted", func() bool {
			return metric(t, h.fleet, `mgn_permission_denied_total{op="publish"}`) >= n
		})
		if grew := h.lines.Load() - lines; grew > 20 {
			t.Fatalf("%d denied publishes wrote %d log lines", n, grew)
		}
	})

	t.Run("a sync flood is limited per node", func(t *testing.T) {
		const n = 20000
		for i := 0; i < n; i++ {
			nc.PublishMsg(&nats.Msg{Subject: messages.SyncSubject("a"), Reply: messages.NodeInbox("a") + ".flood", Data: []byte(`{"v":1}`)})
		}
		nc.Flush()
		poll.Until(t, 20*time.Second, "the flood limited", func() bool {
			return metric(t, h.fleet, `mgn_messages_refused_total{kind="sync",reason="rate_limited"}`) >= n-100
		})
		if _, err := h.cli.Status(ctx); err != nil {
			t.Fatalf("the operator is not answered after a sync flood: %v", err)
		}
	})
}

// The responders' own connections cannot write outside inboxes either:
// the second lock holds if the first (ReplyUnder) were ever bypassed.
func TestAdversaryRespondersAreConfined(t *testing.T) {
	h := newHostile(t, nil)
	before := h.storeState()
	denied := metric(t, h.fleet, `mgn_permission_denied_total{op="publish"}`)
	subjects := slices.DeleteFunc(replyTargets("tnone"), func(s string) bool {
		return strings.HasPrefix(s, "_INBOX")
	})
	for _, s := range subjects {
		if err := h.c.PublishAsResponders(s, []byte(`{"v":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "the responders' publishes denied", func() bool {
		return metric(t, h.fleet, `mgn_permission_denied_total{op="publish"}`) >= denied+float64(2*len(subjects))
	})
	h.unchanged(before)
}
