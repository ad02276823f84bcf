package checks

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// testEnv is an Env for tests.
func testEnv(settings map[string]string) *Env {
	return &Env{Node: "node-a", Cluster: "c1", Role: "worker", Version: "test", Settings: settings}
}

func byName(results []messages.CheckResult) map[string]messages.CheckResult {
	m := make(map[string]messages.CheckResult, len(results))
	for _, r := range results {
		m[r.Name] = r
	}
	return m
}

// runArgs runs what a verify task with these JSON arguments runs: the
// catalog of env's settings, selected by layers, scope and checks.
func runArgs(ctx context.Context, t testing.TB, env *Env, args string, opts RunOptions) []messages.CheckResult {
	t.Helper()
	var a struct {
		Layers  []string               `json:"layers"`
		Scope   Scope                  `json:"scope"`
		Checks  []string               `json:"checks"`
		Require *messages.FleetRequire `json:"require"`
	}
	if err := json.Unmarshal([]byte(args), &a); err != nil {
		t.Fatalf("arguments %s: %v", args, err)
	}
	if a.Require != nil && opts.Require == nil {
		req, err := RequirementFrom(env.Settings, a.Require)
		if err != nil {
			t.Fatalf("require %s: %v", args, err)
		}
		opts.Require = &req
	}
	catalog, err := Catalog(env.Settings)
	if err != nil {
		t.Fatalf("catalog: %v", err)
	}
	sel, err := Select(catalog, Selection{Layers: a.Layers, Scope: a.Scope, Names: a.Checks})
	if err != nil {
		t.Fatalf("select %s: %v", args, err)
	}
	return RunChecks(ctx, env, sel, opts)
}

func ck(name string, deps []string, run func(context.Context, *CheckEnv) Result) Check {
	return Check{Name: name, Layer: "test", Scope: ScopeNode, DependsOn: deps, Timeout: time.Second, Run: run}
}

func passing(context.Context, *CheckEnv) Result { return Pass("fine") }
func failing(context.Context, *CheckEnv) Result { return Fail("broken thing") }

func TestBuiltinChecksAreTheContract(t *testing.T) {
	want := map[string]struct {
		layer string
		scope Scope
	}{
		"tailscaled_running": {"network", ScopeNode}, "tailnet_connected": {"network", ScopeNode},
		"controller_reachable": {"network", ScopeNode}, "routes_approved": {"network", ScopeNode},
		"login_server_health": {"network", ScopeNode}, "dns_resolution": {"network", ScopeNode},
		"host_cpu": {"host", ScopeNode}, "host_memory": {"host", ScopeNode}, "host_disk": {"host", ScopeNode},
		"kube_api_ready": {"cluster", ScopeCluster}, "nodes_ready": {"cluster", ScopeCluster},
		"coredns_running": {"cluster", ScopeCluster}, "metallb_available": {"cluster", ScopeCluster},
		"guildnet_crds_established": {"cluster", ScopeCluster},
		"talos_apid_version":        {"cluster", ScopeCluster}, "talos_etcd_members": {"cluster", ScopeCluster},
		"talos_services_up":    {"cluster", ScopeCluster},
		"rethinkdb_pods_ready": {"database", ScopeCluster}, "rethinkdb_address": {"database", ScopeCluster},
		"rethinkdb_tcp": {"database", ScopeCluster}, "rethinkdb_query": {"database", ScopeCluster},
		"rethinkdb_databases": {"database", ScopeCluster}, "rethinkdb_org_tables": {"database", ScopeCluster},
		"hostapp_healthz": {"application", ScopeCluster}, "hostapp_api_health": {"application", ScopeCluster},
		"operator_available": {"application", ScopeCluster}, "workspaces_settled": {"application", ScopeCluster},
		"proxy_answers": {"application", ScopeCluster},
	}
	checks := BuiltinChecks()
	if err := ValidateChecks(checks); err != nil {
		t.Fatalf("built-in checks do not validate: %v", err)
	}
	if len(checks) != len(want) {
		t.Errorf("%d built-in checks, want %d", len(checks), len(want))
	}
	for _, c := range checks {
		w, ok := want[c.Name]
		switch {
		case !ok:
			t.Errorf("unexpected check %q", c.Name)
		case c.Layer != w.layer || c.Scope != w.scope:
			t.Errorf("%s: layer %s scope %s, want %s %s", c.Name, c.Layer, c.Scope, w.layer, w.scope)
		case c.Description == "" || c.Timeout <= 0:
			t.Errorf("%s: needs a description and a timeout", c.Name)
		}
	}
	// Database and application checks that touch Kubernetes stand on
	// kube_api_ready, directly or through their chain.
	deps := map[string][]string{}
	for _, c := range checks {
		deps[c.Name] = c.DependsOn
	}
	var reaches func(from, to string) bool
	reaches = func(from, to string) bool {
		for _, d := range deps[from] {
			if d == to || reaches(d, to) {
				return true
			}
		}
		return false
	}
	for _, n := range []string{"rethinkdb_pods_ready", "rethinkdb_databases", "operator_available", "workspaces_settled", "proxy_answers", "nodes_ready"} {
		if !reaches(n, "kube_api_ready") {
			t.Errorf("%s does not depend on kube_api_ready", n)
		}
	}
	if !reaches("controller_reachable", "tailscaled_running") || !reaches("routes_approved", "tailnet_connected") {
		t.Error("network chain broken")
	}
}

func TestRunChecksDependencyOrder(t *testing.T) {
	var mu sync.Mutex
	var events []string
	rec := func(name string) func(context.Context, *CheckEnv) Result {
		return func(context.Context, *CheckEnv) Result {
			mu.Lock()
			events = append(events, "start "+name)
			mu.Unlock()
			mu.Lock()
			events = append(events, "end "+name)
			mu.Unlock()
			return Pass("ok")
		}
	}
	// Listed in reverse so order comes from DependsOn, not the slice.
	checks := []Check{
		ck("d", []string{"b", "c"}, rec("d")),
		ck("c", []string{"a"}, rec("c")),
		ck("b", []string{"a"}, rec("b")),
		ck("a", nil, rec("a")),
	}
	if err := ValidateChecks(checks); err != nil {
		t.Fatal(err)
	}
	res := RunChecks(context.Background(), testEnv(nil), checks, RunOptions{})
	if got := []string{res[0].Name, res[1].Name, res[2].Name, res[3].Name}; !slices.Equal(got, []string{"d", "c", "b", "a"}) {
		t.Errorf("results in order %v, want the order given", got)
	}
	pos := func(e string) int { return slices.Index(events, e) }
	for _, edge := range [][2]string{{"a", "b"}, {"a", "c"}, {"b", "d"}, {"c", "d"}} {
		if pos("end "+edge[0]) > pos("start "+edge[1]) {
			t.Errorf("%s started before its dependency %s ended: %v", edge[1], edge[0], events)
		}
	}
}

func TestRunChecksParallelAndBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		parallel int
		checks   int
	}{
		{"four at once", 4, 4},
		{"bounded to two", 2, 6},
		{"one at a time", 1, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var running, peak atomic.Int32
			// Each check waits until `parallel` checks run together (or a
			// deadline), so serial execution would be visible as a timeout.
			run := func(ctx context.Context, _ *CheckEnv) Result {
				n := running.Add(1)
				defer running.Add(-1)
				for {
					if p := peak.Load(); n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				deadline := time.Now().Add(2 * time.Second)
				for running.Load() < int32(min(tc.parallel, tc.checks)) && peak.Load() < int32(tc.parallel) {
					if time.Now().After(deadline) {
						return Fail("only %d running together", running.Load())
					}
					time.Sleep(time.Millisecond)
				}
				return Pass("ok")
			}
			var checks []Check
			for i := range tc.checks {
				checks = append(checks, ck(string(rune('a'+i)), nil, run))
			}
			for _, r := range RunChecks(context.Background(), testEnv(nil), checks, RunOptions{Parallel: tc.parallel}) {
				if r.Status != messages.CheckPass {
					t.Errorf("%s: %s %s", r.Name, r.Status, r.Message)
				}
			}
			if p := peak.Load(); p != int32(tc.parallel) {
				t.Errorf("peak concurrency %d, want %d", p, tc.parallel)
			}
		})
	}
}

func TestRunChecksTimeoutsAndPanics(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	checks := []Check{
		{Name: "honours_ctx", Layer: "test", Scope: ScopeNode, Timeout: 100 * time.Millisecond,
			Run: func(ctx context.Context, _ *CheckEnv) Result {
				<-ctx.Done()
				return Fail("GET http://127.0.0.1:1/x: %s", errText(ctx, ctx.Err()))
			}},
		{Name: "ignores_ctx", Layer: "test", Scope: ScopeNode, Timeout: 100 * time.Millisecond,
			Run: func(ctx context.Context, _ *CheckEnv) Result {
				<-release
				return Pass("too late")
			}},
		{Name: "panics", Layer: "test", Scope: ScopeNode,
			Run: func(ctx context.Context, _ *CheckEnv) Result {
				var m map[string]int
				m["boom"]++
				return Pass("unreachable")
			}},
		{Name: "bad_status", Layer: "test", Scope: ScopeNode,
			Run: func(ctx context.Context, _ *CheckEnv) Result { return Result{Status: "great"} }},
		ck("after_timeout", []string{"ignores_ctx"}, passing),
		ck("after_panic", []string{"panics"}, passing),
	}
	start := time.Now()
	res := byName(RunChecks(context.Background(), testEnv(nil), checks, RunOptions{}))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("run took %s: a hung check held it up", d)
	}
	for _, tc := range []struct {
		name, status, msg, blockedBy string
	}{
		{"honours_ctx", messages.CheckFail, "timed out after 100ms", ""},
		{"ignores_ctx", messages.CheckUnknown, "timed out after 100ms without an answer", ""},
		{"panics", messages.CheckFail, "check panicked: assignment to entry in nil map", ""},
		{"bad_status", messages.CheckFail, `status "great"`, ""},
		{"after_timeout", messages.CheckSkipped, "blocked: ignores_ctx unknown", "ignores_ctx"},
		{"after_panic", messages.CheckSkipped, "blocked: panics fail", "panics"},
	} {
		r := res[tc.name]
		if r.Status != tc.status || !strings.Contains(r.Message, tc.msg) || r.BlockedBy != tc.blockedBy {
			t.Errorf("%s: got %s %q blocked_by %q; want %s containing %q blocked_by %q", tc.name, r.Status, r.Message, r.BlockedBy, tc.status, tc.msg, tc.blockedBy)
		}
		if r.Passed {
			t.Errorf("%s: passed is true", tc.name)
		}
	}
}

func TestRunChecksBlockedByNamesRoot(t *testing.T) {
	var ran sync.Map
	mark := func(name string, r Result) func(context.Context, *CheckEnv) Result {
		return func(context.Context, *CheckEnv) Result { ran.Store(name, true); return r }
	}
	checks := []Check{
		ck("api", nil, mark("api", Fail("API server 127.0.0.1:6443 refused"))),
		ck("other", nil, mark("other", Pass("ok"))),
		ck("warned", nil, mark("warned", Warn("slow"))),
		ck("nodes", []string{"api"}, mark("nodes", Pass("x"))),
		ck("pods", []string{"nodes"}, mark("pods", Pass("x"))),
		ck("deep", []string{"other", "pods"}, mark("deep", Pass("x"))),
		ck("two_roots", []string{"pods", "lonely"}, mark("two_roots", Pass("x"))),
		ck("lonely", nil, mark("lonely", Unknown("no answer"))),
		ck("after_warn", []string{"warned", "other"}, mark("after_warn", Pass("x"))),
	}
	if err := ValidateChecks(checks); err != nil {
		t.Fatal(err)
	}
	res := byName(RunChecks(context.Background(), testEnv(nil), checks, RunOptions{}))
	for _, tc := range []struct{ name, status, blockedBy string }{
		{"api", messages.CheckFail, ""},
		{"nodes", messages.CheckSkipped, "api"},
		{"pods", messages.CheckSkipped, "api"},
		{"deep", messages.CheckSkipped, "api"},
		{"two_roots", messages.CheckSkipped, "api"},
		{"after_warn", messages.CheckPass, ""},
	} {
		r := res[tc.name]
		if r.Status != tc.status || r.BlockedBy != tc.blockedBy {
			t.Errorf("%s: %s blocked_by %q, want %s blocked_by %q (%s)", tc.name, r.Status, r.BlockedBy, tc.status, tc.blockedBy, r.Message)
		}
		if _, did := ran.Load(tc.name); did == (tc.status == messages.CheckSkipped) {
			t.Errorf("%s: ran=%v with status %s", tc.name, did, r.Status)
		}
	}
	if m := res["two_roots"].Message; !strings.Contains(m, "api fail") || !strings.Contains(m, "lonely unknown") {
		t.Errorf("two_roots message %q should name both roots", m)
	}
}

func TestRunChecksResultFields(t *testing.T) {
	long := strings.Repeat("é", MaxCheckMessageBytes)
	big := make([]int, MaxCheckValueBytes)
	checks := []Check{
		{Name: "measured", Layer: "storage", Scope: ScopeNode, Run: func(context.Context, *CheckEnv) Result {
			time.Sleep(20 * time.Millisecond)
			return Warn("disk 90%% used").With(map[string]float64{"used_pct": 90}, map[string]float64{"warn_pct": 85})
		}},
		{Name: "chatty", Layer: "storage", Scope: ScopeNode, Run: func(context.Context, *CheckEnv) Result {
			return Pass("%s", long).With(big, nil)
		}},
		{Name: "silent_unknown", Layer: "storage", Scope: ScopeNode, Run: func(context.Context, *CheckEnv) Result {
			return Result{Status: messages.CheckUnknown}
		}},
	}
	res := byName(RunChecks(context.Background(), testEnv(nil), checks, RunOptions{}))
	m := res["measured"]
	if m.Node != "node-a" || m.Cluster != "c1" || m.Layer != "storage" || !m.Passed || m.Status != messages.CheckWarn {
		t.Errorf("measured: %+v", m)
	}
	if m.DurationMS < 20 {
		t.Errorf("duration_ms %d, want >= 20", m.DurationMS)
	}
	if string(m.Observed) != `{"used_pct":90}` || string(m.Threshold) != `{"warn_pct":85}` {
		t.Errorf("observed %s threshold %s", m.Observed, m.Threshold)
	}
	c := res["chatty"]
	if len(c.Message) > MaxCheckMessageBytes || !strings.HasSuffix(c.Message, "…") || !json.Valid([]byte(`"`+c.Message+`"`)) {
		t.Errorf("message not bounded cleanly: %d bytes", len(c.Message))
	}
	if !strings.Contains(string(c.Observed), `"truncated":true`) {
		t.Errorf("oversized observed not replaced: %.60s", c.Observed)
	}
	if u := res["silent_unknown"]; u.Message == "" {
		t.Error("an unknown result must carry a reason")
	}
}

func TestRunChecksParentCancelled(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	started := make(chan struct{})
	checks := []Check{
		{Name: "slow", Layer: "test", Scope: ScopeNode, Timeout: 10 * time.Second, Run: func(ctx context.Context, _ *CheckEnv) Result {
			close(started)
			<-ctx.Done()
			return Fail("interrupted")
		}},
		ck("next", []string{"slow"}, passing),
	}
	go func() { <-started; cancel(errors.New("task deadline")) }()
	res := byName(RunChecks(ctx, testEnv(nil), checks, RunOptions{}))
	if r := res["slow"]; r.Status == messages.CheckPass {
		t.Errorf("slow: %s %s", r.Status, r.Message)
	}
	if r := res["next"]; r.Status != messages.CheckSkipped || r.BlockedBy != "slow" {
		t.Errorf("next: %s blocked_by %q", r.Status, r.BlockedBy)
	}
}

func TestValidateChecks(t *testing.T) {
	base := func() []Check {
		return []Check{ck("a", nil, passing), ck("b", []string{"a"}, passing)}
	}
	for _, tc := range []struct {
		name   string
		modify func([]Check) []Check
		want   string
	}{
		{"valid", func(c []Check) []Check { return c }, ""},
		{"duplicate", func(c []Check) []Check {
			d := ck("a", nil, passing)
			d.Source = "x.yaml:7"
			return append(c, d)
		}, `x.yaml:7: check "a": defined twice (also built in)`},
		{"unknown dependency", func(c []Check) []Check { c[1].DependsOn = []string{"zz"}; return c }, `check "b": depends_on: unknown check "zz"`},
		{"self", func(c []Check) []Check { c[0].DependsOn = []string{"a"}; return c }, "depends on itself"},
		{"cycle", func(c []Check) []Check { c[0].DependsOn = []string{"b"}; return c }, "cycle a -> b -> a"},
		{"scope", func(c []Check) []Check { c[0].Scope = ScopeCluster; return c }, `"a" is cluster-scoped and this check is node-scoped`},
		{"bad name", func(c []Check) []Check { c[0].Name = "A-b"; return c }, "name: want lower_snake_case"},
		{"bad layer", func(c []Check) []Check { c[0].Layer = ""; return c }, "layer:"},
		{"no run", func(c []Check) []Check { c[0].Run = nil; return c }, "no Run function"},
		{"timeout", func(c []Check) []Check { c[0].Timeout = time.Hour; return c }, "timeout: 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateChecks(tc.modify(base()))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	catalog := BuiltinChecks()
	names := func(cs []Check) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = c.Name
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		sel     Selection
		want    []string // exactly, in catalog order
		wantErr string
	}{
		{"host layer", Selection{Layers: []string{"host"}}, []string{"host_cpu", "host_memory", "host_disk"}, ""},
		{"node scope", Selection{Scope: ScopeNode, Layers: []string{"network"}}, []string{"tailscaled_running", "tailnet_connected", "controller_reachable", "routes_approved", "login_server_health", "dns_resolution"}, ""},
		{"cluster scope drops node checks", Selection{Scope: ScopeCluster, Layers: []string{"host", "network"}}, nil, ""},
		{"dependencies come along", Selection{Names: []string{"rethinkdb_tcp"}}, []string{"kube_api_ready", "rethinkdb_pods_ready", "rethinkdb_address", "rethinkdb_tcp"}, ""},
		{"cross-layer dependency", Selection{Layers: []string{"application"}, Scope: ScopeCluster}, []string{"kube_api_ready", "guildnet_crds_established", "hostapp_healthz", "hostapp_api_health", "operator_available", "workspaces_settled", "proxy_answers"}, ""},
		{"unknown check", Selection{Names: []string{"nope"}}, nil, `unknown check "nope"`},
		{"unknown scope", Selection{Scope: "galaxy"}, nil, "unknown scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Select(catalog, tc.sel)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(names(got), tc.want) {
				t.Errorf("got %v\nwant %v", names(got), tc.want)
			}
		})
	}
}

func TestWorst(t *testing.T) {
	r := func(statuses ...string) []messages.CheckResult {
		var out []messages.CheckResult
		for _, s := range statuses {
			out = append(out, messages.CheckResult{Status: s})
		}
		return out
	}
	for _, tc := range []struct {
		in   []messages.CheckResult
		want messages.Outcome
	}{
		{r(), messages.OutcomeOK},
		{r("pass", "pass"), messages.OutcomeOK},
		{r("pass", "warn"), messages.OutcomeWarn},
		{r("unknown", "pass"), messages.OutcomeWarn},
		{r("warn", "fail"), messages.OutcomeFail},
		{r("skipped"), messages.OutcomeFail},
	} {
		if got := Worst(tc.in); got != tc.want {
			t.Errorf("Worst(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// LazyClient builds a family's client once per run however many checks ask
// at once, keeps a build error, prefers a client the caller gave, and closes
// what it built when the run ends.
func TestLazyClient(t *testing.T) {
	var builds, closes atomic.Int32
	build := func() (*strings.Builder, func(), error) {
		builds.Add(1)
		time.Sleep(10 * time.Millisecond)
		return &strings.Builder{}, func() { closes.Add(1) }, nil
	}
	var got sync.Map
	var cs []Check
	for i := range 8 {
		cs = append(cs, ck(string(rune('a'+i)), nil, func(_ context.Context, cx *CheckEnv) Result {
			c, given, err := LazyClient(cx, "test.client", build)
			if err != nil || given {
				return Fail("client: %v, given %v", err, given)
			}
			got.Store(c, true)
			if _, _, err := LazyClient(cx, "test.broken", func() (int, func(), error) { return 0, nil, errors.New("no such thing") }); err == nil {
				return Fail("broken client built")
			}
			if _, _, err := LazyClient(cx, "test.client", func() (int, func(), error) { return 1, nil, nil }); err == nil {
				return Fail("a client of another type under the same key")
			}
			return Pass("ok")
		}))
	}
	for _, r := range RunChecks(t.Context(), testEnv(nil), cs, RunOptions{Parallel: 8}) {
		if r.Status != messages.CheckPass {
			t.Errorf("%s: %s %q", r.Name, r.Status, r.Message)
		}
	}
	n := 0
	got.Range(func(any, any) bool { n++; return true })
	if builds.Load() != 1 || n != 1 || closes.Load() != 1 {
		t.Errorf("%d builds, %d distinct clients, %d closes; want 1 of each", builds.Load(), n, closes.Load())
	}
	given := &strings.Builder{}
	res := RunChecks(t.Context(), testEnv(nil), []Check{ck("g", nil, func(_ context.Context, cx *CheckEnv) Result {
		c, ok, err := LazyClient(cx, "test.client", build)
		if err != nil || !ok || c != given {
			return Fail("got %p given %v err %v, want the caller's %p", c, ok, err, given)
		}
		return Pass("ok")
	})}, RunOptions{Clients: map[string]any{"test.client": given}})
	if res[0].Status != messages.CheckPass {
		t.Errorf("given client: %s", res[0].Message)
	}
}
