// Package worldtest is the in-process test world the e2e/verify and
// e2e/dashboard tests share: a controller and agents in process (real
// NATS), a real kube-apiserver seeded like GuildNet, real Headscale with a
// tsnet node per agent (so the network checks ask a real tailscaled
// LocalAPI), and the RethinkDB and host-app stand-ins. Only tests import
// it; they run inside a loopback-only network namespace
// (testenv.MainInNetNS).
package worldtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// Options are what the two test worlds do differently.
type Options struct {
	// Password is the database password planted in the agents' settings
	// (and the stand-in's): no report, bundle or page may show it.
	Password string
	// HTTP gives the controller a dashboard on a loopback port it keeps
	// across a restart.
	HTTP bool
}

// World is one test world; its fields are what the tests break and ask.
type World struct {
	T        *testing.T
	Dir      string
	Kube     *testenv.Kube
	G        *testenv.GuildNet
	RDB      *rdbstandin.Server
	App      *hostappstandin.Server
	HS       *testenv.Headscale
	AuthKey  string
	Password string
	Opts     controller.Options
	C        *controller.Controller
	Cli      *ctlclient.Client
	Settings map[string]string // every agent's settings (StartAgent adds its extra)
	Tokens   []string          // join tokens handed out (secrets too)
	agents   map[string]*runningAgent
}

type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// FreePort picks a loopback port an address can keep across a restart.
func FreePort(t testing.TB) string {
	t.Helper()
	return freeport.Addr(t)
}

// New brings the world up (or skips, failing with CI=true, when the test
// environment is missing) and starts its controller; everything stops when
// the test ends.
func New(t *testing.T, o Options) *World {
	testenv.Require(t, testenv.NeedKube, testenv.NeedHeadscale, testenv.NeedNetNS)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := &World{T: t, Dir: t.TempDir(), Password: o.Password, agents: map[string]*runningAgent{}}
	var err error
	if w.Kube, err = testenv.StartKube(ctx, testenv.KubeOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Kube.Stop)
	if w.G, err = testenv.SeedGuildNet(ctx, w.Kube.RESTConfig(), testenv.SeedOptions{Nodes: 3, Workspaces: []string{"demo"}}); err != nil {
		t.Fatal(err)
	}
	if w.RDB, err = rdbstandin.Start(rdbstandin.Options{Password: o.Password, Databases: map[string][]string{"org_guildnet__main": {"_schemas", "_audit", "_info"}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.RDB.Close() })
	if w.App, err = hostappstandin.Start(hostappstandin.Options{Clusters: []hostappstandin.Cluster{{ID: "c1", Name: "alpha", Status: "ok"}, {ID: "c2", Name: "beta", Status: "ok"}}, Kube: w.G.Clientset}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.App.Close)
	ca := filepath.Join(w.Dir, "hostapp-ca.pem")
	if err := w.App.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	if w.HS, err = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.HS.Close)
	u, err := w.HS.CreateUser(ctx, "guildnet")
	if err != nil {
		t.Fatal(err)
	}
	if w.AuthKey, err = w.HS.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.Settings = map[string]string{
		"KUBECONFIG":           w.Kube.KubeconfigPath(),
		"RETHINKDB_ADDR":       w.RDB.Addr(),
		"METAGN_RDB_DATABASES": "org_guildnet__main",
		"HOSTAPP_URL":          w.App.URL(),
		"METAGN_HOSTAPP_CA":    ca,
		"TS_LOGIN_SERVER":      w.HS.URL(),
		// The world has no cluster DNS to ask for dns_resolution's default
		// name (kubernetes.default.svc.cluster.local).
		"METAGN_DNS_NAME": "localhost",
		// Secrets the agent knows: none may leave the node.
		"TS_AUTHKEY":     w.AuthKey,
		"RETHINKDB_PASS": o.Password,
	}
	// The machine running the tests may be busy: host thresholds are not
	// what these tests are about.
	for _, what := range []string{"CPU", "MEM", "DISK"} {
		w.Settings["METAGN_HOST_"+what+"_WARN_PCT"] = "100"
		w.Settings["METAGN_HOST_"+what+"_FAIL_PCT"] = "100"
	}
	w.Opts = controller.Options{DataDir: filepath.Join(w.Dir, "controller"), Listen: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SweepInterval: -1, Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))}
	if o.HTTP {
		w.Opts.HTTP = FreePort(t)
	}
	w.StartController()
	t.Cleanup(w.StopController)
	return w
}

// StartController starts the controller on the world's data dir (again,
// after StopController, on the same NATS address) and dials it as the
// operator.
func (w *World) StartController() {
	w.T.Helper()
	c, err := controller.Start(context.Background(), w.Opts)
	if err != nil {
		w.T.Fatal(err)
	}
	w.C = c
	w.Opts.Listen = strings.TrimPrefix(c.Info().NATSURL, "nats://")
	if w.Cli, err = ctlclient.Dial(w.Opts.DataDir); err != nil {
		w.T.Fatal(err)
	}
}

// StopController closes the operator's client and the controller.
func (w *World) StopController() {
	if w.Cli != nil {
		w.Cli.Close()
	}
	if w.C != nil {
		w.C.Close()
	}
	w.Cli, w.C = nil, nil
}

// StartAgent runs an agent whose network checks ask its own tsnet node,
// with the world's settings and extra on top.
func (w *World) StartAgent(name, cluster, role string, extra map[string]string) {
	w.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: w.HS.URL(), AuthKey: w.AuthKey,
		Hostname: name, Dir: filepath.Join(w.Dir, "ts-"+name), AcceptRoutes: true})
	if err != nil {
		w.T.Fatal(err)
	}
	w.T.Cleanup(func() { srv.Close() })
	lc, err := srv.LocalClient()
	if err != nil {
		w.T.Fatal(err)
	}
	reg, err := tasks.NewRegistry(tasks.Ping{}, tasks.FactsTask{}, tasks.Verify{Tailscale: lc}, tasks.Diagnose{})
	if err != nil {
		w.T.Fatal(err)
	}
	settings := config.Settings{}
	for k, v := range w.Settings {
		settings[k] = v
	}
	for k, v := range extra {
		settings[k] = v
	}
	tok, err := w.Cli.TokenCreate(context.Background(), "1h", false, messages.TokenScope{})
	if err != nil {
		w.T.Fatal(err)
	}
	w.Tokens = append(w.Tokens, tok.Token)
	a, err := agent.New(agent.Config{ControllerURL: w.C.Info().NATSURL, Token: tok.Token, Name: name, Cluster: cluster, Role: role,
		StateDir: filepath.Join(w.Dir, "agent-"+name), Settings: settings, Tasks: reg, Version: "test",
		Log: zaptest.NewLogger(w.T, zaptest.Level(zap.WarnLevel)).Named(name)})
	if err != nil {
		w.T.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: acancel, done: make(chan struct{})}
	go func() { defer close(ra.done); a.Run(actx) }()
	w.agents[name] = ra
	w.T.Cleanup(func() { w.StopAgent(name) })
}

// StopAgent stops a running agent and waits until it has.
func (w *World) StopAgent(name string) {
	if ra := w.agents[name]; ra != nil {
		ra.cancel()
		<-ra.done
		delete(w.agents, name)
	}
}

// Agents names the agents running now.
func (w *World) Agents() []string {
	var names []string
	for name := range w.agents {
		names = append(names, name)
	}
	return names
}

// WaitState waits up to 30 s for the controller to see the node in state.
func (w *World) WaitState(name, state string) {
	w.T.Helper()
	poll.Until(w.T, 30*time.Second, name+" "+state, func() bool {
		st, err := w.Cli.Status(context.Background())
		if err != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.Name == name && n.State == state {
				return true
			}
		}
		return false
	})
}

// Verify runs one verification sweep and returns its report.
func (w *World) Verify() messages.Report {
	w.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := w.Cli.Verify(ctx, messages.VerifyRequest{})
	if err != nil {
		w.T.Fatal(err)
	}
	return rep
}

// VerifyUntil verifies every `every` until done holds for the report (a
// fresh tsnet node may show a transient warning, a fault may take a moment
// to reach the nodes), or d has passed; it returns the last report either
// way, for the test to judge.
func (w *World) VerifyUntil(d, every time.Duration, done func(messages.Report) bool) messages.Report {
	w.T.Helper()
	for deadline := time.Now().Add(d); ; {
		r := w.Verify()
		if done(r) || time.Now().After(deadline) {
			return r
		}
		time.Sleep(every)
	}
}

// Secrets are what no report, bundle or page may contain: the database
// password, the pre-auth key, every join token and the admin seed.
func (w *World) Secrets() []string {
	out := []string{w.Password, w.AuthKey}
	out = append(out, w.Tokens...)
	if b, err := os.ReadFile(filepath.Join(w.Opts.DataDir, "admin.seed")); err == nil {
		out = append(out, strings.TrimSpace(string(b)))
	}
	return out
}
