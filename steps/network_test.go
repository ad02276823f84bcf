package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"tailscale.com/ipn"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// netWorld is Headscale and one real tailscaled per node, all inside this
// test binary's loopback-only network namespace.
type netWorld struct {
	h      *testenv.Headscale
	keyRef messages.SecretRef // file:... holding the API key
	ts     map[string]*testenv.Tailscaled
	spec   messages.FleetCluster
}

func startNetWorld(t *testing.T, ctx context.Context, nodes ...messages.FleetNode) *netWorld {
	t.Helper()
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedTailscaled, testenv.NeedNetNS)
	h, err := testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	key, err := h.CreateAPIKey(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kf := filepath.Join(t.TempDir(), "headscale-api-key")
	if err := os.WriteFile(kf, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := &netWorld{h: h, keyRef: messages.SecretRef("file:" + kf), ts: map[string]*testenv.Tailscaled{}}
	for _, n := range nodes {
		td, err := testenv.StartTailscaled(ctx, testenv.TailscaledOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(td.Close)
		w.ts[n.Name] = td
	}
	w.spec = messages.FleetCluster{Name: "c1", Nodes: nodes, Network: messages.FleetNetwork{
		LoginServer: h.URL(), HeadscaleAPIKeyFrom: w.keyRef, Routes: []string{"10.0.0.0/24", "10.96.0.0/12", "10.244.0.0/16"}}}
	return w
}

// resolveSecret resolves env: and file: refs as an agent does.
func resolveSecret(ref messages.SecretRef) (string, error) {
	kind, v, ok := strings.Cut(string(ref), ":")
	switch {
	case ok && kind == "env":
		s, ok := os.LookupEnv(v)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", v)
		}
		return s, nil
	case ok && kind == "file":
		b, err := os.ReadFile(v)
		return string(b), err
	}
	return "", fmt.Errorf("secret ref %q is neither env:NAME nor file:PATH", ref)
}

// env is the steps.Env of node (or of the cluster, on node's agent).
func (w *netWorld) env(t *testing.T, node string, inputs map[string]string) *Env {
	settings := config.Settings{"TS_SOCKET": "/nonexistent/tailscaled.sock"}
	if td := w.ts[node]; td != nil {
		settings["TS_SOCKET"] = td.Socket()
	}
	role := ""
	for _, n := range w.spec.Nodes {
		if n.Name == node {
			role = n.Role
		}
	}
	return &Env{Node: node, Cluster: w.spec.Name, Role: role, Log: zap.NewNop(), Settings: settings,
		StateDir: t.TempDir(), Spec: w.spec, Inputs: inputs, Secret: resolveSecret}
}

func step(t *testing.T, name string) *Step {
	t.Helper()
	s, ok := Builtin().Lookup(name)
	if !ok {
		t.Fatalf("step %s not registered", name)
	}
	return s
}

// recorded is every plan, apply result and error the tests saw, to check
// that no secret is ever in one.
var recorded strings.Builder

func record(v any) {
	b, _ := json.Marshal(v)
	recorded.Write(b)
	recorded.WriteByte('\n')
}

func mustPlan(t *testing.T, ctx context.Context, s *Step, env *Env) Plan {
	t.Helper()
	p, err := s.Plan(ctx, env)
	record(p)
	if err != nil {
		t.Fatalf("plan %s on %s: %v", s.Name, env.Node, err)
	}
	return p
}

func mustApply(t *testing.T, ctx context.Context, s *Step, env *Env) Applied {
	t.Helper()
	if s.Prereqs != nil {
		if err := s.Prereqs(ctx, env); err != nil {
			t.Fatalf("prereqs %s on %s: %v", s.Name, env.Node, err)
		}
	}
	a, err := s.Apply(ctx, env)
	record(a)
	if err != nil {
		t.Fatalf("apply %s on %s: %v", s.Name, env.Node, err)
	}
	return a
}

func undoJSON(t *testing.T, a Applied) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(a.Undo)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// headscaleState is what an apply with nothing to do must leave alone.
type headscaleState struct {
	nodes []testenv.HeadscaleNode
	keys  int
	users int
}

func (w *netWorld) state(t *testing.T, ctx context.Context) headscaleState {
	t.Helper()
	ns, err := w.h.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := w.h.ListPreAuthKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	us, err := w.h.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ns, func(a, b testenv.HeadscaleNode) int { return int(a.ID) - int(b.ID) })
	return headscaleState{nodes: ns, keys: len(ks), users: len(us)}
}

func (s headscaleState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d users, %d pre-auth keys, nodes:", s.users, s.keys)
	for _, n := range s.nodes {
		fmt.Fprintf(&b, " %d:%s approved=%v", n.ID, n.Name, n.ApprovedRoutes)
	}
	return b.String()
}

// TestNetworkStepsOnARealTailnet: the whole network family against a real
// Headscale and two real tailscaled daemons (a router and a worker):
// Plan -> Apply -> Plan unchanged and an apply that writes nothing
// (same Headscale nodes and ids, no new pre-auth key) -> a route
// unapproved -> only routes_approved plans a change, naming the route ->
// Apply repairs -> the network checks pass through each node's socket ->
// Undo in reverse puts everything back.
func TestNetworkStepsOnARealTailnet(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	w := startNetWorld(t, ctx,
		messages.FleetNode{Name: "n1", Role: messages.RoleRouter, Hostname: "guildnet-router"},
		messages.FleetNode{Name: "n2", Role: messages.RoleWorker})
	user, login, routes, active := step(t, StepHeadscaleUser), step(t, StepTailscaleLogin), step(t, StepRoutesApproved), step(t, StepRoutesActive)
	ctl := "n1" // cluster steps run on a node of the cluster

	// First plan: everything to do.
	if p := mustPlan(t, ctx, user, w.env(t, ctl, nil)); p.Action != messages.ActionCreate || p.Diff != "create Headscale user cluster-c1" {
		t.Fatalf("user plan %+v", p)
	}
	for _, n := range []string{"n1", "n2"} {
		p := mustPlan(t, ctx, login, w.env(t, n, nil))
		if p.Action != messages.ActionCreate || !strings.Contains(p.Diff, "backend NeedsLogin -> logged in") {
			t.Fatalf("login plan on %s: %+v", n, p)
		}
	}

	if p := mustPlan(t, ctx, step(t, StepRoutesActive), w.env(t, "n1", nil)); p.Action != messages.ActionUpdate ||
		!strings.Contains(p.Diff, "tailscaled is NeedsLogin") {
		t.Fatalf("routes_active plan before login: %+v", p)
	}

	// Apply, in order, passing outputs on as the runner does.
	start := time.Now()
	ua := mustApply(t, ctx, user, w.env(t, ctl, nil))
	if ua.Action != messages.ActionCreate || ua.Outputs["id"] == "" || ua.Undo == nil {
		t.Fatalf("user apply %+v", ua)
	}
	inputs := map[string]string{StepHeadscaleUser + ".id": ua.Outputs["id"]}
	logins := map[string]Applied{}
	for _, n := range []string{"n1", "n2"} {
		a := mustApply(t, ctx, login, w.env(t, n, inputs))
		if a.Action != messages.ActionCreate || !strings.HasPrefix(a.Outputs["ip"], "100.64.") || a.Undo == nil {
			t.Fatalf("login apply on %s: %+v", n, a)
		}
		logins[n] = a
	}
	if p := mustPlan(t, ctx, routes, w.env(t, ctl, nil)); p.Action != messages.ActionUpdate ||
		p.Diff != "approve on n1: 10.0.0.0/24, 10.244.0.0/16, 10.96.0.0/12" {
		t.Fatalf("routes plan %+v", p)
	}
	ra := mustApply(t, ctx, routes, w.env(t, ctl, nil))
	if ra.Action != messages.ActionUpdate {
		t.Fatalf("routes apply %+v", ra)
	}
	// Headscale does not tell the router's own session of the approval:
	// routes_active renews it.
	if p := mustPlan(t, ctx, active, w.env(t, "n1", nil)); p.Action != messages.ActionUpdate ||
		p.Diff != "renew the control session: status lacks 10.0.0.0/24, 10.244.0.0/16, 10.96.0.0/12" {
		t.Fatalf("routes_active plan %+v", p)
	}
	if a := mustApply(t, ctx, active, w.env(t, "n1", nil)); a.Action != messages.ActionUpdate || a.Undo != nil {
		t.Fatalf("routes_active apply %+v", a)
	}
	if !active.AppliesTo(messages.RoleRouter) || active.AppliesTo(messages.RoleWorker) {
		t.Fatal("routes_active runs on routers only")
	}
	t.Logf("network layer applied on 2 nodes in %v", time.Since(start))
	// One single-use, non-ephemeral key per login, each used.
	if ks, err := w.h.ListPreAuthKeys(ctx); err != nil || len(ks) != 2 {
		t.Fatalf("pre-auth keys after two logins: %+v %v", ks, err)
	} else {
		for _, k := range ks {
			if k.Reusable || k.Ephemeral || !k.Used {
				t.Errorf("pre-auth key %+v: want single-use, not ephemeral, used", k)
			}
		}
	}

	// The runner then verifies the network layer on each node with the
	// existing checks, through the node's tailscaled socket.
	// (Each pings the other for controller_reachable.)
	for n, role := range map[string]string{"n1": messages.RoleRouter, "n2": messages.RoleWorker} {
		peer := map[string]string{"n1": "n2", "n2": "n1"}[n]
		settings := map[string]string{"TS_SOCKET": w.ts[n].Socket(), "TS_LOGIN_SERVER": w.h.URL(),
			"METAGN_CONTROLLER_TAILNET_IP": logins[peer].Outputs["ip"], "TS_ROUTES": strings.Join(w.spec.Network.Routes, ","),
			// The namespace has no cluster DNS for dns_resolution's default name.
			"METAGN_DNS_NAME": "localhost"}
		poll.UntilOK(t, 30*time.Second, "the network layer on "+n+" after setup", func() error {
			cs, err := checks.Select(checks.NetworkChecks(), checks.Selection{Layers: []string{messages.LayerNetwork}, Scope: checks.ScopeNode})
			if err != nil {
				t.Fatal(err)
			}
			res := checks.RunChecks(ctx, &checks.Env{Node: n, Cluster: "c1", Role: role, Version: "test", Settings: settings}, cs, checks.RunOptions{})
			var bad []string
			for _, r := range res {
				if r.Status != messages.CheckPass {
					bad = append(bad, fmt.Sprintf("%s %s %q", r.Name, r.Status, r.Message))
				}
			}
			if len(bad) > 0 {
				return errors.New(strings.Join(bad, "; "))
			}
			return nil
		})
	}

	// The prefs are what the spec says.
	for n, want := range map[string]struct {
		host     string
		routes   int
		routeAll bool
	}{"n1": {"guildnet-router", 3, true}, "n2": {"n2", 0, true}} {
		p, err := w.ts[n].LocalClient().GetPrefs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.Hostname != want.host || len(p.AdvertiseRoutes) != want.routes || p.RouteAll != want.routeAll || p.CorpDNS ||
			p.ControlURL != w.h.URL() {
			t.Errorf("%s prefs: host %q routes %v accept-routes %t accept-dns %t control %q", n, p.Hostname, p.AdvertiseRoutes, p.RouteAll, p.CorpDNS, p.ControlURL)
		}
	}

	// Nothing to do: plans say unchanged, applies write nothing.
	before := w.state(t, ctx)
	assertUnchanged := func(what string) {
		t.Helper()
		for _, c := range []struct {
			s    *Step
			node string
		}{{user, ctl}, {login, "n1"}, {login, "n2"}, {routes, ctl}, {active, "n1"}} {
			env := w.env(t, c.node, inputs)
			if p := mustPlan(t, ctx, c.s, env); p.Action != messages.ActionUnchanged {
				t.Errorf("%s: plan %s on %s: %+v, want unchanged", what, c.s.Name, c.node, p)
			}
			if a := mustApply(t, ctx, c.s, env); a.Action != messages.ActionUnchanged || a.Undo != nil {
				t.Errorf("%s: apply %s on %s: %+v, want unchanged with nothing to undo", what, c.s.Name, c.node, a)
			}
		}
	}
	assertUnchanged("after apply")
	after := w.state(t, ctx)
	if fmt.Sprint(before) != fmt.Sprint(after) || len(after.nodes) != 2 {
		t.Fatalf("a second apply changed Headscale:\n before %v\n after  %v", before, after)
	}
	t.Logf("re-apply wrote nothing: %v", after)

	// Break one thing: unapprove a route on the router.
	var routerID uint64
	for _, n := range after.nodes {
		if n.Name == "guildnet-router" {
			routerID = n.ID
		}
	}
	if err := w.h.ApproveRoutes(ctx, routerID, "10.0.0.0/24", "10.244.0.0/16"); err != nil {
		t.Fatal(err)
	}
	plans := map[string]Plan{}
	for _, c := range []struct {
		s    *Step
		node string
	}{{user, ctl}, {login, "n1"}, {login, "n2"}, {routes, ctl}, {active, "n1"}} {
		if p := mustPlan(t, ctx, c.s, w.env(t, c.node, inputs)); p.Action != messages.ActionUnchanged {
			plans[c.s.Name+"@"+c.node] = p
		}
	}
	// routes_approved plans exactly the missing route. Headscale pushes
	// an unapproval to the router's own session in some runs and not in
	// others (seen both ways), so routes_active may plan a renewal too, and
	// nothing else may plan anything.
	wantActive := Plan{Action: messages.ActionUpdate, Diff: "renew the control session: status lacks 10.96.0.0/12"}
	if pa, ok := plans[StepRoutesActive+"@n1"]; ok && pa == wantActive {
		delete(plans, StepRoutesActive+"@n1")
		t.Log("the unapproval reached the router's status: routes_active plans a renewal")
	}
	if len(plans) != 1 || plans[StepRoutesApproved+"@"+ctl] != (Plan{Action: messages.ActionUpdate, Diff: "approve on n1: 10.96.0.0/12"}) {
		t.Fatalf("plans after unapproving 10.96.0.0/12: %+v, want routes_approved: approve on n1: 10.96.0.0/12 (and at most routes_active's renewal)", plans)
	}
	fix := mustApply(t, ctx, routes, w.env(t, ctl, nil))
	if fix.Action != messages.ActionUpdate {
		t.Fatalf("repair %+v", fix)
	}
	if a := mustApply(t, ctx, active, w.env(t, "n1", nil)); a.Action == messages.ActionCreate {
		t.Fatalf("repair routes_active %+v", a)
	}
	assertUnchanged("after the repair")
	n, err := w.h.NodeByName(ctx, "guildnet-router")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(n.ApprovedRoutes, []string{"10.0.0.0/24", "10.244.0.0/16", "10.96.0.0/12"}) &&
		!slices.Equal(n.ApprovedRoutes, []string{"10.0.0.0/24", "10.96.0.0/12", "10.244.0.0/16"}) {
		t.Fatalf("approved after the repair: %v", n.ApprovedRoutes)
	}

	// A change of the spec is an update of exactly that.
	w.spec.Nodes[1].Hostname = "worker-2"
	if p := mustPlan(t, ctx, login, w.env(t, "n2", inputs)); p.Action != messages.ActionUpdate || p.Diff != `hostname "n2" -> "worker-2"` {
		t.Fatalf("plan after a hostname change: %+v", p)
	}
	keys := w.state(t, ctx).keys
	ha := mustApply(t, ctx, login, w.env(t, "n2", inputs))
	if ha.Action != messages.ActionUpdate {
		t.Fatalf("apply after a hostname change: %+v", ha)
	}
	if k := w.state(t, ctx).keys; k != keys {
		t.Fatalf("a prefs edit made a pre-auth key (%d -> %d)", keys, k)
	}
	// Undo of an edit puts the previous prefs back and stays logged in.
	if err := login.Undo(ctx, w.env(t, "n2", inputs), undoJSON(t, ha)); err != nil {
		t.Fatal(err)
	}
	if p, err := w.ts["n2"].LocalClient().GetPrefs(ctx); err != nil || p.Hostname != "n2" || !p.RouteAll || p.CorpDNS || p.LoggedOut {
		t.Fatalf("prefs after undoing the hostname change: %v %v", p, err)
	}
	w.spec.Nodes[1].Hostname = ""
	if p := mustPlan(t, ctx, login, w.env(t, "n2", inputs)); p.Action != messages.ActionUnchanged {
		t.Fatalf("plan after undoing the hostname change: %+v", p)
	}

	// Undo in reverse: routes, logins, user.
	if err := routes.Undo(ctx, w.env(t, ctl, nil), undoJSON(t, ra)); err != nil {
		t.Fatal(err)
	}
	if n, err := w.h.NodeByName(ctx, "guildnet-router"); err != nil || len(n.ApprovedRoutes) != 0 {
		t.Fatalf("approved after undo: %v (%v), want none", n.ApprovedRoutes, err)
	}
	for _, nn := range []string{"n2", "n1"} {
		if err := login.Undo(ctx, w.env(t, nn, nil), undoJSON(t, logins[nn])); err != nil {
			t.Fatal(err)
		}
		st, err := w.ts[nn].LocalClient().StatusWithoutPeers(ctx)
		if err != nil || st.BackendState != ipn.NeedsLogin.String() {
			t.Fatalf("%s after undo: %v %v, want NeedsLogin", nn, st, err)
		}
		if p := mustPlan(t, ctx, login, w.env(t, nn, nil)); p.Action == messages.ActionUnchanged {
			t.Fatalf("%s: plan after undo says unchanged", nn)
		}
	}
	if err := user.Undo(ctx, w.env(t, ctl, nil), undoJSON(t, ua)); err != nil {
		t.Fatal(err)
	}
	if us, err := w.h.ListUsers(ctx); err != nil || len(us) != 0 {
		t.Fatalf("users after undo: %v %v", us, err)
	}
	if ns, err := w.h.ListNodes(ctx); err != nil || len(ns) != 0 {
		t.Fatalf("nodes after undo: %v %v", ns, err)
	}

	// No secret in any plan, result, output or undo: neither the API key
	// nor a pre-auth key (Headscale's keys all start "hskey-").
	apiKey, err := resolveSecret(w.keyRef)
	if err != nil {
		t.Fatal(err)
	}
	if all := recorded.String(); strings.Contains(all, strings.TrimSpace(apiKey)) || strings.Contains(all, "hskey-") {
		t.Fatalf("a secret is in the steps' plans or results:\n%s", all)
	}
	if !strings.HasPrefix(strings.TrimSpace(apiKey), "hskey-") {
		t.Fatalf("Headscale's API key does not start hskey- (%d bytes): the check above proves nothing", len(apiKey))
	}
}

// TestNetworkStepErrors: the failures a spec or a node can cause, each in
// its class with what to do.
func TestNetworkStepErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	w := startNetWorld(t, ctx, messages.FleetNode{Name: "n1", Role: messages.RoleWorker})
	user, login, routes := step(t, StepHeadscaleUser), step(t, StepTailscaleLogin), step(t, StepRoutesApproved)

	t.Run("missing API key is a config error naming the field", func(t *testing.T) {
		w.spec.Network.HeadscaleAPIKeyFrom = ""
		defer func() { w.spec.Network.HeadscaleAPIKeyFrom = w.keyRef }()
		for _, s := range []*Step{user, routes} {
			_, err := s.Plan(ctx, w.env(t, "n1", nil))
			record(fmt.Sprint(err))
			if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "network.headscaleAPIKeyFrom is not set") {
				t.Errorf("%s: %v (class %s)", s.Name, err, Classify(err))
			}
		}
		_, err := login.Apply(ctx, w.env(t, "n1", nil)) // needs a key for the pre-auth key
		if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "network.headscaleAPIKeyFrom") {
			t.Errorf("login: %v (class %s)", err, Classify(err))
		}
	})

	t.Run("a refused API key is a config error", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "k")
		os.WriteFile(bad, []byte("hskey-api-notakey"), 0o600)
		w.spec.Network.HeadscaleAPIKeyFrom = messages.SecretRef("file:" + bad)
		defer func() { w.spec.Network.HeadscaleAPIKeyFrom = w.keyRef }()
		_, err := user.Plan(ctx, w.env(t, "n1", nil))
		if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "API key refused") || strings.Contains(err.Error(), "notakey") {
			t.Errorf("%v (class %s)", err, Classify(err))
		}
	})

	t.Run("an unresolvable key reference is a config error", func(t *testing.T) {
		w.spec.Network.HeadscaleAPIKeyFrom = "env:MGN_TEST_NO_SUCH_VARIABLE"
		defer func() { w.spec.Network.HeadscaleAPIKeyFrom = w.keyRef }()
		_, err := user.Apply(ctx, w.env(t, "n1", nil))
		if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "network.headscaleAPIKeyFrom (env:MGN_TEST_NO_SUCH_VARIABLE)") {
			t.Errorf("%v (class %s)", err, Classify(err))
		}
	})

	t.Run("a wrong login server fails retryable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := "http://" + ln.Addr().String()
		ln.Close()
		w.spec.Network.LoginServer = closed
		t.Setenv("MGN_TEST_AUTHKEY", "not-used-before-the-dial")
		w.spec.Network.AuthKeyFrom = "env:MGN_TEST_AUTHKEY"
		defer func() { w.spec.Network.LoginServer, w.spec.Network.AuthKeyFrom = w.h.URL(), "" }()
		start := time.Now()
		_, err = login.Apply(ctx, w.env(t, "n1", nil))
		if Classify(err) != messages.StepErrRetryable || !strings.Contains(err.Error(), "login server "+closed+" unreachable") {
			t.Errorf("login: %v (class %s)", err, Classify(err))
		}
		t.Logf("refused in %v: %v", time.Since(start), err)
		_, err = user.Plan(ctx, w.env(t, "n1", nil))
		if Classify(err) != messages.StepErrRetryable {
			t.Errorf("user: %v (class %s)", err, Classify(err))
		}
		st, _ := w.ts["n1"].LocalClient().StatusWithoutPeers(ctx)
		if st == nil || st.BackendState != ipn.NeedsLogin.String() {
			t.Errorf("tailscaled after a failed login: %v", st)
		}
	})

	t.Run("no tailscaled blocks with the command", func(t *testing.T) {
		env := w.env(t, "n1", nil)
		env.Settings = config.Settings{"TS_SOCKET": filepath.Join(t.TempDir(), "none.sock")}
		err := login.Prereqs(ctx, env)
		var be *BlockedError
		if !errors.As(err, &be) || be.Command != "systemctl start tailscaled" || Classify(err) != messages.StepErrBlocked {
			t.Errorf("prereqs: %v", err)
		}
		if p := mustPlan(t, ctx, login, env); p.Action != messages.ActionBlocked || !strings.Contains(p.Blocked, "systemctl start tailscaled") {
			t.Errorf("plan: %+v", p)
		}
	})

	t.Run("a refused auth key is a config error", func(t *testing.T) {
		t.Setenv("MGN_TEST_AUTHKEY", "hskey-auth-bogus-0123456789")
		w.spec.Network.AuthKeyFrom = "env:MGN_TEST_AUTHKEY"
		defer func() { w.spec.Network.AuthKeyFrom = "" }()
		start := time.Now()
		_, err := login.Apply(ctx, w.env(t, "n1", nil))
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "login to "+w.h.URL()+" refused") ||
			!strings.Contains(ce.Fix, "network.authKeyFrom (env:MGN_TEST_AUTHKEY)") || strings.Contains(err.Error(), "bogus") {
			t.Fatalf("%v (class %s)", err, Classify(err))
		}
		t.Logf("refused in %v: %v", time.Since(start), err)
	})

	t.Run("bad routes are a config error", func(t *testing.T) {
		w.spec.Network.Routes = []string{"10.0.0.0/24", "ten"}
		defer func() { w.spec.Network.Routes = nil }()
		_, err := routes.Plan(ctx, w.env(t, "n1", nil))
		if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), `network.routes[1]: "ten" is not a CIDR`) {
			t.Errorf("%v (class %s)", err, Classify(err))
		}
	})
}

// TestTailscaleLoginFollowsTheUser: a node logged in as another Headscale
// user than the spec's is logged in again as the spec's user (a new key,
// a new Headscale node under that user); a node logged in with a given
// auth key is not held to the default user.
func TestTailscaleLoginFollowsTheUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	w := startNetWorld(t, ctx, messages.FleetNode{Name: "n1", Role: messages.RoleWorker})
	user, login := step(t, StepHeadscaleUser), step(t, StepTailscaleLogin)
	mustApply(t, ctx, user, w.env(t, "n1", nil))
	mustApply(t, ctx, login, w.env(t, "n1", nil))

	w.spec.Network.User = "guildnet-other"
	mustApply(t, ctx, user, w.env(t, "n1", nil))
	if p := mustPlan(t, ctx, login, w.env(t, "n1", nil)); p.Action != messages.ActionUpdate || p.Diff != `Headscale user "cluster-c1" -> "guildnet-other"` {
		t.Fatalf("plan after a user change: %+v", p)
	}
	a := mustApply(t, ctx, login, w.env(t, "n1", nil))
	if a.Action != messages.ActionUpdate {
		t.Fatalf("apply after a user change: %+v", a)
	}
	st, err := w.ts["n1"].LocalClient().StatusWithoutPeers(ctx)
	if err != nil || st.User[st.Self.UserID].LoginName != "guildnet-other" {
		t.Fatalf("logged in as %v (%v), want guildnet-other", st.User, err)
	}
	if p := mustPlan(t, ctx, login, w.env(t, "n1", nil)); p.Action != messages.ActionUnchanged {
		t.Fatalf("plan after the new login: %+v", p)
	}

	// With a given key and no user in the spec, the key's user stands.
	w.spec.Network.User = ""
	t.Setenv("MGN_TEST_AUTHKEY", "unused: already logged in")
	w.spec.Network.AuthKeyFrom = "env:MGN_TEST_AUTHKEY"
	if p := mustPlan(t, ctx, login, w.env(t, "n1", nil)); p.Action != messages.ActionUnchanged {
		t.Fatalf("plan with a given key: %+v", p)
	}
}
