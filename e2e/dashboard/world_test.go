// Package dashboard tests the controller's web dashboard end to end in a
// real browser (Chromium from Debian's packages, driven by chromedp): a
// controller and agents in process (real NATS), against the test world —
// a real kube-apiserver seeded like GuildNet, real Headscale with a tsnet
// node per agent, and the RethinkDB and host-app stand-ins. It runs inside
// a loopback-only network namespace (TestMain re-executes itself under
// unshare -n), the browser with it.
package dashboard

import (
	"context"
	"net"
	"os"
	"os/exec"
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
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

func TestMain(m *testing.M) { testenv.MainInNetNS(m) }

// secretPassword is planted in the agents' settings: no page may show it.
const secretPassword = "s3cr3t-Pa55word-planted-dash"

type world struct {
	t        *testing.T
	dir      string
	kube     *testenv.Kube
	g        *testenv.GuildNet
	rdb      *rdbstandin.Server
	app      *hostappstandin.Server
	hs       *testenv.Headscale
	authKey  string
	opts     controller.Options
	c        *controller.Controller
	cli      *ctlclient.Client
	agents   map[string]*runningAgent
	settings map[string]string
	tokens   []string // join tokens handed out (secrets too)
}

type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// chromium returns the browser's path, or skips (fails with CI=true).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Skip(t, "chromium not installed: `make apt-deps` (hack/apt-deps.sh) installs Debian's chromium")
	return ""
}

// freePort picks a loopback port the controller's HTTP address keeps
// across a restart.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newWorld(t *testing.T) *world {
	testenv.Require(t, testenv.NeedKube, testenv.NeedHeadscale, testenv.NeedNetNS)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := &world{t: t, dir: t.TempDir(), agents: map[string]*runningAgent{}}
	var err error
	if w.kube, err = testenv.StartKube(ctx, testenv.KubeOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.kube.Stop)
	if w.g, err = testenv.SeedGuildNet(ctx, w.kube.RESTConfig(), testenv.SeedOptions{Nodes: 3, Workspaces: []string{"demo"}}); err != nil {
		t.Fatal(err)
	}
	if w.rdb, err = rdbstandin.Start(rdbstandin.Options{Password: secretPassword, Databases: map[string][]string{"org_guildnet__main": {"_schemas", "_audit", "_info"}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.rdb.Close() })
	if w.app, err = hostappstandin.Start(hostappstandin.Options{Clusters: []hostappstandin.Cluster{{ID: "c1", Name: "alpha", Status: "ok"}, {ID: "c2", Name: "beta", Status: "ok"}}, Kube: w.g.Clientset}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.app.Close)
	ca := filepath.Join(w.dir, "hostapp-ca.pem")
	if err := w.app.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	if w.hs, err = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.hs.Close)
	u, err := w.hs.CreateUser(ctx, "guildnet")
	if err != nil {
		t.Fatal(err)
	}
	if w.authKey, err = w.hs.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.settings = map[string]string{
		"KUBECONFIG":           w.kube.KubeconfigPath(),
		"RETHINKDB_ADDR":       w.rdb.Addr(),
		"METAGN_RDB_DATABASES": "org_guildnet__main",
		"HOSTAPP_URL":          w.app.URL(),
		"METAGN_HOSTAPP_CA":    ca,
		"TS_LOGIN_SERVER":      w.hs.URL(),
		// The world has no cluster DNS to ask for dns_resolution's default
		// name (kubernetes.default.svc.cluster.local).
		"METAGN_DNS_NAME": "localhost",
		"TS_AUTHKEY":      w.authKey,
		"RETHINKDB_PASS":  secretPassword,
	}
	for _, what := range []string{"CPU", "MEM", "DISK"} {
		w.settings["METAGN_HOST_"+what+"_WARN_PCT"] = "100"
		w.settings["METAGN_HOST_"+what+"_FAIL_PCT"] = "100"
	}
	w.opts = controller.Options{DataDir: filepath.Join(w.dir, "controller"), Listen: "127.0.0.1:0", HTTP: freePort(t),
		HeartbeatInterval: 200 * time.Millisecond, SweepInterval: -1, Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))}
	w.startController()
	t.Cleanup(w.stopController)
	return w
}

func (w *world) startController() {
	w.t.Helper()
	c, err := controller.Start(context.Background(), w.opts)
	if err != nil {
		w.t.Fatal(err)
	}
	w.c = c
	w.opts.Listen = strings.TrimPrefix(c.Info().NATSURL, "nats://")
	if w.cli, err = ctlclient.Dial(w.opts.DataDir); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) stopController() {
	if w.cli != nil {
		w.cli.Close()
		w.cli = nil
	}
	if w.c != nil {
		w.c.Close()
		w.c = nil
	}
}

// startAgent runs an agent whose network checks ask its own tsnet node.
func (w *world) startAgent(name, cluster, role string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: w.hs.URL(), AuthKey: w.authKey,
		Hostname: name, Dir: filepath.Join(w.dir, "ts-"+name), AcceptRoutes: true})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { srv.Close() })
	lc, err := srv.LocalClient()
	if err != nil {
		w.t.Fatal(err)
	}
	reg, err := tasks.NewRegistry(tasks.Ping{}, tasks.FactsTask{}, tasks.Verify{Tailscale: lc}, tasks.Diagnose{})
	if err != nil {
		w.t.Fatal(err)
	}
	settings := config.Settings{}
	for k, v := range w.settings {
		settings[k] = v
	}
	tok, err := w.cli.TokenCreate(context.Background(), "1h", false, messages.TokenScope{})
	if err != nil {
		w.t.Fatal(err)
	}
	w.tokens = append(w.tokens, tok.Token)
	a, err := agent.New(agent.Config{ControllerURL: w.c.Info().NATSURL, Token: tok.Token, Name: name, Cluster: cluster, Role: role,
		StateDir: filepath.Join(w.dir, "agent-"+name), Settings: settings, Tasks: reg, Version: "test",
		Log: zaptest.NewLogger(w.t, zaptest.Level(zap.WarnLevel)).Named(name)})
	if err != nil {
		w.t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: acancel, done: make(chan struct{})}
	go func() { defer close(ra.done); a.Run(actx) }()
	w.agents[name] = ra
	w.t.Cleanup(func() { w.stopAgent(name) })
}

func (w *world) stopAgent(name string) {
	if ra := w.agents[name]; ra != nil {
		ra.cancel()
		<-ra.done
		delete(w.agents, name)
	}
}

func (w *world) waitOnline(names ...string) {
	w.t.Helper()
	for _, name := range names {
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := w.cli.Status(context.Background())
			if err == nil && state(st, name) == messages.StateOnline {
				break
			}
			if time.Now().After(deadline) {
				w.t.Fatalf("%s never online", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func state(st messages.StatusReply, name string) string {
	for _, n := range st.Nodes {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

// verifyUntil verifies until the report says want overall (a fresh tsnet
// node may show a transient warning), or the deadline.
func (w *world) verifyUntil(want string, d time.Duration) messages.Report {
	w.t.Helper()
	var r messages.Report
	for deadline := time.Now().Add(d); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var err error
		r, err = w.cli.Verify(ctx, messages.VerifyRequest{})
		cancel()
		if err != nil {
			w.t.Fatal(err)
		}
		if r.OverallStatus == want || time.Now().After(deadline) {
			return r
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// verifyAsync starts a verification, as a sweep would, and lets the test
// watch the page meanwhile.
func (w *world) verifyAsync() {
	cli, t := w.cli, w.t
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := cli.Verify(ctx, messages.VerifyRequest{}); err != nil {
			t.Logf("verify: %v", err)
		}
	}()
}

// secrets are what no page may contain.
func (w *world) secrets() []string {
	out := []string{secretPassword, w.authKey}
	out = append(out, w.tokens...)
	if b, err := os.ReadFile(filepath.Join(w.opts.DataDir, "admin.seed")); err == nil {
		out = append(out, strings.TrimSpace(string(b)))
	}
	return out
}
