package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// gatedSleep is a "sleep" task that says when it started and finishes
// only when the test releases it.
type gatedSleep struct {
	started chan string
	release chan struct{}
}

func (*gatedSleep) Kind() string { return "sleep" }

func (g *gatedSleep) Run(ctx context.Context, env *tasks.Env, _ json.RawMessage) (tasks.Output, error) {
	g.started <- env.Node
	select {
	case <-g.release:
	case <-ctx.Done():
		return tasks.Output{}, ctx.Err()
	}
	return tasks.Output{Outcome: messages.OutcomeOK, Data: map[string]string{"gate": "released"}}, nil
}

// agentConns counts the agents connected to a server.
func agentConns(t *testing.T, ns *server.Server) int {
	t.Helper()
	cz, err := ns.Connz(&server.ConnzOptions{Limit: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ci := range cz.Conns {
		if strings.HasPrefix(ci.Name, "agent:") {
			n++
		}
	}
	return n
}

// TestClusterHeldResults: the results agents send after the active
// controller died and before another is active are held by the standbys
// (held.go) and settled by the new active controller as it activates, with
// no round trip to the agents; the agents that were connected to the dead
// controller send theirs as they reconnect, before any sync is answered.
func TestClusterHeldResults(t *testing.T) {
	// A lease long enough that every agent reconnects and answers before
	// it ages out: the test is about what happens in that window.
	h := newHAClusterWith(t, func(_ int, o *controller.Options) { o.Cluster.LeaseTTL = 6 * time.Second })
	act := h.active(30 * time.Second)
	sb := (act + 1) % 3
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	poll.Until(t, 30*time.Second, "token", func() bool {
		rep, err := h.cli[sb].TokenCreate(ctx, "1h", true, messages.TokenScope{})
		h.token = rep.Token
		return err == nil
	})
	gate := &gatedSleep{started: make(chan string, 16), release: make(chan struct{})}
	names := []string{"h1", "h2", "h3", "h4", "h5", "h6"}
	for _, n := range names {
		runAgent(t, agent.Config{
			ControllerURL: strings.Join(h.urls, ","), Token: h.token, Name: n,
			StateDir: filepath.Join(h.dir, "agents", n), Version: "test", Tasks: tasks.Builtin().With(gate),
			Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(n),
		})
	}
	poll.Until(t, 20*time.Second, "agents online", func() bool { return h.online(sb, names...) })
	h.noLeadership(act)

	var rr messages.RunReply
	poll.Until(t, 20*time.Second, "run accepted", func() bool {
		var err error
		rr, err = h.cli[sb].Run(ctx, messages.RunRequest{V: messages.Version, Target: "all", Kind: "sleep", Timeout: "60s"})
		return err == nil
	})
	for range names {
		select {
		case <-gate.started:
		case <-time.After(20 * time.Second):
			t.Fatal("not every agent started the task")
		}
	}
	onKilled := agentConns(t, h.c[act].Server())
	t0 := time.Now()
	h.c[act].Kill()
	h.c[act] = nil
	h.cli[act].Close()
	h.cli[act] = nil
	poll.Until(t, 10*time.Second, "every agent reconnected to a survivor", func() bool {
		n := 0
		for _, c := range h.c {
			if c != nil {
				n += agentConns(t, c.Server())
			}
		}
		return n == len(names)
	})
	// Each standby holds results from when it notices the lost peer
	// (watchRoutes, every 50 ms).
	for i, c := range h.c {
		if c != nil {
			poll.Until(t, 5*time.Second, fmt.Sprintf("standby %d holding results", i), c.Holding)
		}
	}
	close(gate.release)
	released := time.Since(t0)
	for i, c := range h.c {
		if c != nil && c.Active() {
			t.Fatalf("controller %d was active %v after the kill, before the agents answered: the lease should still be held", i, released)
		}
	}
	next := h.active(20 * time.Second)
	t.Logf("agents released %v after the kill (%d had been on the killed controller); controller %d active after %v",
		released.Round(time.Millisecond), onKilled, next, time.Since(t0).Round(time.Millisecond))
	if got := h.c[next].HeldSettled(); got != len(names) {
		t.Errorf("the new active controller settled %d outcomes from held results, want %d (every agent answered while no controller was active)", got, len(names))
	}
	var tr messages.TaskReport
	poll.Until(t, 20*time.Second, "task done", func() bool {
		var err error
		tr, err = h.cli[next].Report(ctx, rr.TaskID, time.Second)
		return err == nil && tr.Done
	})
	for _, r := range tr.Results {
		if r.Outcome != messages.OutcomeOK || !strings.Contains(string(r.Output), "released") {
			t.Errorf("%s: %s %s %s", r.Node, r.Outcome, r.Reason, r.Output)
		}
	}
	// The active controller hears the results itself: it does not hold
	// them again, though the lost peer is still gone.
	if h.c[next].Holding() {
		t.Error("the new active controller holds results")
	}
}

// TestAgentSendsUnsettledResultsOnReconnect: a result finished while the
// agent had no connection is published as soon as it reconnects, without
// waiting for a sync's answer (after a failover none comes until a
// controller is active, and the standbys holding results hear it). A
// bare NATS server takes the controller's place here: it answers no sync,
// so only the agent's own send can bring the result.
func TestAgentSendsUnsettledResultsOnReconnect(t *testing.T) {
	f := newFleet(t, nil)
	gate := &gatedSleep{started: make(chan string, 1), release: make(chan struct{})}
	cfg := f.agentCfg("u1", "", f.token(false, "1h"))
	cfg.Tasks = tasks.Builtin().With(gate)
	f.runAgent(cfg)
	f.waitOnline("u1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.cli.Run(ctx, messages.RunRequest{V: messages.Version, Target: "all", Kind: "sleep", Timeout: "60s"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not start the task")
	}
	listen := f.opts.Listen
	f.stop()
	close(gate.release) // finishes with no connection: the result waits in the journal

	host, port, _ := strings.Cut(listen, ":")
	var p int
	fmt.Sscan(port, &p)
	// The nonce lets the agent present its key (it accepts any).
	ns, err := server.NewServer(&server.Options{Host: host, Port: p, NoLog: true, NoSigs: true, AlwaysEnableNonce: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("bare server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan *nats.Msg, 4)
	if _, err := nc.ChanSubscribe(messages.ResultSubject("u1"), got); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	select {
	case m := <-got:
		r, err := messages.Decode[messages.Result](m.Data, 0)
		if err != nil || r.Outcome != messages.OutcomeOK {
			t.Fatalf("result %+v, %v", r, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not send its unsettled result on reconnecting")
	}
}
