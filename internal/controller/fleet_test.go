package controller_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

func TestRunAcrossFleet(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("n1", "a", tok))
	f.runAgent(f.agentCfg("n2", "a", tok))
	cfg := f.agentCfg("n3", "b", tok)
	cfg.Role = "controlplane"
	cfg.Labels = map[string]string{"zone": "z1"}
	f.runAgent(cfg)
	f.waitOnline("n1", "n2", "n3")

	tests := []struct {
		target string
		kind   string
		want   map[string]messages.Outcome
		reason string
	}{
		{"all", "ping", map[string]messages.Outcome{"n1": "ok", "n2": "ok", "n3": "ok"}, ""},
		{"cluster=a", "facts", map[string]messages.Outcome{"n1": "ok", "n2": "ok"}, ""},
		{"n2", "ping", map[string]messages.Outcome{"n2": "ok"}, ""},
		{"role=controlplane", "ping", map[string]messages.Outcome{"n3": "ok"}, ""},
		{"zone=z1,cluster=b", "ping", map[string]messages.Outcome{"n3": "ok"}, ""},
		{"n1", "no-such-kind", map[string]messages.Outcome{"n1": "unknown"}, messages.ReasonRejected},
	}
	for _, tt := range tests {
		t.Run(tt.target+"/"+tt.kind, func(t *testing.T) {
			rep := f.run(messages.RunRequest{Target: tt.target, Kind: tt.kind, Timeout: "10s"})
			if len(rep.Results) != len(tt.want) {
				t.Fatalf("got %d rows, want exactly one per targeted node %v: %+v", len(rep.Results), tt.want, rep.Results)
			}
			for _, r := range rep.Results {
				if r.Outcome != tt.want[r.Node] || r.Reason != tt.reason {
					t.Errorf("%s: %s/%q, want %s/%q (output %s)", r.Node, r.Outcome, r.Reason, tt.want[r.Node], tt.reason, r.Output)
				}
			}
		})
	}
	// facts carry what the heartbeat carries.
	rep := f.run(messages.RunRequest{Target: "n1", Kind: "facts"})
	var facts messages.Facts
	if err := json.Unmarshal(rep.Results[0].Output, &facts); err != nil || facts.CPUs == 0 || facts.AgentVersion != "test" {
		t.Fatalf("facts output %s (%v)", rep.Results[0].Output, err)
	}
	st, err := f.cli.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Summary.Online != 3 || st.Nodes[0].Cluster != "a" || st.Nodes[2].Labels["zone"] != "z1" || st.Nodes[2].Role != "controlplane" {
		t.Fatalf("status %+v", st)
	}
	if _, err := f.cli.Run(context.Background(), messages.RunRequest{Target: "cluster=nope", Kind: "ping"}); err == nil || !strings.Contains(err.Error(), "matches no enrolled node") {
		t.Fatalf("empty selector: %v", err)
	}
}

// seedKey reads a node's stored identity (its NKey seed file).
func seedKey(t *testing.T, seedPath string) (nkeys.KeyPair, string) {
	t.Helper()
	b, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return kp, pub
}

// connectAs opens a raw NATS connection with a node's stored identity.
func connectAs(t *testing.T, url, seedPath string, errs chan<- error, extra ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	kp, pub := seedKey(t, seedPath)
	opts := append([]nats.Option{nats.Nkey(pub, kp.Sign), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		})}, extra...)
	return nats.Connect(url, opts...)
}

func expectViolation(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("%s: got %v, want a permissions violation", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no permissions violation reported", what)
	}
}

func TestEnrollmentAndPermissions(t *testing.T) {
	f := newFleet(t, nil)
	url := f.c.Info().NATSURL
	single := f.token(false, "1h")
	a1 := f.runAgent(f.agentCfg("n1", "a", single))
	f.waitOnline("n1")

	t.Run("single-use token is spent", func(t *testing.T) {
		cfg := f.agentCfg("n2", "a", single)
		a, err := newAgent(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "join token") {
			t.Fatalf("second use of a single-use token: %v", err)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		tok := f.token(true, "1ms")
		time.Sleep(5 * time.Millisecond) // let the 1 ms TTL pass; not a condition wait
		a, _ := newAgent(f.agentCfg("n9", "a", tok))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Run(ctx); err == nil {
			t.Fatal("expired token accepted")
		}
	})
	t.Run("no credentials, unknown key, bad token", func(t *testing.T) {
		if nc, err := nats.Connect(url, nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("anonymous connection accepted")
		}
		kp, _ := nkeys.CreateUser()
		pub, _ := kp.PublicKey()
		if nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("unknown key accepted")
		}
		if nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.Token("mgnt_forged"), nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("forged token accepted")
		}
		// A signature by another key for a known public key.
		b, _ := os.ReadFile(filepath.Join(a1.cfg.StateDir, "identity.seed"))
		real, _ := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
		realPub, _ := real.PublicKey()
		if nc, err := nats.Connect(url, nats.Nkey(realPub, kp.Sign), nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatal("key without its private half accepted")
		}
	})

	// n2 enrolled, then stopped: its subjects exist but nobody serves them.
	tok := f.token(true, "1h")
	a2 := f.runAgent(f.agentCfg("n2", "a", tok))
	f.waitOnline("n2")
	a2.stop()
	poll.Until(t, 10*time.Second, "n2 offline", func() bool { return f.state("n2") == messages.StateOffline })

	errs := make(chan error, 16)
	nc, err := connectAs(t, url, filepath.Join(a1.cfg.StateDir, "identity.seed"), errs, nats.CustomInboxPrefix(messages.NodeInbox("n1")))
	if err != nil {
		t.Fatalf("n1 identity refused: %v", err)
	}
	defer nc.Close()

	t.Run("cannot read another node's tasks", func(t *testing.T) {
		sub, _ := nc.SubscribeSync(messages.TaskSubject("n2"))
		expectViolation(t, errs, "subscribe mgn.task.n2")
		f.cli.Conn().Publish(messages.TaskSubject("n2"), []byte("{}"))
		if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
			t.Fatalf("n1 read n2's task: %s", m.Data)
		}
	})
	for _, sub := range []string{"mgn.res.>", "mgn.hb.*", messages.NodeInbox("n2") + ".>", "mgn.api.>", ">"} {
		t.Run("cannot subscribe "+sub, func(t *testing.T) {
			nc.SubscribeSync(sub)
			expectViolation(t, errs, "subscribe "+sub)
		})
	}
	t.Run("cannot pose as another node", func(t *testing.T) {
		hb := messages.Heartbeat{V: 1, Seq: 1, Time: time.Now()}
		nc.Publish(messages.HeartbeatSubject("n2"), messages.MustEncode(&hb))
		expectViolation(t, errs, "heartbeat as n2")
		nc.Flush()
		if s := f.state("n2"); s != messages.StateOffline {
			t.Fatalf("spoofed heartbeat changed n2 to %s", s)
		}
		nc.Publish(messages.ResultSubject("n2"), []byte("{}"))
		expectViolation(t, errs, "result as n2")
	})
	t.Run("cannot issue tasks or call the API", func(t *testing.T) {
		req := messages.RunRequest{V: 1, Target: "all", Kind: "ping"}
		if _, err := nc.Request(messages.APISubject(messages.APIRun), messages.MustEncode(&req), 500*time.Millisecond); err == nil {
			t.Fatal("node called the operator API")
		}
		expectViolation(t, errs, "api run")
		nc.Publish(messages.TaskSubject("n2"), []byte("{}"))
		expectViolation(t, errs, "publish task")
	})
	t.Run("may use its own subjects", func(t *testing.T) {
		m, err := nc.Request(messages.SyncSubject("n1"), messages.MustEncode(&messages.SyncRequest{V: 1}), 5*time.Second)
		if err != nil {
			t.Fatalf("own sync: %v", err)
		}
		if _, err := messages.Decode[messages.SyncReply](m.Data, 0); err != nil {
			t.Fatalf("sync reply: %v", err)
		}
	})
	t.Run("enrolling key may only enroll itself", func(t *testing.T) {
		kp, _ := nkeys.CreateUser()
		pub, _ := kp.PublicKey()
		errs := make(chan error, 4)
		enc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.Token(tok), nats.NoReconnect(),
			nats.CustomInboxPrefix(messages.EnrollInbox(pub)),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		other, _ := nkeys.CreateUser()
		otherPub, _ := other.PublicKey()
		enc.Publish(messages.EnrollSubject(otherPub), []byte("{}"))
		expectViolation(t, errs, "enroll another key")
		enc.Publish(messages.HeartbeatSubject("n1"), []byte("{}"))
		expectViolation(t, errs, "heartbeat while enrolling")
		// Taking an enrolled name is refused.
		req := messages.EnrollRequest{V: 1, Name: "n1"}
		m, err := enc.Request(messages.EnrollSubject(pub), messages.MustEncode(&req), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := messages.Decode[messages.ErrorReply](m.Data, 0); e.Code != messages.CodeConflict {
			t.Fatalf("enrolling an enrolled name: %s", m.Data)
		}
	})
}

func TestNodesRemoveTakesEffectAtOnce(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	a1 := f.runAgent(f.agentCfg("n1", "a", tok))
	f.runAgent(f.agentCfg("n2", "a", tok))
	f.waitOnline("n1", "n2")

	// A long task is open on n1 when it is removed: it settles at once.
	ctx := context.Background()
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "all", Kind: "sleep", Args: json.RawMessage(`{"duration":"30s"}`), Timeout: "60s"})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	closed := make(chan struct{})
	raw, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(a1.cfg.StateDir, "identity.seed"), errs,
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	rm, err := f.cli.NodesRemove(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if rm.Disconnected < 2 {
		t.Errorf("disconnected %d connections, want both of n1's (agent and raw)", rm.Disconnected)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("n1's connection was not closed")
	}
	if _, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(a1.cfg.StateDir, "identity.seed"), errs); err == nil {
		t.Fatal("removed node reconnected")
	}
	// n2's sleep still runs; n1's row is settled already.
	rep, err := f.cli.Report(ctx, run.TaskID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r := byNode(rep)["n1"]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonOffline {
		t.Fatalf("n1's open task after removal: %+v", r)
	}
	st, _ := f.cli.Status(ctx)
	if len(st.Nodes) != 1 || st.Nodes[0].Name != "n2" {
		t.Fatalf("status after removal: %+v", st.Nodes)
	}
	if _, err := f.cli.NodesRemove(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "no node named") {
		t.Fatalf("second removal: %v", err)
	}
}

func TestLivenessStaleThenOffline(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	a := f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	events := make(chan string, 8)
	sub, _ := f.cli.Conn().Subscribe(messages.EventSubject("node_state"), func(m *nats.Msg) {
		var ev messages.Event
		json.Unmarshal(m.Data, &ev)
		events <- ev.From + "->" + ev.To
	})
	defer sub.Unsubscribe()
	a.stop()
	poll.Until(t, 5*time.Second, "stale", func() bool { return f.state("n1") == messages.StateStale })
	poll.Until(t, 5*time.Second, "offline", func() bool { return f.state("n1") == messages.StateOffline })
	for _, want := range []string{"online->stale", "stale->offline"} {
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("event %s, want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
}

func TestBusyAgentStaysOnline(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	ctx := context.Background()
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "sleep", Args: json.RawMessage(`{"duration":"1500ms"}`), Timeout: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	// 1.5 s is 15 heartbeat intervals, well past "offline after 6".
	deadline := time.Now().Add(1200 * time.Millisecond)
	sawRunning := false
	for time.Now().Before(deadline) {
		st, _ := f.cli.Status(ctx)
		if st.Nodes[0].State != messages.StateOnline {
			t.Fatalf("busy node went %s", st.Nodes[0].State)
		}
		sawRunning = sawRunning || len(st.Nodes[0].Running) == 1
		time.Sleep(50 * time.Millisecond)
	}
	if !sawRunning {
		t.Error("status never showed the running task")
	}
	rep, err := f.cli.Wait(ctx, run.TaskID)
	if err != nil || rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("sleep: %+v %v", rep, err)
	}
}

func TestStoreAndForward(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	cfg := f.agentCfg("n1", "a", tok)
	a := f.runAgent(cfg)
	f.waitOnline("n1")
	a.stop()
	poll.Until(t, 5*time.Second, "offline", func() bool { return f.state("n1") == messages.StateOffline })
	ctx := context.Background()

	// Issued while n1 is offline, n1 returns before the deadline: it runs.
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "ping", Timeout: "30s"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Token = "" // later starts use the stored identity
	a = f.runAgent(cfg)
	rep, err := f.cli.Wait(ctx, run.TaskID)
	if err != nil || rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("task to a returning node: %+v %v", rep.Results, err)
	}
	a.stop()

	// Issued while offline, n1 does not return before the deadline.
	run, err = f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "ping", Timeout: "300ms"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = f.cli.Wait(ctx, run.TaskID)
	if err != nil || rep.Results[0].Outcome != messages.OutcomeUnknown || rep.Results[0].Reason != messages.ReasonExpired {
		t.Fatalf("task to an absent node: %+v %v", rep.Results, err)
	}

	// --skip-offline settles at once.
	rep = f.run(messages.RunRequest{Target: "n1", Kind: "ping", Timeout: "1h", SkipOffline: true})
	if r := rep.Results[0]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonOffline {
		t.Fatalf("skip-offline: %+v", r)
	}
}

func TestTaskTimesOutOnNode(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	rep := f.run(messages.RunRequest{Target: "n1", Kind: "sleep", Args: json.RawMessage(`{"duration":"5s"}`), Timeout: "300ms"})
	if r := rep.Results[0]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonTimedOut {
		t.Fatalf("sleep past its deadline: %+v", r)
	}
	rep = f.run(messages.RunRequest{Target: "n1", Kind: "sleep", Args: json.RawMessage(`{"duration":"forever"}`)})
	if r := rep.Results[0]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonRejected || !strings.Contains(string(r.Output), "duration") {
		t.Fatalf("bad args: %+v", r)
	}
}

func TestSlowAgentDoesNotDelayOthers(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("fast1", "a", tok))
	f.runAgent(f.agentCfg("fast2", "a", tok))
	slow := f.agentCfg("slow", "a", tok)
	slow.FaultTaskDelay = 3 * time.Second
	f.runAgent(slow)
	f.waitOnline("fast1", "fast2", "slow")
	ctx := context.Background()
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "all", Kind: "ping", Timeout: "20s"})
	if err != nil {
		t.Fatal(err)
	}
	// The fast nodes' outcomes are in while the slow one is still pending.
	var rep messages.TaskReport
	poll.Until(t, 10*time.Second, "fast results", func() bool {
		rep, _ = f.cli.Report(ctx, run.TaskID, 0)
		r := byNode(rep)
		return r["fast1"].Outcome == "ok" && r["fast2"].Outcome == "ok"
	})
	if r := byNode(rep)["slow"]; !r.Pending && r.Outcome == "ok" && r.DurationMS < 3000 {
		t.Fatalf("slow node was not slow: %+v", r)
	}
	rep, err = f.cli.Wait(ctx, run.TaskID)
	if err != nil || byNode(rep)["slow"].Outcome != messages.OutcomeOK {
		t.Fatalf("slow node: %+v %v", rep, err)
	}
}

func TestBadInputIsRefusedAndCounted(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.MaxMessageBytes = 4096 })
	tok := f.token(true, "1h")
	a1 := f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	nc := f.cli.Conn()

	tests := []struct {
		name, subject string
		data          []byte
		code          string
	}{
		{"garbage", messages.APISubject(messages.APIRun), []byte("{not json"), messages.CodeBadRequest},
		{"trailing", messages.APISubject(messages.APIStatus), []byte(`{"v":1} {"v":1}`), messages.CodeBadRequest},
		{"oversize", messages.APISubject(messages.APIRun), []byte(`{"v":1,"target":"` + strings.Repeat("x", 5000) + `"}`), messages.CodeTooLarge},
		{"wrong version", messages.APISubject(messages.APIStatus), []byte(`{"v":99}`), messages.CodeBadVersion},
		{"unknown verb", messages.APISubject("frobnicate"), []byte(`{"v":1}`), messages.CodeUnknownKind},
		{"missing field", messages.APISubject(messages.APIRun), []byte(`{"v":1,"kind":"ping"}`), messages.CodeBadRequest},
		{"bad selector", messages.APISubject(messages.APIRun), []byte(`{"v":1,"kind":"ping","target":"a.b"}`), messages.CodeBadRequest},
		{"bad sync", messages.SyncSubject("n1"), []byte(`[]`), messages.CodeBadRequest},
	}
	// A node's requests are answered only in its own inbox.
	errs := make(chan error, 4)
	asNode, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(a1.cfg.StateDir, "identity.seed"), errs,
		nats.CustomInboxPrefix(messages.NodeInbox("n1")))
	if err != nil {
		t.Fatal(err)
	}
	defer asNode.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := nc
			if strings.HasPrefix(tt.subject, messages.SyncPrefix) {
				conn = asNode
			}
			m, err := conn.Request(tt.subject, tt.data, 5*time.Second)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			e, err := messages.Decode[messages.ErrorReply](m.Data, 0)
			if err != nil || e.Code != tt.code || e.Error == "" {
				t.Fatalf("reply %s, want code %s", m.Data, tt.code)
			}
		})
	}
	// Heartbeats have no reply: they are counted.
	raw, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(a1.cfg.StateDir, "identity.seed"), errs)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Publish(messages.HeartbeatSubject("n1"), []byte(`{"v":1,"cluster":"Not Valid"}`))
	raw.Flush()
	poll.Until(t, 5*time.Second, "refused heartbeat counted", func() bool {
		return strings.Contains(scrape(t, f), `mgn_messages_refused_total{kind="heartbeat",reason="bad_request"} 1`)
	})

	// A malformed task reaches the agent: it is refused, counted, and the
	// controller gets a rejected outcome for the id it could read.
	answers, err := nc.SubscribeSync(messages.ResultSubject("n1"))
	if err != nil {
		t.Fatal(err)
	}
	nc.Publish(messages.TaskSubject("n1"), []byte(`{"v":2,"id":"tbadversion","kind":"ping"}`))
	nc.Publish(messages.TaskSubject("n1"), []byte(`\x00\x01 binary`))
	poll.Until(t, 5*time.Second, "agent refusals", func() bool { return a1.a.Refused() == 2 })
	m, err := answers.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no rejected result: %v", err)
	}
	got, err := messages.Decode[messages.Result](m.Data, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Outcome != messages.OutcomeUnknown || got.Reason != messages.ReasonRejected || !strings.Contains(string(got.Output), "version") {
		t.Fatalf("rejected result: %+v", got)
	}
	// Everything still works.
	rep := f.run(messages.RunRequest{Target: "n1", Kind: "ping"})
	if rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("after bad input: %+v", rep.Results)
	}
}

func scrape(t *testing.T, f *fleet) string {
	t.Helper()
	resp, err := http.Get(f.c.Info().HTTPURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestHealthzAndMetrics(t *testing.T) {
	f := newFleet(t, nil)
	resp, err := http.Get(f.c.Info().HTTPURL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	f.run(messages.RunRequest{Target: "all", Kind: "ping"})
	m := scrape(t, f)
	for _, want := range []string{`mgn_nodes{state="online"} 1`, `mgn_task_outcomes_total{outcome="ok"} 1`, "mgn_task_duration_seconds_bucket"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	cfg := f.agentCfg("n1", "a", tok)
	f.runAgent(cfg)
	f.waitOnline("n1")
	first := f.run(messages.RunRequest{Target: "n1", Kind: "ping"})
	f.stop()
	f.start()
	// The registry, the token and the task history came back.
	f.waitOnline("n1") // the agent reconnected by itself
	rep, err := f.cli.Wait(context.Background(), first.TaskID)
	if err != nil || !rep.Done || rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("history after restart: %+v %v", rep, err)
	}
	f.runAgent(f.agentCfg("n2", "b", tok))
	f.waitOnline("n2")
}

// Another controller on the same data dir is refused.
func TestDataDirLock(t *testing.T) {
	f := newFleet(t, nil)
	o := f.opts
	_, err := controller.Start(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second controller on one data dir: %v", err)
	}
}

// Large fleets are read page by page: neither the fleet view nor a task
// report has to fit in one message.
func TestPaging(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	for _, n := range []struct{ name, cluster string }{{"n1", "a"}, {"n2", "a"}, {"n3", "b"}} {
		f.runAgent(f.agentCfg(n.name, n.cluster, tok))
	}
	f.waitOnline("n1", "n2", "n3")
	rep := f.run(messages.RunRequest{Target: "all", Kind: "ping"})
	nc := f.cli.Conn()
	var names []string
	for off := 0; ; {
		m, err := nc.Request(messages.APISubject(messages.APIStatus), messages.MustEncode(&messages.StatusRequest{V: 1, Offset: off, Limit: 1}), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		st, err := messages.Decode[messages.StatusReply](m.Data, 0)
		if err != nil || len(st.Nodes) != 1 || st.Total != 3 || st.Summary.Online != 3 {
			t.Fatalf("page at %d: %+v %v", off, st, err)
		}
		// Each page has the cluster line of its nodes, and no other.
		if len(st.Clusters) != 1 || st.Clusters[0].Name != st.Nodes[0].Cluster {
			t.Fatalf("page at %d: clusters %+v for node %s of %q", off, st.Clusters, st.Nodes[0].Name, st.Nodes[0].Cluster)
		}
		names = append(names, st.Nodes[0].Name)
		if st.NextOffset == 0 {
			break
		}
		off = st.NextOffset
	}
	if strings.Join(names, ",") != "n1,n2,n3" {
		t.Fatalf("pages: %v", names)
	}
	// The client keeps one line per cluster across pages.
	all, err := f.cli.Status(context.Background())
	if err != nil || len(all.Clusters) != 2 || all.Clusters[0].Name != "a" || all.Clusters[1].Name != "b" {
		t.Fatalf("status clusters: %+v %v", all.Clusters, err)
	}
	m, err := nc.Request(messages.APISubject(messages.APITaskWait), messages.MustEncode(&messages.TaskWaitRequest{V: 1, TaskID: rep.TaskID, Offset: 2, Limit: 1}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := messages.Decode[messages.TaskReport](m.Data, 0)
	if err != nil || len(tr.Results) != 1 || tr.Results[0].Node != "n3" || tr.Total != 3 || tr.NextOffset != 0 {
		t.Fatalf("task page: %+v %v", tr, err)
	}
}

// Continuous monitoring: sweeps run by themselves, each lands in the report
// history, layer changes are announced, and /metrics carries the layers.
func TestSweepsRunByThemselves(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = 300 * time.Millisecond })
	events := f.events("layer_state")
	tok := f.token(true, "1h")
	cfg := f.agentCfg("n1", "a", tok)
	// Only what this machine surely has: the host layer, thresholds that
	// cannot trip.
	cfg.Settings = map[string]string{"METAGN_HOST_CPU_WARN_PCT": "100", "METAGN_HOST_CPU_FAIL_PCT": "100",
		"METAGN_HOST_MEM_WARN_PCT": "100", "METAGN_HOST_MEM_FAIL_PCT": "100", "METAGN_HOST_DISK_WARN_PCT": "100", "METAGN_HOST_DISK_FAIL_PCT": "100"}
	f.runAgent(cfg)
	f.waitOnline("n1")
	ctx := context.Background()
	var first messages.Report
	poll.Until(t, 30*time.Second, "a sweep's report", func() bool {
		r, err := f.cli.LastReport(ctx)
		first = r
		return err == nil
	})
	poll.Until(t, 30*time.Second, "a later sweep", func() bool {
		r, err := f.cli.LastReport(ctx)
		return err == nil && r.Timestamp.After(first.Timestamp)
	})
	// Every layer is announced the first time it is not healthy (here the
	// network layer: no tailscaled on a test machine).
	select {
	case ev := <-events:
		if ev.Layer == "" || ev.To == "" || ev.From == "" || ev.Cluster != "a" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no layer_state event")
	}
	st, err := f.cli.Status(ctx)
	if err != nil || st.Nodes[0].Layers["host"] != messages.Healthy || st.Nodes[0].LastVerified.IsZero() {
		t.Fatalf("status layers: %+v %v", st.Nodes, err)
	}
	m := scrape(t, f)
	for _, want := range []string{`mgn_layer_status{cluster="a",layer="host",status="healthy"} 1`, `mgn_checks{cluster="a",layer="host",status="pass"} 3`, "mgn_verify_duration_seconds_count", `mgn_check_duration_seconds_bucket{cluster="a",layer="host"`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// An agent that dies mid-task and never comes back is reported offline
// (it stopped beating), not timed_out (a task that ran too long).
func TestAgentDeadMidTaskIsOffline(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	a := f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "sleep", Args: json.RawMessage(`{"duration":"30s"}`), Timeout: "2s"})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the task started", func() bool {
		st, _ := f.cli.Status(ctx)
		return len(st.Nodes) == 1 && len(st.Nodes[0].Running) == 1
	})
	time.Sleep(300 * time.Millisecond) // past the agent's started acknowledgement (ackAfter)
	a.stop()
	rep, err := f.cli.Wait(ctx, run.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Results[0]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonOffline || !strings.Contains(string(r.Output), "heartbeats") {
		t.Fatalf("a task whose node died: %+v %s", r, r.Output)
	}
}

// A data dir readable by others is made private at start.
func TestDataDirIsMadePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "controller")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	newFleet(t, func(o *controller.Options) { o.DataDir = dir })
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %04o after start, want 0700", fi.Mode().Perm())
	}
}
