package controller_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// fleet is a controller plus in-process agents, all real: embedded NATS,
// JetStream on disk, agents on their own TCP connections.
type fleet struct {
	t    *testing.T
	dir  string
	opts controller.Options
	c    *controller.Controller
	cli  *ctlclient.Client
}

func newFleet(t *testing.T, mod func(*controller.Options)) *fleet {
	t.Helper()
	f := &fleet{t: t, dir: t.TempDir()}
	f.opts = controller.Options{
		DataDir:           filepath.Join(f.dir, "controller"),
		Listen:            "127.0.0.1:0",
		HTTP:              "127.0.0.1:0",
		HeartbeatInterval: 100 * time.Millisecond,
		Log:               zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named("controller"),
	}
	if mod != nil {
		mod(&f.opts)
	}
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fleet) start() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := controller.Start(ctx, f.opts)
	if err != nil {
		f.t.Fatalf("start controller: %v", err)
	}
	f.c = c
	// A restart keeps the address, as a real deployment's would.
	f.opts.Listen = strings.TrimPrefix(c.Info().NATSURL, "nats://")
	if f.cli, err = ctlclient.Dial(f.opts.DataDir); err != nil {
		f.t.Fatalf("dial: %v", err)
	}
}

func (f *fleet) stop() {
	if f.cli != nil {
		f.cli.Close()
		f.cli = nil
	}
	if f.c != nil {
		f.c.Close()
		f.c = nil
	}
}

func (f *fleet) token(reusable bool, ttl string) string {
	f.t.Helper()
	rep, err := f.cli.TokenCreate(context.Background(), ttl, reusable, messages.TokenScope{})
	if err != nil {
		f.t.Fatalf("token: %v", err)
	}
	return rep.Token
}

type testAgent struct {
	a      *agent.Agent
	cfg    agent.Config
	cancel context.CancelFunc
	done   chan error
}

// agentCfg returns a config for node name with its own state dir.
func (f *fleet) agentCfg(name, cluster, token string) agent.Config {
	return agent.Config{
		ControllerURL: f.c.Info().NATSURL,
		Token:         token,
		Name:          name,
		Cluster:       cluster,
		StateDir:      filepath.Join(f.dir, "agents", name),
		Version:       "test",
		Tasks:         tasks.Builtin(),
		Log:           zaptest.NewLogger(f.t, zaptest.Level(zap.InfoLevel)).Named(name),
	}
}

// runAgent starts an agent and returns once Run is under way.
func (f *fleet) runAgent(cfg agent.Config) *testAgent {
	f.t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		f.t.Fatalf("agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{a: a, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- a.Run(ctx) }()
	f.t.Cleanup(ta.stop)
	return ta
}

func (ta *testAgent) stop() {
	ta.cancel()
	<-ta.done
	ta.done <- nil // let a second stop return at once
}

func (f *fleet) state(name string) string {
	st, err := f.cli.Status(context.Background())
	if err != nil {
		f.t.Fatalf("status: %v", err)
	}
	for _, n := range st.Nodes {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

func (f *fleet) waitOnline(names ...string) {
	f.t.Helper()
	for _, n := range names {
		poll.Until(f.t, 15*time.Second, n+" online", func() bool { return f.state(n) == messages.StateOnline })
	}
}

// run issues a task and waits for its report.
func (f *fleet) run(req messages.RunRequest) messages.TaskReport {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := f.cli.Run(ctx, req)
	if err != nil {
		f.t.Fatalf("run %+v: %v", req, err)
	}
	report, err := f.cli.Wait(ctx, rep.TaskID)
	if err != nil {
		f.t.Fatalf("wait %s: %v", rep.TaskID, err)
	}
	return report
}

func byNode(r messages.TaskReport) map[string]messages.NodeResult {
	m := map[string]messages.NodeResult{}
	for _, x := range r.Results {
		m[x.Node] = x
	}
	return m
}

func newAgent(cfg agent.Config) (*agent.Agent, error) { return agent.New(cfg) }

// runAgent starts an in-process agent until the test ends.
func runAgent(tb testing.TB, cfg agent.Config) *agent.Agent {
	tb.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	return a
}

// events subscribes to the controller's events of kind for the rest of the
// test, buffering up to 64.
func (f *fleet) events(kind string) <-chan messages.Event {
	f.t.Helper()
	events := make(chan messages.Event, 64)
	sub, err := f.cli.Conn().Subscribe(messages.EventSubject(kind), func(m *nats.Msg) {
		if ev, err := messages.Decode[messages.Event](m.Data, 0); err == nil {
			select {
			case events <- ev:
			default: // a test that stopped reading does not block the connection
			}
		}
	})
	if err != nil {
		f.t.Fatalf("subscribe to %s events: %v", kind, err)
	}
	f.t.Cleanup(func() { sub.Unsubscribe() })
	return events
}
