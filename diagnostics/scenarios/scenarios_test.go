// Package scenarios is the scenario matrix of diagnostics: every fault
// knob of the test world (internal/testenv), alone and two at a time, run
// through the real checks and the built-in rules, against the root causes
// kept in diagnostics/testdata/scenarios.yaml. It runs in a loopback-only
// network namespace (the world's tailnet node needs one).
package scenarios

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talos "github.com/siderolabs/talos/pkg/machinery/client"
	"gopkg.in/yaml.v3"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
	"github.com/guildnet/metaguildnet/messages"
)

// One world for the package: the API server seeded like GuildNet.
var shared *testenv.Shared

const workspace = "demo"

func TestMain(m *testing.M) {
	testenv.RunInNetNS(func() int {
		shared = testenv.StartShared(testenv.SeedOptions{Nodes: 3, Workspaces: []string{workspace}})
		code := m.Run()
		shared.Stop()
		return code
	})
}

// table is diagnostics/testdata/scenarios.yaml.
type table struct {
	Knobs []knobSpec `yaml:"knobs"`
}

type knobSpec struct {
	Name      string   `yaml:"name"`
	Layer     string   `yaml:"layer"`
	Causes    []string `yaml:"causes"`
	Title     string   `yaml:"title"`
	Hides     []string `yaml:"hides"`
	Explains  []string `yaml:"explains"`
	Exclusive []string `yaml:"exclusive"`
}

func loadTable(t *testing.T, kb *rules.KB) table {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "scenarios.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tb table
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&tb); err != nil {
		t.Fatalf("scenarios.yaml: %v", err)
	}
	names := map[string]bool{}
	for _, k := range tb.Knobs {
		names[k.Name] = true
	}
	for _, k := range tb.Knobs {
		for _, c := range k.Causes {
			if kb.Rule(c) == nil {
				t.Fatalf("scenarios.yaml: knob %s: cause %q is not a rule", k.Name, c)
			}
		}
		for _, h := range slices.Concat(k.Hides, k.Explains, k.Exclusive) {
			if !names[h] {
				t.Fatalf("scenarios.yaml: knob %s: %q is not a knob", k.Name, h)
			}
		}
	}
	return tb
}

// world is the running world with the stand-ins the knobs turn.
type world struct {
	t        *testing.T
	gn       *testenv.GuildNet
	settings config.Settings
	rdb      *rdbstandin.Server
	app      *hostappstandin.Server
	appOpts  hostappstandin.Options
	caPath   string
	home     string
	// Talos: the apid stand-in (one control-plane node talosCP, one
	// worker talosWorker) and the talosconfig TALOSCONFIG names.
	talos     *talosstandin.Server
	talosOpts talosstandin.Options
	talosCfg  string
	// The tailnet: Headscale and a tsnet node whose LocalClient the
	// network checks ask (nil: tailscaled's socket in TS_SOCKET).
	hs *testenv.Headscale
	lc checks.LocalAPI
	ts checks.LocalAPI
	// The router: another tsnet node advertising checks.DefaultTSRoutes,
	// its Headscale node id (route-unapproved takes its approvals away).
	routerID uint64
}

// knob is a fault: apply it, revert it.
type knob struct {
	apply, revert func(ctx context.Context, w *world) error
}

func (w *world) restartHostApp() error {
	s, err := hostappstandin.Start(w.appOpts)
	if err != nil {
		return err
	}
	w.app = s
	return s.WriteCA(w.caPath)
}

// startTalos starts the apid stand-in (on talosOpts.Addr once known),
// writes its talosconfig and bootstraps etcd, as a set-up cluster is.
func (w *world) startTalos(ctx context.Context) error {
	s, err := talosstandin.Start(w.talosOpts)
	if err != nil {
		return err
	}
	w.talos = s
	if err := s.WriteTalosconfig(w.talosCfg); err != nil {
		return err
	}
	c, err := talos.New(ctx, talos.WithConfigFromFile(w.talosCfg))
	if err != nil {
		return fmt.Errorf("talos client: %w", err)
	}
	defer c.Close()
	if err := c.Bootstrap(talos.WithNode(ctx, talosCP), &machineapi.BootstrapRequest{}); err != nil {
		return fmt.Errorf("talos bootstrap: %w", err)
	}
	return nil
}

// The Talos nodes of the world.
const (
	talosCP     = "127.0.0.1"
	talosWorker = "127.0.0.2"
)

// waitRoutesGone polls this node's status until no peer carries any of
// checks.DefaultTSRoutes (in PrimaryRoutes or AllowedIPs).
func (w *world) waitRoutesGone(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var carried []string
	for {
		st, err := w.ts.Status(ctx)
		if err == nil {
			carried = nil
			for _, p := range st.Peer {
				if p == nil {
					continue
				}
				var have []netip.Prefix
				if p.PrimaryRoutes != nil {
					have = append(have, p.PrimaryRoutes.AsSlice()...)
				}
				if p.AllowedIPs != nil {
					have = append(have, p.AllowedIPs.AsSlice()...)
				}
				for _, r := range strings.Split(checks.DefaultTSRoutes, ",") {
					if slices.Contains(have, netip.MustParsePrefix(r)) {
						carried = append(carried, p.HostName+" "+r)
					}
				}
			}
			if len(carried) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("peers still carry %v (status error %v): %w", carried, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var knobs = map[string]knob{
	"route-unapproved": {
		// Headscale approves none of the router's routes. Seen from this
		// node (not a router): no online peer carries them.
		// Apply waits until this node's view of its peers has taken the
		// change (Headscale pushes it in about a second).
		apply: func(ctx context.Context, w *world) error {
			if err := w.hs.ApproveRoutes(ctx, w.routerID); err != nil {
				return err
			}
			return w.waitRoutesGone(ctx)
		},
		revert: func(ctx context.Context, w *world) error {
			return w.hs.ApproveRoutes(ctx, w.routerID, strings.Split(checks.DefaultTSRoutes, ",")...)
		},
	},
	"talos-apid-down": {
		// apid is gone: its port refuses connections. Back, it is a new
		// machine on the same address (a new bundle, so a new talosconfig
		// at the same path, and etcd bootstrapped again).
		apply:  func(_ context.Context, w *world) error { w.talos.Close(); return nil },
		revert: func(ctx context.Context, w *world) error { return w.startTalos(ctx) },
	},
	"talos-etcd-failed": {
		apply: func(_ context.Context, w *world) error {
			w.talos.SetNodeServiceState(talosCP, "etcd", "Failed", false)
			return nil
		},
		revert: func(_ context.Context, w *world) error {
			w.talos.SetNodeServiceState(talosCP, "etcd", "", false)
			return nil
		},
	},
	"talos-kubelet-failed": {
		apply: func(_ context.Context, w *world) error {
			w.talos.SetNodeServiceState(talosWorker, "kubelet", "Failed", false)
			return nil
		},
		revert: func(_ context.Context, w *world) error {
			w.talos.SetNodeServiceState(talosWorker, "kubelet", "", false)
			return nil
		},
	},
	"tailscaled-down": {
		// The node's tailscaled is gone: its socket answers nothing.
		apply: func(_ context.Context, w *world) error {
			w.lc = nil
			w.settings["TS_SOCKET"] = filepath.Join(w.home, "tailscaled.sock")
			return nil
		},
		revert: func(_ context.Context, w *world) error {
			w.lc = w.ts
			delete(w.settings, "TS_SOCKET")
			return nil
		},
	},
	"login-server-down": {
		apply:  func(_ context.Context, w *world) error { w.hs.Stop(); return nil },
		revert: func(ctx context.Context, w *world) error { return w.hs.Start(ctx) },
	},
	"kubeconfig-unset": {
		apply: func(_ context.Context, w *world) error { delete(w.settings, "KUBECONFIG"); return nil },
		revert: func(_ context.Context, w *world) error {
			w.settings["KUBECONFIG"] = w.settings["SCENARIO_KUBECONFIG"]
			return nil
		},
	},
	"node-notready": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.SetNodeReady(ctx, testenv.NodeName(1), false) },
		revert: func(ctx context.Context, w *world) error { return w.gn.SetNodeReady(ctx, testenv.NodeName(1), true) },
	},
	"coredns-gone": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.DeleteCoreDNSPods(ctx) },
		revert: func(ctx context.Context, w *world) error { return w.gn.RestoreCoreDNS(ctx) },
	},
	"metallb-speaker-down": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.SetSpeakerAvailable(ctx, false) },
		revert: func(ctx context.Context, w *world) error { return w.gn.SetSpeakerAvailable(ctx, true) },
	},
	"metallb-pool-missing": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.SetMetalLBConfig(ctx, false, true) },
		revert: func(ctx context.Context, w *world) error { return w.gn.SetMetalLBConfig(ctx, true, true) },
	},
	"rethinkdb-pod-notready": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.SetRethinkPodReady(ctx, false) },
		revert: func(ctx context.Context, w *world) error { return w.gn.SetRethinkPodReady(ctx, true) },
	},
	"rethinkdb-down": {
		apply: func(_ context.Context, w *world) error { w.rdb.SetRefuse(true); return nil },
		revert: func(ctx context.Context, w *world) error {
			w.rdb.SetRefuse(false)
			return waitDial(ctx, w.rdb.Addr())
		},
	},
	"rethinkdb-queries-fail": {
		apply: func(_ context.Context, w *world) error {
			w.rdb.SetFailQueries("Cannot perform read: primary replica for shard not available")
			return nil
		},
		revert: func(_ context.Context, w *world) error { w.rdb.SetFailQueries(""); return nil },
	},
	"operator-down": {
		apply:  func(ctx context.Context, w *world) error { return w.gn.SetOperatorAvailable(ctx, false) },
		revert: func(ctx context.Context, w *world) error { return w.gn.SetOperatorAvailable(ctx, true) },
	},
	"hostapp-502": {
		apply:  func(_ context.Context, w *world) error { w.app.SetStatus(502); return nil },
		revert: func(_ context.Context, w *world) error { w.app.SetStatus(0); return nil },
	},
	"hostapp-stopped": {
		apply:  func(_ context.Context, w *world) error { w.app.Close(); return nil },
		revert: func(_ context.Context, w *world) error { return w.restartHostApp() },
	},
	"workspace-no-backend": {
		apply: func(ctx context.Context, w *world) error {
			return w.gn.SetWorkspaceBackends(ctx, "default", workspace, false, true)
		},
		revert: func(ctx context.Context, w *world) error {
			return w.gn.SetWorkspaceBackends(ctx, "default", workspace, true, true)
		},
	},
	"workspace-service-gone": {
		apply: func(ctx context.Context, w *world) error {
			return w.gn.SetWorkspaceBackends(ctx, "default", workspace, true, false)
		},
		revert: func(ctx context.Context, w *world) error {
			return w.gn.SetWorkspaceBackends(ctx, "default", workspace, true, true)
		},
	},
}

// waitDial polls until addr accepts a connection.
func waitDial(ctx context.Context, addr string) error {
	for {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not listening again: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// diagnose runs the cluster-scoped checks as the host app's node's agent
// would, and analyzes them.
func (w *world) diagnose(ctx context.Context, kb *rules.KB) (messages.Diagnosis, []messages.CheckResult) {
	catalog, err := checks.Catalog(w.settings)
	if err != nil {
		w.t.Fatal(err)
	}
	sel, err := checks.Select(catalog, checks.Selection{Scope: checks.ScopeCluster})
	if err != nil {
		w.t.Fatal(err)
	}
	env := &checks.Env{Node: "guildnet-node-1", Cluster: "guildnet", Role: "hostapp", Settings: w.settings}
	res := checks.RunChecks(ctx, env, sel, checks.RunOptions{})
	// The same node's network checks, through its tailnet node.
	netSel, err := checks.Select(catalog, checks.Selection{Layers: []string{messages.LayerNetwork}, Scope: checks.ScopeNode})
	if err != nil {
		w.t.Fatal(err)
	}
	opts := checks.RunOptions{}
	if w.lc != nil {
		opts.Clients = map[string]any{checks.TailscaleClientKey: w.lc}
	}
	res = append(res, checks.RunChecks(ctx, env, netSel, opts)...)
	d := diagnostics.Analyze(kb, []diagnostics.NodeInput{{Name: env.Node, Cluster: env.Cluster, Role: env.Role, Checks: res}}, time.Now())
	return d, res
}

func roots(d messages.Diagnosis) []string {
	var out []string
	for _, f := range d.Findings {
		out = append(out, f.ID)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

type scenario struct {
	knobs  []string
	expect []string
	titles []string
}

// scenarios: every knob alone, then every pair that may be combined.
func scenarios(tb table) []scenario {
	by := map[string]knobSpec{}
	for _, k := range tb.Knobs {
		by[k.Name] = k
	}
	hidden := func(ks []string, k string) bool {
		for _, o := range ks {
			if o != k && slices.Contains(by[o].Hides, k) {
				return true
			}
		}
		return false
	}
	explained := func(ks []string, k string) bool {
		for _, o := range ks {
			if o != k && slices.Contains(by[o].Explains, k) {
				return true
			}
		}
		return false
	}
	mk := func(ks ...string) scenario {
		s := scenario{knobs: ks}
		for _, k := range ks {
			if hidden(ks, k) || explained(ks, k) {
				continue
			}
			s.expect = append(s.expect, by[k].Causes...)
			if by[k].Title != "" {
				s.titles = append(s.titles, by[k].Title)
			}
		}
		slices.Sort(s.expect)
		s.expect = slices.Compact(s.expect)
		return s
	}
	var out []scenario
	for _, k := range tb.Knobs {
		out = append(out, mk(k.Name))
	}
	for i, a := range tb.Knobs {
		for _, b := range tb.Knobs[i+1:] {
			if slices.Contains(a.Exclusive, b.Name) || slices.Contains(b.Exclusive, a.Name) {
				continue
			}
			out = append(out, mk(a.Name, b.Name))
		}
	}
	return out
}

// TestScenarioMatrix applies each scenario's knobs to the world, runs the
// checks and the analysis, compares the root causes with the table, and
// reverts the knobs (waiting until the world is back to its baseline).
func TestScenarioMatrix(t *testing.T) {
	kube, gn := shared.Require(t)
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedNetNS)
	kb, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	tb := loadTable(t, kb)
	for _, k := range tb.Knobs {
		if _, ok := knobs[k.Name]; !ok {
			t.Fatalf("scenarios.yaml: knob %s has no apply/revert in this test", k.Name)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()

	dir := t.TempDir()
	rdb, err := rdbstandin.Start(rdbstandin.Options{Databases: map[string][]string{"org_demo__main": checks.OrgMetaTables}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	w := &world{t: t, gn: gn, rdb: rdb, caPath: filepath.Join(dir, "hostapp-ca.pem"), home: filepath.Join(dir, "home")}
	w.appOpts = hostappstandin.Options{Clusters: []hostappstandin.Cluster{{ID: "guildnet", Name: "guildnet", Status: hostappstandin.StatusOK}}, Kube: gn.Clientset}
	if err := w.restartHostApp(); err != nil {
		t.Fatal(err)
	}
	w.appOpts.Addr = strings.TrimPrefix(w.app.URL(), "https://") // restarts keep the address
	t.Cleanup(func() { w.app.Close() })
	if err := os.MkdirAll(w.home, 0o700); err != nil {
		t.Fatal(err)
	}
	// Talos: the apid stand-in, bootstrapped.
	w.talosOpts = talosstandin.Options{ClusterName: "guildnet", Nodes: []string{talosCP}, Workers: []string{talosWorker}}
	w.talosCfg = filepath.Join(dir, "talosconfig")
	if err := w.startTalos(ctx); err != nil {
		t.Fatal(err)
	}
	w.talosOpts.Addr = w.talos.Endpoint() // restarts keep the address
	t.Cleanup(func() { w.talos.Close() })
	// The tailnet: Headscale and this node's tsnet node.
	if w.hs, err = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: filepath.Join(dir, "headscale")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.hs.Close)
	u, err := w.hs.CreateUser(ctx, "cluster-guildnet")
	if err != nil {
		t.Fatal(err)
	}
	key, err := w.hs.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: w.hs.URL(), AuthKey: key, Hostname: "guildnet-node-1", Dir: filepath.Join(dir, "tsnet")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	// The router, its routes approved.
	var routes []netip.Prefix
	for _, r := range strings.Split(checks.DefaultTSRoutes, ",") {
		routes = append(routes, netip.MustParsePrefix(r))
	}
	router, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: w.hs.URL(), AuthKey: key, Hostname: "guildnet-router", Dir: filepath.Join(dir, "tsnet-router"), AdvertiseRoutes: routes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Close() })
	rn, err := w.hs.NodeByName(ctx, "guildnet-router")
	if err != nil {
		t.Fatal(err)
	}
	w.routerID = rn.ID
	if err := w.hs.ApproveRoutes(ctx, w.routerID, strings.Split(checks.DefaultTSRoutes, ",")...); err != nil {
		t.Fatal(err)
	}
	lc, err := node.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	w.ts, w.lc = lc, lc
	// A home without ~/.guildnet/kubeconfig and no in-cluster account, so
	// knob kubeconfig-unset leaves the agent with none.
	t.Setenv(testenv.CacheEnv, testenv.CacheDir()) // the servers' binaries stay where they are
	t.Setenv("HOME", w.home)
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	w.settings = config.Settings{
		"KUBECONFIG":          kube.KubeconfigPath(),
		"SCENARIO_KUBECONFIG": kube.KubeconfigPath(),
		"RETHINKDB_ADDR":      rdb.Addr(),
		"RETHINKDB_USER":      rdbstandin.DefaultUser,
		"HOSTAPP_URL":         w.app.URL(),
		"METAGN_HOSTAPP_CA":   w.caPath,
		"TS_LOGIN_SERVER":     w.hs.URL(),
		"TALOSCONFIG":         w.talosCfg,
		"TALOS_NODES":         talosCP + "," + talosWorker,
		// Every route must be carried by an online peer (the router).
		"TS_ROUTES": checks.DefaultTSRoutes,
		// No cluster DNS here: dns_resolution resolves localhost.
		"METAGN_DNS_NAME": "localhost",
	}

	// The baseline: no finding at all.
	settle := func(what string) {
		t.Helper()
		poll.UntilOK(t, 30*time.Second, what+": the world back at its baseline", func() error {
			d, res := w.diagnose(ctx, kb)
			if len(d.Findings) == 0 {
				return nil
			}
			var b strings.Builder
			for _, r := range res {
				fmt.Fprintf(&b, "\n  %s: %s %s", r.Name, r.Status, r.Message)
			}
			return fmt.Errorf("findings %v%s", roots(d), b.String())
		})
	}
	settle("baseline")

	var right, total, wrongFolds, missed int
	start := time.Now()
	for _, sc := range scenarios(tb) {
		name := strings.Join(sc.knobs, "+")
		scStart := time.Now()
		total++
		for _, k := range sc.knobs {
			if err := knobs[k].apply(ctx, w); err != nil {
				t.Fatalf("%s: apply %s: %v", name, k, err)
			}
		}
		d, res := w.diagnose(ctx, kb)
		got := roots(d)
		// A wrong fold: a cause the table expects, reported as another
		// finding's symptom.
		var wrong []string
		for _, f := range d.Findings {
			for _, s := range f.Symptoms {
				if slices.Contains(sc.expect, s.ID) && !slices.Contains(got, s.ID) {
					wrong = append(wrong, s.ID+" under "+f.ID)
				}
			}
		}
		var miss []string
		for _, e := range sc.expect {
			if !slices.Contains(got, e) {
				miss = append(miss, e)
			}
		}
		wrongFolds += len(wrong)
		missed += len(miss)
		var titles []string
		for _, f := range d.Findings {
			titles = append(titles, f.Title)
		}
		var badTitle []string
		for _, want := range sc.titles {
			if !slices.Contains(titles, want) {
				badTitle = append(badTitle, want)
			}
		}
		t.Logf("%-48s roots %v %q", name, got, titles)
		switch {
		case len(wrong) > 0:
			t.Errorf("%s: WRONG FOLD %v (roots %v, want %v)", name, wrong, got, sc.expect)
		case !slices.Equal(got, sc.expect) || len(badTitle) > 0:
			t.Errorf("%s: roots %v, want %v; titles %q (want %q)", name, got, sc.expect, titles, badTitle)
			for _, r := range res {
				if r.Status != messages.CheckPass {
					t.Logf("  %s: %s %s", r.Name, r.Status, r.Message)
				}
			}
		default:
			right++
		}
		for _, k := range slices.Backward(sc.knobs) {
			if err := knobs[k].revert(ctx, w); err != nil {
				t.Fatalf("%s: revert %s: %v", name, k, err)
			}
		}
		settle("after " + name)
		t.Logf("%-48s took %s", name, time.Since(scStart).Round(time.Millisecond))
	}
	t.Logf("%d scenarios (%d knobs alone, the rest in pairs) in %s", total, len(tb.Knobs), time.Since(start).Round(time.Millisecond))
	fmt.Printf("root causes right %d/%d, wrong folds %d, missed %d\n", right, total, wrongFolds, missed)
	if wrongFolds > 0 {
		t.Errorf("%d wrong folds", wrongFolds)
	}
}
