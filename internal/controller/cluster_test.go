package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// scriptedVerify is a verify task whose checks the test sets: a host check
// that passes on every node, and a cluster check (nodes_ready) with the
// status in clusterCheck.
type scriptedVerify struct{ clusterCheck, hostCheck atomic.Value }

func newScriptedVerify(status string) *scriptedVerify {
	s := &scriptedVerify{}
	s.clusterCheck.Store(status)
	s.hostCheck.Store(messages.CheckPass)
	return s
}

func (*scriptedVerify) Kind() string { return "verify" }

func (s *scriptedVerify) Run(_ context.Context, env *tasks.Env, raw json.RawMessage) (tasks.Output, error) {
	args, err := messages.DecodeTaskArgs[messages.VerifyArgs](raw, 1<<20)
	if err != nil {
		return tasks.Output{}, fmt.Errorf("scripted verify: %w", err)
	}
	checks := []messages.CheckResult{}
	if args.Scope != messages.ScopeCluster {
		st := s.hostCheck.Load().(string)
		checks = append(checks, messages.CheckResult{Name: "host_disk", Layer: messages.LayerHost, Status: st, Passed: st == messages.CheckPass, Node: env.Node})
	}
	if args.Scope != messages.ScopeNode {
		st := s.clusterCheck.Load().(string)
		checks = append(checks, messages.CheckResult{Name: "nodes_ready", Layer: messages.LayerCluster, Status: st, Passed: st == messages.CheckPass,
			Message: "scripted " + st, Node: env.Node})
	}
	return tasks.Output{Outcome: messages.OutcomeOK, Data: &messages.VerifyOutput{V: messages.Version, Checks: checks}}, nil
}

func clusterStatuses(rep messages.Report) map[string]string {
	m := map[string]string{}
	for _, c := range rep.Clusters {
		for _, l := range c.Layers {
			m[c.Name+"/"+l.Name] = l.Status
		}
		m[c.Name] = c.OverallStatus
	}
	return m
}

// Two clusters, one failing: the report, the metrics, the events and the
// fleet view say which; a verification of one cluster then changes only
// that cluster's state and announces only its changes.
func TestPerClusterHealth(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = -1 })
	events := f.events("layer_state")
	tok := f.token(true, "1h")
	va, vb := newScriptedVerify(messages.CheckPass), newScriptedVerify(messages.CheckFail)
	for _, n := range []struct {
		name, cluster string
		task          *scriptedVerify
	}{{"a1", "a", va}, {"b1", "b", vb}} {
		cfg := f.agentCfg(n.name, n.cluster, tok)
		cfg.Tasks = tasks.Builtin().With(n.task)
		f.runAgent(cfg)
	}
	f.waitOnline("a1", "b1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	verify := func(req messages.VerifyRequest) messages.Report {
		t.Helper()
		rep, err := f.cli.Verify(ctx, req)
		if err != nil {
			t.Fatalf("verify %+v: %v", req, err)
		}
		return rep
	}
	// next returns the next layer_state event.
	next := func(what string) messages.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("no layer_state event: want %s", what)
		}
		return messages.Event{}
	}
	metricsHave := func(want ...string) {
		t.Helper()
		m := scrape(t, f)
		for _, w := range want {
			if !strings.Contains(m, w) {
				t.Errorf("metrics lack %q", w)
			}
		}
	}
	statusOf := func() map[string]messages.ClusterStatus {
		t.Helper()
		st, err := f.cli.Status(ctx)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		m := map[string]messages.ClusterStatus{}
		for _, c := range st.Clusters {
			m[c.Name] = c
		}
		if len(m) != 2 {
			t.Fatalf("status clusters: %+v", st.Clusters)
		}
		return m
	}

	// The whole fleet: b's cluster check fails.
	rep := verify(messages.VerifyRequest{})
	got := clusterStatuses(rep)
	for k, want := range map[string]string{"a": messages.Healthy, "a/host": messages.Healthy, "a/cluster": messages.Healthy,
		"b": messages.Unhealthy, "b/host": messages.Healthy, "b/cluster": messages.Unhealthy} {
		if got[k] != want {
			t.Errorf("report cluster %s = %q, want %s (%+v)", k, got[k], want, rep.Clusters)
		}
	}
	if rep.OverallStatus != messages.Unhealthy || len(rep.Clusters) != 2 {
		t.Errorf("fleet roll-up %s, clusters %+v", rep.OverallStatus, rep.Clusters)
	}
	// Only b's cluster layer was not healthy from the start.
	if ev := next("b's cluster layer unhealthy"); ev.Cluster != "b" || ev.Layer != messages.LayerCluster || ev.From != "none" || ev.To != messages.Unhealthy {
		t.Fatalf("event %+v", ev)
	}
	metricsHave(`mgn_layer_status{cluster="a",layer="cluster",status="healthy"} 1`, `mgn_layer_status{cluster="b",layer="cluster",status="unhealthy"} 1`,
		`mgn_layer_status{cluster="b",layer="host",status="healthy"} 1`, `mgn_checks{cluster="b",layer="cluster",status="fail"} 1`,
		`mgn_checks{cluster="a",layer="cluster",status="pass"} 1`, `mgn_check_duration_seconds_count{cluster="a",layer="host"} 1`)
	st := statusOf()
	if st["a"].OverallStatus != messages.Healthy || st["b"].OverallStatus != messages.Unhealthy || st["b"].Layers["cluster"] != messages.Unhealthy || st["b"].LastVerified.IsZero() {
		t.Fatalf("status clusters %+v", st)
	}

	// b recovers (to a warning) and a breaks; only a is verified, by
	// cluster and then by one of its nodes.
	vb.clusterCheck.Store(messages.CheckWarn)
	va.clusterCheck.Store(messages.CheckFail)
	rep = verify(messages.VerifyRequest{Cluster: "a"})
	if len(rep.Clusters) != 1 || rep.Clusters[0].Name != "a" || rep.Clusters[0].OverallStatus != messages.Unhealthy {
		t.Fatalf("verify --cluster a: clusters %+v", rep.Clusters)
	}
	if ev := next("a's cluster layer unhealthy"); ev.Cluster != "a" || ev.Layer != messages.LayerCluster || ev.From != messages.Healthy || ev.To != messages.Unhealthy {
		t.Fatalf("event %+v", ev)
	}
	va.clusterCheck.Store(messages.CheckPass)
	verify(messages.VerifyRequest{Node: "a1"})
	if ev := next("a's cluster layer healthy again"); ev.Cluster != "a" || ev.To != messages.Healthy {
		t.Fatalf("event %+v", ev)
	}
	st = statusOf()
	if st["b"].OverallStatus != messages.Unhealthy || st["b"].Layers["cluster"] != messages.Unhealthy || st["a"].OverallStatus != messages.Healthy {
		t.Fatalf("a verification of a changed b: %+v", st)
	}
	metricsHave(`mgn_layer_status{cluster="b",layer="cluster",status="unhealthy"} 1`, `mgn_checks{cluster="b",layer="cluster",status="fail"} 1`,
		`mgn_layer_status{cluster="a",layer="cluster",status="healthy"} 1`)

	// b's own verification sees the change. Events come in order from one
	// connection, so had a's verifications announced anything of b, it
	// would be here before this one — and this one would not come at all.
	verify(messages.VerifyRequest{Cluster: "b"})
	if ev := next("b's cluster layer degraded"); ev.Cluster != "b" || ev.Layer != messages.LayerCluster || ev.From != messages.Unhealthy || ev.To != messages.Degraded {
		t.Fatalf("event %+v", ev)
	}
	st = statusOf()
	if st["b"].OverallStatus != messages.Degraded || st["a"].OverallStatus != messages.Healthy {
		t.Fatalf("status clusters after verifying b: %+v", st)
	}
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}

	// After a restart whose newest report covered a alone, the fleet view
	// still has b's last state (from the report before).
	verify(messages.VerifyRequest{Cluster: "a"})
	f.stop()
	f.start()
	st = statusOf()
	if st["b"].OverallStatus != messages.Degraded || st["a"].OverallStatus != messages.Healthy {
		t.Fatalf("status clusters after a restart: %+v", st)
	}
}

// A verification of one node of a cluster judges the cluster's node layers
// with its other nodes' last statuses: a healthy node does not hide a
// failing one that was not verified this time.
func TestVerifyOneNodeKeepsItsClusterTruthful(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = -1 })
	tok := f.token(true, "1h")
	ok, bad := newScriptedVerify(messages.CheckPass), newScriptedVerify(messages.CheckPass)
	bad.hostCheck.Store(messages.CheckFail)
	for name, task := range map[string]*scriptedVerify{"a1": ok, "a2": bad} {
		cfg := f.agentCfg(name, "a", tok)
		cfg.Tasks = tasks.Builtin().With(task)
		f.runAgent(cfg)
	}
	f.waitOnline("a1", "a2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hostOfA := func(req messages.VerifyRequest) (report, view string) {
		t.Helper()
		rep, err := f.cli.Verify(ctx, req)
		if err != nil {
			t.Fatalf("verify %+v: %v", req, err)
		}
		st, err := f.cli.Status(ctx)
		if err != nil || len(st.Clusters) != 1 {
			t.Fatalf("status: %+v %v", st.Clusters, err)
		}
		return clusterStatuses(rep)["a/host"], st.Clusters[0].Layers["host"]
	}
	if rep, view := hostOfA(messages.VerifyRequest{}); rep != messages.Unhealthy || view != messages.Unhealthy {
		t.Fatalf("whole fleet: report %s, view %s", rep, view)
	}
	// The report says what it verified (a1 alone); the view keeps a2.
	if rep, view := hostOfA(messages.VerifyRequest{Node: "a1"}); rep != messages.Healthy || view != messages.Unhealthy {
		t.Fatalf("verify --node a1: report %s, view %s", rep, view)
	}
	bad.hostCheck.Store(messages.CheckPass)
	if rep, view := hostOfA(messages.VerifyRequest{Node: "a2"}); rep != messages.Healthy || view != messages.Healthy {
		t.Fatalf("verify --node a2 after its fix: report %s, view %s", rep, view)
	}
}

// argsVerify answers a cluster-scoped verify with one passing result per
// check it would run: the host app's checks when named, nodes_ready (and
// kube_api_ready, as a dependency of the host app's proxy check) unless
// excluded; it records the arguments each node got.
type argsVerify struct {
	mu   sync.Mutex
	args map[string]messages.VerifyArgs
}

func (*argsVerify) Kind() string { return "verify" }

func (a *argsVerify) Run(_ context.Context, env *tasks.Env, raw json.RawMessage) (tasks.Output, error) {
	args, err := messages.DecodeTaskArgs[messages.VerifyArgs](raw, 1<<20)
	if err != nil {
		return tasks.Output{}, err
	}
	checks := []messages.CheckResult{}
	if args.Scope == messages.ScopeCluster {
		a.mu.Lock()
		a.args[env.Node] = args
		a.mu.Unlock()
		names := args.Checks
		if len(names) == 0 {
			names = []string{"nodes_ready", "hostapp_healthz", "proxy_answers"}
		} else {
			names = append(names, "kube_api_ready") // a dependency, run to gate them
		}
		for _, n := range names {
			if slices.Contains(args.Exclude, n) {
				continue
			}
			layer := messages.LayerApplication
			if n == "nodes_ready" || n == "kube_api_ready" {
				layer = messages.LayerCluster
			}
			checks = append(checks, messages.CheckResult{Name: n, Layer: layer, Status: messages.CheckPass, Passed: true, Node: env.Node})
		}
	}
	return tasks.Output{Outcome: messages.OutcomeOK, Data: &messages.VerifyOutput{V: messages.Version, Checks: checks}}, nil
}

// The host app's checks run on the host app's node, the cluster's other
// checks on its controlplane node, each once; the dependencies the host
// app's node ran only to gate its checks are not reported twice.
func TestHostAppChecksRunOnTheHostAppNode(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = -1 })
	tok := f.token(true, "1h")
	av := &argsVerify{args: map[string]messages.VerifyArgs{}}
	for _, n := range []struct{ name, role string }{{"cp1", "controlplane"}, {"app1", "hostapp"}, {"w1", "worker"}} {
		cfg := f.agentCfg(n.name, "a", tok)
		cfg.Role = n.role
		cfg.Tasks = tasks.Builtin().With(av)
		f.runAgent(cfg)
	}
	f.waitOnline("cp1", "app1", "w1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := f.cli.Verify(ctx, messages.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hostApp := meta.HostAppChecks()
	av.mu.Lock()
	defer av.mu.Unlock()
	if got := av.args["cp1"]; !slices.Equal(got.Exclude, hostApp) || len(got.Checks) != 0 {
		t.Errorf("cp1's arguments %+v, want every cluster check but %v", got, hostApp)
	}
	if got := av.args["app1"]; !slices.Equal(got.Checks, hostApp) {
		t.Errorf("app1's arguments %+v, want only %v", got, hostApp)
	}
	if _, ok := av.args["w1"]; ok {
		t.Errorf("w1 ran cluster checks: %+v", av.args["w1"])
	}
	ran := map[string][]string{}
	for _, l := range rep.Layers {
		for _, c := range l.Checks {
			ran[c.Name] = append(ran[c.Name], c.Node)
		}
	}
	for name, want := range map[string][]string{"nodes_ready": {"cp1"}, "hostapp_healthz": {"app1"}, "proxy_answers": {"app1"}, "kube_api_ready": nil} {
		if !slices.Equal(ran[name], want) {
			t.Errorf("%s reported by %v, want %v", name, ran[name], want)
		}
	}
	if rep.OverallStatus != messages.Healthy {
		t.Errorf("overall %s", rep.OverallStatus)
	}
}
