package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	fleetspec "github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// Rollouts against a real controller and real agents (two clusters), with
// a test step registry whose steps are driven by the spec and have real
// side effects (setup_test.go's style): route_file writes the cluster's
// routes to WORLD/CLUSTER/routes/NODE and keeps the node's health marker
// WORLD/CLUSTER/health/NODE, which it removes when the routes name the bad
// route 10.66.0.0/16; cluster_note writes the login server once per
// cluster. A custom file check per node (health_marker) is the gate. The
// world log records every start, apply and undo in order.

const badRoute = "10.66.0.0/16"

type rolloutWorld struct{ *setupWorld }

func (w rolloutWorld) routesStep() steps.Step {
	file := func(env *steps.Env) string { return w.path(env.Cluster, "routes", env.Node) }
	health := func(env *steps.Env) string { return w.path(env.Cluster, "health", env.Node) }
	want := func(env *steps.Env) string { return strings.Join(env.Spec.Network.Routes, ",") }
	return steps.Step{
		Name: "route_file", Layer: messages.LayerNetwork, Scope: steps.ScopeNode, After: []string{"cluster_note"}, Critical: true,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			b, err := os.ReadFile(file(env))
			switch {
			case err != nil:
				return steps.Plan{Action: messages.ActionCreate, Diff: "routes " + want(env)}, nil
			case string(b) != want(env):
				return steps.Plan{Action: messages.ActionUpdate, Diff: string(b) + " -> " + want(env)}, nil
			}
			return steps.Plan{Action: messages.ActionUnchanged}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			old, _ := os.ReadFile(file(env))
			if string(old) == want(env) {
				return steps.Applied{Action: messages.ActionUnchanged}, nil
			}
			w.log("start:route_file@" + env.Node)
			if _, ok := w.knob("refuse_" + env.Node); ok {
				return steps.Applied{}, steps.Configf("fix the patch", "route_file: %s refuses routes %s", env.Node, want(env))
			}
			for {
				if _, ok := w.knob("block_route_file"); !ok {
					break
				}
				select {
				case <-ctx.Done():
					return steps.Applied{}, ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
			os.MkdirAll(filepath.Dir(file(env)), 0o700)
			os.MkdirAll(filepath.Dir(health(env)), 0o700)
			if err := os.WriteFile(file(env), []byte(want(env)), 0o600); err != nil {
				return steps.Applied{}, err
			}
			if slices.Contains(env.Spec.Network.Routes, badRoute) {
				os.Remove(health(env))
			} else {
				os.WriteFile(health(env), []byte("ok"), 0o600)
			}
			w.log("apply:route_file@" + env.Node + "=" + want(env))
			return steps.Applied{Action: messages.ActionUpdate, Undo: map[string]string{"routes": string(old)}}, nil
		},
		Undo: func(ctx context.Context, env *steps.Env, undo json.RawMessage) error {
			var u map[string]string
			if err := json.Unmarshal(undo, &u); err != nil {
				return err
			}
			w.log("undo:route_file@" + env.Node)
			return os.WriteFile(file(env), []byte(u["routes"]), 0o600)
		},
	}
}

func (w rolloutWorld) noteStep() steps.Step {
	file := func(env *steps.Env) string { return w.path(env.Cluster, "note") }
	return steps.Step{
		Name: "cluster_note", Layer: messages.LayerNetwork, Scope: steps.ScopeCluster, Critical: true,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			if b, err := os.ReadFile(file(env)); err == nil && string(b) == env.Spec.Network.LoginServer {
				return steps.Plan{Action: messages.ActionUnchanged}, nil
			}
			return steps.Plan{Action: messages.ActionUpdate, Diff: "login server " + env.Spec.Network.LoginServer}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			old, _ := os.ReadFile(file(env))
			if string(old) == env.Spec.Network.LoginServer {
				return steps.Applied{Action: messages.ActionUnchanged}, nil
			}
			os.MkdirAll(filepath.Dir(file(env)), 0o700)
			if err := os.WriteFile(file(env), []byte(env.Spec.Network.LoginServer), 0o600); err != nil {
				return steps.Applied{}, err
			}
			w.log("apply:cluster_note@" + env.Cluster + "=" + env.Spec.Network.LoginServer)
			return steps.Applied{Action: messages.ActionUpdate, Undo: map[string]string{"login": string(old)}}, nil
		},
		Undo: func(ctx context.Context, env *steps.Env, undo json.RawMessage) error {
			w.log("undo:cluster_note@" + env.Cluster)
			return nil
		},
	}
}

type rolloutFleet struct {
	*fleet
	w      rolloutWorld
	agents map[string]*testAgent
	tok    string
	reg    *steps.Registry
}

var rolloutNodes = []struct{ name, cluster, role string }{
	{"n1", "alpha", "controlplane"}, {"n2", "alpha", "worker"}, {"n3", "alpha", "worker"},
	{"m1", "beta", "controlplane"}, {"m2", "beta", "worker"},
}

func newRolloutFleet(t *testing.T) *rolloutFleet {
	t.Helper()
	w := rolloutWorld{&setupWorld{dir: t.TempDir()}}
	os.MkdirAll(w.path("knobs"), 0o700)
	reg, err := steps.NewRegistry(w.noteStep(), w.routesStep())
	if err != nil {
		t.Fatal(err)
	}
	f := newFleet(t, func(o *controller.Options) {
		o.Steps = reg
		o.SetupBackoff = 20 * time.Millisecond
		o.SweepInterval = -1
	})
	rf := &rolloutFleet{fleet: f, w: w, agents: map[string]*testAgent{}, tok: f.token(true, "1h"), reg: reg}
	for _, n := range rolloutNodes {
		rf.startAgent(n.name)
	}
	f.waitOnline("n1", "n2", "n3", "m1", "m2")
	// The fleet starts as revision 1, applied by setup.
	if run := rf.setup(t, rf.spec(t, "10.0.0.0/24")); run.Status != messages.RunSucceeded {
		t.Fatalf("setup: %s", dump(run))
	}
	return rf
}

func (rf *rolloutFleet) startAgent(name string) {
	for _, n := range rolloutNodes {
		if n.name != name {
			continue
		}
		checks := rf.w.path("checks-" + n.name + ".yaml")
		os.WriteFile(checks, []byte(fmt.Sprintf("checks:\n  - {name: health_marker, layer: network, type: file, path: %q}\n",
			rf.w.path(n.cluster, "health", n.name))), 0o600)
		rf.agents[n.name] = rf.runStepAgent(n.name, n.cluster, n.role, rf.tok, rf.reg, checks)
	}
}

// spec is the two-cluster fleet with the given routes (comma-separated).
func (rf *rolloutFleet) spec(t *testing.T, routes string, login ...string) messages.Fleet {
	t.Helper()
	ls := "http://127.0.0.1:9"
	if len(login) > 0 {
		ls = login[0]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: metaguildnet/v1\nkind: Fleet\nclusters:\n")
	for _, c := range []string{"alpha", "beta"} {
		fmt.Fprintf(&b, "  - name: %s\n    nodes:\n", c)
		for _, n := range rolloutNodes {
			if n.cluster == c {
				fmt.Fprintf(&b, "      - {name: %s, role: %s}\n", n.name, n.role)
			}
		}
		fmt.Fprintf(&b, "    network:\n      loginServer: %s\n      headscaleAPIKeyFrom: env:HS_KEY\n      routes: [%s]\n", ls, routes)
		fmt.Fprintf(&b, "    cluster:\n      provider: kubernetes\n      kubeconfigFrom: env:KUBECONFIG_DATA\n")
		fmt.Fprintf(&b, "    require:\n      layers: [network]\n      checks: [health_marker]\n")
	}
	spec, err := fleetspec.Parse("fleet.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return *spec
}

func (rf *rolloutFleet) setup(t *testing.T, spec messages.Fleet) messages.SetupRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := rf.cli.SetupApply(ctx, messages.SetupRequest{Spec: spec})
	if err != nil {
		t.Fatalf("setup apply: %v", err)
	}
	sf := &setupFleet{fleet: rf.fleet}
	return sf.wait(t, rep.RunID)
}

func (rf *rolloutFleet) start(t *testing.T, req messages.RolloutStartRequest) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if req.MinHealthy == "" {
		req.MinHealthy = "300ms"
	}
	if req.HealthyDeadline == "" {
		req.HealthyDeadline = "3s"
	}
	rep, err := rf.cli.RolloutStart(ctx, req)
	if err != nil {
		t.Fatalf("rollout start: %v", err)
	}
	return rep.ID
}

func (rf *rolloutFleet) status(t *testing.T, id string) messages.RolloutStatusReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := rf.cli.RolloutStatus(ctx, id)
	if err != nil {
		t.Fatalf("rollout status: %v", err)
	}
	return rep
}

func (rf *rolloutFleet) wait(t *testing.T, id string, until ...string) messages.RolloutStatusReply {
	t.Helper()
	var rep messages.RolloutStatusReply
	poll.Until(t, 60*time.Second, "rollout "+id+" ended", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := rf.cli.RolloutStatus(ctx, id)
		if err != nil {
			return false
		}
		rep = r
		if len(until) > 0 {
			return slices.Contains(until, r.Rollout.Status)
		}
		return r.Rollout.Status != messages.RolloutRunning
	})
	return rep
}

func (rf *rolloutFleet) routes(cluster, node string) string {
	b, _ := os.ReadFile(rf.w.path(cluster, "routes", node))
	return string(b)
}

func nodeStatuses(r messages.Rollout) map[string]string {
	m := map[string]string{}
	for _, n := range r.Nodes {
		m[n.Name] = n.Status
	}
	return m
}

func rdump(r messages.RolloutStatusReply) string {
	b, _ := json.MarshalIndent(r, "", " ")
	return string(b)
}

func TestRolloutGoodChangeWavesBatchesCanary(t *testing.T) {
	rf := newRolloutFleet(t)
	before := len(rf.w.lines())
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.1.0.0/24", "http://127.0.0.1:10"), MaxParallel: 2})
	rep := rf.wait(t, id)
	r := rep.Rollout
	if r.Status != messages.RolloutSucceeded || r.FromRevision != 1 || r.ToRevision != 2 {
		t.Fatalf("rollout: %s", rdump(rep))
	}
	for _, n := range rolloutNodes {
		if got := rf.routes(n.cluster, n.name); got != "10.0.0.0/24,10.1.0.0/24" {
			t.Fatalf("%s routes %q", n.name, got)
		}
		if nodeStatuses(r)[n.name] != messages.RolloutNodeHealthy {
			t.Fatalf("%s: %s", n.name, rdump(rep))
		}
	}
	// Batches: canary n1, then n2+n3; canary m1, then m2; each gated.
	var shape []string
	for _, b := range r.Batches {
		shape = append(shape, b.Cluster+":"+strings.Join(b.Nodes, "+"))
		if b.Status != messages.BatchHealthy || b.Gate.Status != messages.GatePassed || b.Started == nil || b.Finished == nil {
			t.Fatalf("batch %+v", b)
		}
	}
	if strings.Join(shape, " ") != "alpha:n1 alpha:n2+n3 beta:m1 beta:m2" {
		t.Fatalf("batches: %v", shape)
	}
	// The recorded timeline: batches one after the other; never more than
	// 2 nodes of a cluster updating at once (from the world's log, in
	// order: a node updates from its start to its apply).
	for i := 1; i < len(r.Batches); i++ {
		if r.Batches[i].Started.Before(*r.Batches[i-1].Finished) {
			t.Fatalf("batch %d started before batch %d finished", i+1, i)
		}
	}
	lines := rf.w.lines()[before:]
	updating := map[string]map[string]bool{"alpha": {}, "beta": {}}
	clusterOf := map[string]string{}
	for _, n := range rolloutNodes {
		clusterOf[n.name] = n.cluster
	}
	seenBeta := false
	for _, l := range lines {
		op, rest, _ := strings.Cut(l, ":")
		target, _, _ := strings.Cut(strings.TrimPrefix(rest, "route_file@"), "=")
		if !strings.HasPrefix(rest, "route_file@") {
			continue
		}
		c := clusterOf[target]
		switch op {
		case "start":
			updating[c][target] = true
			if len(updating[c]) > 2 {
				t.Fatalf("more than 2 nodes of %s updating at once: %v (%v)", c, updating[c], lines)
			}
			if c == "beta" {
				seenBeta = true
			} else if seenBeta {
				t.Fatalf("alpha updated after beta began: waves out of order: %v", lines)
			}
		case "apply":
			delete(updating[c], target)
		}
	}
	// Cluster steps once per cluster, before its first batch; every node
	// applied exactly once.
	for _, want := range []string{"apply:cluster_note@alpha=http://127.0.0.1:10", "apply:cluster_note@beta=http://127.0.0.1:10"} {
		if n := countIn(lines, want); n != 1 {
			t.Fatalf("%s %d times: %v", want, n, lines)
		}
	}
	if idx(lines, "apply:cluster_note@alpha=http://127.0.0.1:10") > idx(lines, "start:route_file@n1") ||
		idx(lines, "apply:cluster_note@beta=http://127.0.0.1:10") > idx(lines, "start:route_file@m1") {
		t.Fatalf("cluster step after its cluster's first batch: %v", lines)
	}
	for _, n := range rolloutNodes {
		if c := countIn(lines, "start:route_file@"+n.name); c != 1 {
			t.Fatalf("%s started %d times: %v", n.name, c, lines)
		}
	}

	// The revisions: diff 1 2 names the changed fields per cluster.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := rf.cli.RolloutDiff(ctx, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, row := range d.Rows {
		fields = append(fields, row.Cluster+" "+row.Field+" "+row.From+" -> "+row.To)
	}
	want := []string{
		`alpha network.loginServer "http://127.0.0.1:9" -> "http://127.0.0.1:10"`,
		`alpha network.routes ["10.0.0.0/24"] -> ["10.0.0.0/24","10.1.0.0/24"]`,
		`beta network.loginServer "http://127.0.0.1:9" -> "http://127.0.0.1:10"`,
		`beta network.routes ["10.0.0.0/24"] -> ["10.0.0.0/24","10.1.0.0/24"]`,
	}
	if strings.Join(fields, "\n") != strings.Join(want, "\n") || d.FromHash == d.ToHash || d.FromHash == "" {
		t.Fatalf("diff:\n%s", strings.Join(fields, "\n"))
	}

	// The same spec again: nothing changes, nothing is applied.
	n := len(rf.w.lines())
	again := rf.wait(t, rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.1.0.0/24", "http://127.0.0.1:10")}))
	if again.Rollout.Status != messages.RolloutSucceeded || again.Rollout.FromRevision != 2 || again.Rollout.ToRevision != 2 || len(rf.w.lines()) != n {
		t.Fatalf("no-op rollout: %v\n%s", rf.w.lines()[n:], rdump(again))
	}
	list, err := rf.cli.RolloutList(ctx)
	if err != nil || len(list.Rollouts) != 2 || list.Rollouts[0].ID != again.Rollout.ID {
		t.Fatalf("list: %+v %v", list, err)
	}
}

func countIn(lines []string, s string) int {
	n := 0
	for _, l := range lines {
		if l == s {
			n++
		}
	}
	return n
}

func idx(lines []string, s string) int {
	for i, l := range lines {
		if l == s {
			return i
		}
	}
	return 1 << 30
}

func TestRolloutBadChangeCanaryRolledBack(t *testing.T) {
	rf := newRolloutFleet(t)
	before := len(rf.w.lines())
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,"+badRoute), MaxParallel: 2, HealthyDeadline: "1500ms"})
	rep := rf.wait(t, id)
	r := rep.Rollout
	if r.Status != messages.RolloutRolledBack {
		t.Fatalf("rollout: %s", rdump(rep))
	}
	st := nodeStatuses(r)
	if st["n1"] != messages.RolloutNodeRolledBack || st["n2"] != messages.RolloutNodePending || st["m1"] != messages.RolloutNodePending {
		t.Fatalf("nodes: %v", st)
	}
	b := r.Batches[0]
	if b.Status != messages.BatchRolledBack || b.Gate.Status != messages.GateFailed || !slices.Contains(b.Gate.ChecksFailed, "health_marker@n1") {
		t.Fatalf("canary batch: %+v", b)
	}
	if r.Batches[1].Status != messages.BatchPending || r.Waves[0].Status != messages.WaveFailed || r.Waves[1].Status != messages.WavePending {
		t.Fatalf("rest: %s", rdump(rep))
	}
	// Rolled back: the previous revision re-applied on n1 (its routes and
	// health are back), and no other node touched.
	if rf.routes("alpha", "n1") != "10.0.0.0/24" {
		t.Fatalf("n1 routes %q", rf.routes("alpha", "n1"))
	}
	if _, err := os.Stat(rf.w.path("alpha", "health", "n1")); err != nil {
		t.Fatalf("n1 health marker not back: %v", err)
	}
	for _, l := range rf.w.lines()[before:] {
		if strings.Contains(l, "route_file@") && !strings.Contains(l, "@n1") {
			t.Fatalf("another node touched: %v", rf.w.lines()[before:])
		}
	}
	// The record says why.
	if len(rep.Diagnoses) == 0 || rep.Diagnoses[0].Node != "n1" || !strings.Contains(rep.Diagnoses[0].Failure, "health_marker@n1") ||
		rep.Diagnoses[0].RootCause == "" || !strings.Contains(rep.Reason, "n1") {
		t.Fatalf("diagnosis: %s", rdump(rep))
	}
	// Verification of the cluster is healthy again.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if v, err := rf.cli.Verify(ctx, messages.VerifyRequest{Cluster: "alpha", Layers: []string{"network"}, Checks: []string{"health_marker"}}); err != nil || v.OverallStatus != messages.Healthy {
		t.Fatalf("verify after rollback: %+v %v", v, err)
	}
}

func TestRolloutRefusedChangeCountsAndRollsBack(t *testing.T) {
	rf := newRolloutFleet(t)
	rf.w.setKnob(t, "refuse_n2", "")
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.2.0.0/24"), MaxParallel: 2})
	rep := rf.wait(t, id)
	r := rep.Rollout
	st := nodeStatuses(r)
	if r.Status != messages.RolloutRolledBack || st["n1"] != messages.RolloutNodeHealthy || st["n2"] != messages.RolloutNodeRolledBack ||
		st["n3"] != messages.RolloutNodeRolledBack || st["m1"] != messages.RolloutNodePending {
		t.Fatalf("rollout: %s", rdump(rep))
	}
	// The canary keeps the change; the failed batch is back at revision 1.
	if rf.routes("alpha", "n1") != "10.0.0.0/24,10.2.0.0/24" || rf.routes("alpha", "n3") != "10.0.0.0/24" || rf.routes("alpha", "n2") != "10.0.0.0/24" {
		t.Fatalf("routes n1=%q n2=%q n3=%q", rf.routes("alpha", "n1"), rf.routes("alpha", "n2"), rf.routes("alpha", "n3"))
	}
	var refused *messages.RolloutStep
	for i, s := range rep.Steps {
		if s.Node == "n2" && s.Op == "apply" {
			refused = &rep.Steps[i]
		}
	}
	if refused == nil || refused.Outcome != "failed" || refused.Attempts != 1 || !strings.Contains(refused.Error, "config: ") {
		t.Fatalf("n2's step: %+v", refused)
	}
	if !strings.Contains(rep.Reason, "budget --max-failed 0") || !strings.Contains(rep.Reason, "refuses routes") {
		t.Fatalf("reason: %q", rep.Reason)
	}
}

func TestRolloutPauseResumeAbort(t *testing.T) {
	rf := newRolloutFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.3.0.0/24"), MaxParallel: 2, MinHealthy: "1s"})
	poll.Until(t, 20*time.Second, "canary gating", func() bool {
		p := rf.status(t, id).Progress
		return p != nil && p.Batch == 1 && (p.Gate == messages.GateHolding || p.Gate == messages.GateWaiting)
	})
	if _, err := rf.cli.RolloutControl(ctx, messages.APIRolloutPause, id); err != nil {
		t.Fatal(err)
	}
	rep := rf.wait(t, id, messages.RolloutPaused)
	r := rep.Rollout
	if r.Batches[0].Status != messages.BatchHealthy || r.Batches[1].Status != messages.BatchPending || rf.w.count("start:route_file@n2") != 1 {
		t.Fatalf("paused after the canary: %s", rdump(rep))
	}
	if _, err := rf.cli.RolloutControl(ctx, messages.APIRolloutPause, id); err == nil {
		t.Fatal("pausing a paused rollout")
	}
	if _, err := rf.cli.RolloutControl(ctx, messages.APIRolloutResume, id); err != nil {
		t.Fatal(err)
	}
	if rep := rf.wait(t, id); rep.Rollout.Status != messages.RolloutSucceeded {
		t.Fatalf("resumed: %s", rdump(rep))
	}

	// Abort mid-batch: the batch in flight finishes its update, is rolled
	// back, and nothing else is touched.
	rf.w.setKnob(t, "block_route_file", "")
	base := rf.w.count("start:route_file@n1")
	id2 := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.4.0.0/24"), MaxParallel: 2})
	poll.Until(t, 20*time.Second, "canary updating", func() bool { return rf.w.count("start:route_file@n1") == base+1 })
	if _, err := rf.cli.RolloutControl(ctx, messages.APIRolloutAbort, id2); err != nil {
		t.Fatal(err)
	}
	rf.w.clearKnob("block_route_file")
	rep = rf.wait(t, id2)
	st := nodeStatuses(rep.Rollout)
	if rep.Rollout.Status != messages.RolloutAborted || st["n1"] != messages.RolloutNodeRolledBack || st["n2"] != messages.RolloutNodePending ||
		rep.Rollout.Batches[0].Status != messages.BatchAborted {
		t.Fatalf("aborted: %s", rdump(rep))
	}
	if rf.routes("alpha", "n1") != "10.0.0.0/24,10.3.0.0/24" || rf.routes("alpha", "n2") != "10.0.0.0/24,10.3.0.0/24" {
		t.Fatalf("after abort: n1=%q n2=%q", rf.routes("alpha", "n1"), rf.routes("alpha", "n2"))
	}
}

func TestRolloutResumesAfterRestartAndRefusesOverlap(t *testing.T) {
	rf := newRolloutFleet(t)
	// Before: every node applied by setup once.
	rf.w.setKnob(t, "block_route_file", "")
	b1, b2 := rf.w.count("start:route_file@n1"), rf.w.count("start:route_file@n2")
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.5.0.0/24"), MaxParallel: 2, Canary: ptr(0)})
	poll.Until(t, 20*time.Second, "first batch updating", func() bool {
		return rf.w.count("start:route_file@n1") == b1+1 && rf.w.count("start:route_file@n2") == b2+1
	})
	// Overlapping rollouts and setup runs are refused, naming the first.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := rf.cli.RolloutStart(ctx, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.6.0.0/24")})
	wantAPIError(t, err, messages.CodeConflict, id, "second rollout")
	_, err = rf.cli.SetupApply(ctx, messages.SetupRequest{Spec: rf.spec(t, "10.0.0.0/24")})
	wantAPIError(t, err, messages.CodeConflict, id, "setup during a rollout")
	// The controller goes away mid-batch; the nodes finish meanwhile; the
	// restarted controller re-plans the batch (nothing applied twice),
	// gates it and finishes.
	rf.restartAfter(func() { rf.w.clearKnob("block_route_file") }, "the batch applied on the nodes", func() bool {
		return rf.w.count("apply:route_file@n1=10.0.0.0/24,10.5.0.0/24") == 1 && rf.w.count("apply:route_file@n2=10.0.0.0/24,10.5.0.0/24") == 1
	})
	rep := rf.wait(t, id)
	if rep.Rollout.Status != messages.RolloutSucceeded {
		t.Fatalf("resumed rollout: %s", rdump(rep))
	}
	for _, n := range rolloutNodes {
		if c := rf.w.count("start:route_file@" + n.name); c != 2 {
			t.Fatalf("%s started %d times (setup once, rollout once): %v", n.name, c, rf.w.lines())
		}
		if c := rf.w.count("apply:route_file@" + n.name + "=10.0.0.0/24,10.5.0.0/24"); c != 1 {
			t.Fatalf("%s applied %d times: %v", n.name, c, rf.w.lines())
		}
	}
	if g := rep.Rollout.Batches[0].Gate.Status; g != messages.GatePassed {
		t.Fatalf("the batch in flight was not gated after the restart: %s", rdump(rep))
	}
}

func TestRolloutOfflineNodes(t *testing.T) {
	rf := newRolloutFleet(t)
	rf.agents["m2"].stop()
	poll.Until(t, 20*time.Second, "m2 offline", func() bool { return rf.state("m2") == messages.StateOffline })
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.7.0.0/24"), MaxParallel: 2, SkipOffline: true, HealthyDeadline: "500ms"})
	rep := rf.wait(t, id)
	if st := nodeStatuses(rep.Rollout); rep.Rollout.Status != messages.RolloutSucceeded || st["m2"] != messages.RolloutNodeSkipped || st["m1"] != messages.RolloutNodeHealthy {
		t.Fatalf("skip offline: %s", rdump(rep))
	}
	// Without --skip-offline the offline node fails its batch once the
	// deadline has passed.
	id = rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.8.0.0/24"), MaxParallel: 2, HealthyDeadline: "500ms"})
	rep = rf.wait(t, id)
	if st := nodeStatuses(rep.Rollout); rep.Rollout.Status != messages.RolloutRolledBack || st["m2"] != messages.RolloutNodeFailed || st["m1"] != messages.RolloutNodeHealthy ||
		!strings.Contains(rep.Reason, "offline") {
		t.Fatalf("offline fails: %s", rdump(rep))
	}
}

func ptr[T any](v T) *T { return &v }

func TestRolloutBudgetAndPauseOnFailure(t *testing.T) {
	rf := newRolloutFleet(t)
	// Within the budget: n2 refuses, the rollout goes on to every other
	// node and ends failed, naming n2.
	rf.w.setKnob(t, "refuse_n2", "")
	rep := rf.wait(t, rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.11.0.0/24"), MaxParallel: 2, MaxFailed: 1}))
	st := nodeStatuses(rep.Rollout)
	if rep.Rollout.Status != messages.RolloutFailed || st["n2"] != messages.RolloutNodeFailed || st["n3"] != messages.RolloutNodeHealthy ||
		st["m2"] != messages.RolloutNodeHealthy || !strings.Contains(rep.Reason, "n2") || rf.routes("beta", "m2") != "10.0.0.0/24,10.11.0.0/24" {
		t.Fatalf("within the budget: %s", rdump(rep))
	}
	if len(rep.Diagnoses) != 1 || rep.Diagnoses[0].Node != "n2" || !strings.Contains(rep.Diagnoses[0].Failure, "refuses routes") {
		t.Fatalf("diagnoses: %+v", rep.Diagnoses)
	}
	// --on-failure pause: past the budget nothing is undone and the
	// rollout waits; fixed and resumed, the failed batch is re-run.
	id := rf.start(t, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.12.0.0/24"), MaxParallel: 2, OnFailure: "pause"})
	rep = rf.wait(t, id, messages.RolloutPaused)
	st = nodeStatuses(rep.Rollout)
	if st["n2"] != messages.RolloutNodeFailed || st["n3"] != messages.RolloutNodeHealthy || rf.routes("alpha", "n3") != "10.0.0.0/24,10.12.0.0/24" ||
		st["m1"] != messages.RolloutNodePending || !strings.Contains(rep.Reason, "paused") {
		t.Fatalf("paused on failure: %s", rdump(rep))
	}
	rf.w.clearKnob("refuse_n2")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rf.cli.RolloutControl(ctx, messages.APIRolloutResume, id); err != nil {
		t.Fatal(err)
	}
	rep = rf.wait(t, id)
	if rep.Rollout.Status != messages.RolloutSucceeded || rf.routes("alpha", "n2") != "10.0.0.0/24,10.12.0.0/24" {
		t.Fatalf("resumed: %s", rdump(rep))
	}
	if c := rf.w.count("apply:route_file@n3=10.0.0.0/24,10.12.0.0/24"); c != 1 {
		t.Fatalf("n3 applied %d times on the re-run", c)
	}
}

func TestRolloutRefusedWhileSetupHoldsCluster(t *testing.T) {
	rf := newRolloutFleet(t)
	rf.w.setKnob(t, "block_route_file", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := rf.w.count("start:route_file@n1")
	srep, err := rf.cli.SetupApply(ctx, messages.SetupRequest{Spec: rf.spec(t, "10.0.0.0/24,10.13.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "setup applying", func() bool { return rf.w.count("start:route_file@n1") > base })
	_, err = rf.cli.RolloutStart(ctx, messages.RolloutStartRequest{Spec: rf.spec(t, "10.0.0.0/24,10.14.0.0/24")})
	wantAPIError(t, err, messages.CodeConflict, srep.RunID, "rollout during setup")
	rf.w.clearKnob("block_route_file")
	if run := (&setupFleet{fleet: rf.fleet}).wait(t, srep.RunID); run.Status != messages.RunSucceeded {
		t.Fatalf("setup: %s", dump(run))
	}
	// Nothing of the refused rollout was recorded as a revision.
	if _, err := rf.cli.RolloutDiff(ctx, 1, 3); err == nil || !strings.Contains(err.Error(), "no spec revision 3") {
		t.Fatalf("revision 3: %v", err)
	}
}
