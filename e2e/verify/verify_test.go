// Package verify tests fleet verification end to end against the test
// world: a controller and agents (in process, real NATS), a real
// kube-apiserver seeded like GuildNet, real Headscale with a tsnet node per
// agent (so the network checks ask a real tailscaled LocalAPI), and the
// RethinkDB and host-app stand-ins. It runs inside a loopback-only network
// namespace (TestMain re-executes itself under unshare -n).
package verify

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/bundle"
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

const secretPassword = "s3cr3t-Pa55word-planted"

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

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
}

type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
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
		// Secrets the agent knows: none may leave the node.
		"TS_AUTHKEY":     w.authKey,
		"RETHINKDB_PASS": secretPassword,
	}
	// The machine running the tests may be busy: host thresholds are not
	// what this test is about.
	for _, what := range []string{"CPU", "MEM", "DISK"} {
		w.settings["METAGN_HOST_"+what+"_WARN_PCT"] = "100"
		w.settings["METAGN_HOST_"+what+"_FAIL_PCT"] = "100"
	}
	w.opts = controller.Options{DataDir: filepath.Join(w.dir, "controller"), Listen: "127.0.0.1:0",
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
	}
	if w.c != nil {
		w.c.Close()
	}
}

// dumpDERPLogs prints the DERP lines of each tsnet node's log, to tell
// why a node could not reach its relay.
func (w *world) dumpDERPLogs(t *testing.T) {
	for name := range w.agents {
		b, err := os.ReadFile(filepath.Join(w.dir, "ts-"+name, "logs", "tsnet.log"))
		if err != nil {
			t.Logf("%s: tsnet log: %v", name, err)
			continue
		}
		var lines []string
		for line := range strings.Lines(string(b)) {
			if strings.Contains(strings.ToLower(line), "derp") {
				lines = append(lines, strings.TrimRight(line, "\n"))
			}
		}
		lines = lines[max(0, len(lines)-25):]
		t.Logf("%s: last DERP lines of its tsnet log:\n%s", name, strings.Join(lines, "\n"))
	}
}

// startAgent runs an agent whose network checks ask its own tsnet node.
func (w *world) startAgent(name, cluster, role string, extra map[string]string) {
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
	for k, v := range extra {
		settings[k] = v
	}
	tok, err := w.cli.TokenCreate(context.Background(), "1h", false, messages.TokenScope{})
	if err != nil {
		w.t.Fatal(err)
	}
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

func (w *world) waitState(name, state string) {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := w.cli.Status(context.Background())
		if err == nil {
			for _, n := range st.Nodes {
				if n.Name == name && n.State == state {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.t.Fatalf("%s never %s", name, state)
}

func (w *world) verify() messages.Report {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := w.cli.Verify(ctx, messages.VerifyRequest{})
	if err != nil {
		w.t.Fatal(err)
	}
	return rep
}

func layer(r messages.Report, name string) messages.LayerReport {
	for _, l := range r.Layers {
		if l.Name == name {
			return l
		}
	}
	return messages.LayerReport{}
}

func check(r messages.Report, name, node string) messages.CheckResult {
	for _, l := range r.Layers {
		for _, c := range l.Checks {
			if c.Name == name && (node == "" || c.Node == node) {
				return c
			}
		}
	}
	return messages.CheckResult{}
}

func dump(r messages.Report) string {
	var b strings.Builder
	for _, l := range r.Layers {
		b.WriteString("\n" + l.Name + " " + l.Status + " " + l.Reason)
		for _, c := range l.Checks {
			if c.Status != messages.CheckPass {
				b.WriteString("\n  " + c.Name + " " + c.Node + " " + c.Status + " " + c.Message)
			}
		}
	}
	return b.String()
}

func TestFleetVerification(t *testing.T) {
	w := newWorld(t)
	// Route approval (routes_approved against a real tsnet router) is tested
	// in checks/network_tailnet_test.go; a router among these agents
	// keeps its peers' DERP health warning up on this machine.
	w.startAgent("n1", "alpha", "controlplane", nil)
	w.startAgent("n2", "alpha", "worker", nil)
	w.startAgent("n3", "beta", "controlplane", nil)
	for _, n := range []string{"n1", "n2", "n3"} {
		w.waitState(n, messages.StateOnline)
	}
	ctx := context.Background()

	t.Run("healthy world", func(t *testing.T) {
		// A fresh tsnet node may report a transient health warning (its DERP
		// connection still coming up): poll until the world settles.
		var r messages.Report
		start := time.Now()
		for deadline := start.Add(60 * time.Second); ; {
			r = w.verify()
			if r.OverallStatus == messages.Healthy || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("verified %s after %s", r.OverallStatus, time.Since(start).Round(100*time.Millisecond))
		for _, l := range []string{"network", "host", "cluster", "database", "application"} {
			if got := layer(r, l).Status; got != messages.Healthy {
				t.Errorf("layer %s: %s%s", l, got, dump(r))
			}
		}
		if r.OverallStatus != messages.Healthy {
			w.dumpDERPLogs(t)
			t.Fatalf("overall %s%s", r.OverallStatus, dump(r))
		}
		// Each cluster is judged beside the fleet roll-up.
		if len(r.Clusters) != 2 || r.Clusters[0].Name != "alpha" || r.Clusters[1].Name != "beta" ||
			r.Clusters[0].OverallStatus != messages.Healthy || r.Clusters[1].OverallStatus != messages.Healthy || len(r.Clusters[0].Layers) != 5 {
			t.Errorf("clusters %+v", r.Clusters)
		}
		// Cluster checks ran once per cluster, on the controlplane agents.
		for _, c := range layer(r, "cluster").Checks {
			if c.Node == "n2" {
				t.Errorf("cluster check %s ran on the worker", c.Name)
			}
		}
	})

	faults := []struct {
		name        string
		apply, undo func() error
		check       string
		status      string
		mentions    string
		blocked     string // a dependent that must be skipped behind check
	}{
		{"node NotReady", func() error { return w.g.SetNodeReady(ctx, w.g.NodeNames[1], false) }, func() error { return w.g.SetNodeReady(ctx, w.g.NodeNames[1], true) },
			"nodes_ready", messages.CheckFail, w.g.NodeNames[1], ""},
		{"CoreDNS pods gone", func() error { return w.g.DeleteCoreDNSPods(ctx) }, func() error { return w.g.RestoreCoreDNS(ctx) },
			"coredns_running", messages.CheckFail, "kube-dns", ""},
		{"database refusing", func() error { w.rdb.SetRefuse(true); return nil }, func() error { w.rdb.SetRefuse(false); return nil },
			"rethinkdb_tcp", messages.CheckFail, w.rdb.Addr(), "rethinkdb_query"},
		{"database slow", func() error { w.rdb.SetLatency(300 * time.Millisecond); return nil }, func() error { w.rdb.SetLatency(0); return nil },
			"rethinkdb_query", messages.CheckWarn, "ms", ""},
		{"host app 502", func() error { w.app.SetStatus(502); return nil }, func() error { w.app.SetStatus(0); return nil },
			"hostapp_healthz", messages.CheckFail, "502", "hostapp_api_health"},
		{"operator unavailable", func() error { return w.g.SetOperatorAvailable(ctx, false) }, func() error { return w.g.SetOperatorAvailable(ctx, true) },
			"operator_available", messages.CheckFail, "workspace-operator", ""},
		{"headscale stopped", func() error { w.hs.Stop(); return nil }, func() error { return w.hs.Start(ctx) },
			"login_server_health", messages.CheckFail, "health", ""},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			if err := f.apply(); err != nil {
				t.Fatal(err)
			}
			// Some faults take a moment to reach the nodes (a route
			// unapproved on Headscale reaches the peer's netmap in ~1 s):
			// poll until the check sees it.
			var r messages.Report
			for deadline := time.Now().Add(20 * time.Second); ; {
				r = w.verify()
				if check(r, f.check, "").Status == f.status || time.Now().After(deadline) {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err := f.undo(); err != nil {
				t.Fatal(err)
			}
			c := check(r, f.check, "")
			if c.Status != f.status || !strings.Contains(c.Message, f.mentions) {
				t.Fatalf("%s: %s %q, want %s naming %q%s", f.check, c.Status, c.Message, f.status, f.mentions, dump(r))
			}
			if r.OverallStatus == messages.Healthy {
				t.Fatalf("overall healthy with %s", f.name)
			}
			if f.blocked != "" {
				if d := check(r, f.blocked, c.Node); d.Status != messages.CheckSkipped || d.BlockedBy != f.check {
					t.Fatalf("%s: %s blocked by %q, want skipped behind %s", f.blocked, d.Status, d.BlockedBy, f.check)
				}
			}
		})
	}

	t.Run("diagnose names the root cause, its fix, and bundles no secret", func(t *testing.T) {
		w.rdb.SetRefuse(true)
		defer w.rdb.SetRefuse(false)
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		res, err := w.cli.Diagnose(dctx, messages.DiagnoseRequest{Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		var found *diagnostics.Finding
		for i, f := range res.Diagnosis.Findings {
			if f.ID == "rethinkdb-connection-refused" {
				found = &res.Diagnosis.Findings[i]
			}
		}
		if found == nil || found.Suggestion == "" || found.Command == "" || !strings.HasPrefix(found.Docs, "docs/TROUBLESHOOTING.md#") {
			t.Fatalf("findings %+v", res.Diagnosis.Findings)
		}
		if len(res.Sections["n1"]) == 0 {
			t.Fatalf("no collector sections from n1: notes %v", res.Notes)
		}
		path := filepath.Join(w.dir, "bundle.tar.gz")
		if err := bundle.WriteFile(path, bundle.Contents{Node: "n1", Created: time.Now(), Sections: res.Sections["n1"], Diagnosis: &res.Diagnosis, Report: res.Report}); err != nil {
			t.Fatal(err)
		}
		raw := gunzip(t, path)
		for _, secret := range []string{w.authKey, secretPassword} {
			if strings.Contains(raw, secret) {
				t.Fatalf("bundle holds a secret %q", secret[:6])
			}
		}
	})

	t.Run("offline node is unknown with its reason", func(t *testing.T) {
		w.stopAgent("n2")
		w.waitState("n2", messages.StateOffline)
		r := w.verify()
		var n2 messages.NodeReport
		for _, n := range r.Nodes {
			if n.Name == "n2" {
				n2 = n
			}
		}
		if n2.Status != messages.Unknown || !strings.Contains(n2.Reason, "offline") {
			t.Fatalf("n2: %+v", n2)
		}
		if c := check(r, "network_checks", "n2"); c.Status != messages.CheckUnknown || c.Message != messages.ReasonOffline {
			t.Fatalf("n2 network: %+v", c)
		}
	})

	t.Run("custom check file with a bad entry names its line", func(t *testing.T) {
		path := filepath.Join(w.dir, "checks.yaml")
		os.WriteFile(path, []byte("checks:\n  - name: app_port\n    layer: app\n    type: tcp\n    address: 127.0.0.1:1\n  - name: broken\n    layer: app\n    type: nosuchtype\n"), 0o600)
		w.stopAgent("n3")
		w.startAgentAgain("n3", "beta", "controlplane", map[string]string{"METAGN_CUSTOM_CHECKS": path})
		w.waitState("n3", messages.StateOnline)
		r := w.verify()
		c := check(r, tasks.CustomChecksFileCheck, "n3")
		if c.Status != messages.CheckFail || !strings.Contains(c.Message, "checks.yaml:") {
			t.Fatalf("custom checks file: %+v%s", c, dump(r))
		}
	})

	t.Run("history survives a controller restart", func(t *testing.T) {
		before, err := w.cli.LastReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.stopController()
		w.startController()
		after, err := w.cli.LastReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !after.Timestamp.Equal(before.Timestamp) || after.OverallStatus != before.OverallStatus {
			t.Fatalf("last report after restart: %v %s, before %v %s", after.Timestamp, after.OverallStatus, before.Timestamp, before.OverallStatus)
		}
		st, err := w.cli.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.Name == "n1" && n.Layers["network"] == "" {
				t.Fatalf("status lost the per-layer view: %+v", n)
			}
		}
		if len(st.Clusters) != 2 || st.Clusters[0].OverallStatus == "" || st.Clusters[1].OverallStatus == "" {
			t.Fatalf("status lost the per-cluster view: %+v", st.Clusters)
		}
	})
}

// startAgentAgain restarts an enrolled agent (its state dir holds its
// identity) with other settings and a fresh tsnet node.
func (w *world) startAgentAgain(name, cluster, role string, extra map[string]string) {
	os.RemoveAll(filepath.Join(w.dir, "agent-"+name)) // a new identity: simplest way to re-enroll with new settings
	ctx := context.Background()
	w.cli.NodesRemove(ctx, name)
	os.RemoveAll(filepath.Join(w.dir, "ts-"+name))
	w.startAgent(name, cluster, role, extra)
}
