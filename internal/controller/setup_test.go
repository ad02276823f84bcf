package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	fleetspec "github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// The setup runner against a real controller and real agents, with a
// test-only step registry whose steps have real side effects: files in a
// world directory, and an append-only log of every apply and undo that
// proves what ran, in which order, and that nothing ran twice. Knob files
// in WORLD/knobs make a step fail in a chosen way.

const (
	planted    = "PLANTED-SEALED-7f3a9c"   // Seal's secret input
	plantedOut = "PLANTED-KUBECONFIG-51be" // a step's secret output
)

type setupWorld struct {
	dir string
	mu  sync.Mutex
}

func (w *setupWorld) path(parts ...string) string {
	return filepath.Join(append([]string{w.dir}, parts...)...)
}

func (w *setupWorld) log(line string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f, err := os.OpenFile(w.path("applies.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	f.WriteString(line + "\n")
	f.Close()
}

func (w *setupWorld) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, _ := os.ReadFile(w.path("applies.log"))
	return strings.Fields(string(b))
}

func (w *setupWorld) count(line string) int {
	n := 0
	for _, l := range w.lines() {
		if l == line {
			n++
		}
	}
	return n
}

func (w *setupWorld) knob(name string) (string, bool) {
	b, err := os.ReadFile(w.path("knobs", name))
	return strings.TrimSpace(string(b)), err == nil
}

func (w *setupWorld) setKnob(t *testing.T, name, v string) {
	t.Helper()
	if err := os.WriteFile(w.path("knobs", name), []byte(v), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (w *setupWorld) clearKnob(name string) { os.Remove(w.path("knobs", name)) }

// fileStep makes a step that creates WORLD/CLUSTER/DIR/TARGET (TARGET is
// the node for a node step, "cluster" for a cluster step).
func (w *setupWorld) fileStep(name, layer, dir string, scope steps.Scope, after ...string) steps.Step {
	target := func(env *steps.Env) string {
		if scope == steps.ScopeCluster {
			return "cluster"
		}
		return env.Node
	}
	file := func(env *steps.Env) string { return w.path(env.Cluster, dir, target(env)) }
	return steps.Step{
		Name: name, Layer: layer, Scope: scope, After: after, Critical: true,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			if _, err := os.Stat(file(env)); err == nil {
				return steps.Plan{Action: messages.ActionUnchanged}, nil
			}
			return steps.Plan{Action: messages.ActionCreate, Diff: dir + "/" + target(env) + " created"}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			if _, err := os.Stat(file(env)); err == nil {
				return steps.Applied{Action: messages.ActionUnchanged}, nil // nothing to do: nothing written
			}
			w.log("start:" + name + "@" + env.Node)
			if _, ok := w.knob("config_" + name); ok {
				return steps.Applied{}, steps.Configf("set application.operator.image", "%s: no image", name)
			}
			if v, ok := w.knob("retry_" + name); ok {
				n, _ := strconv.Atoi(v)
				if n > 0 {
					w.setKnobNoT("retry_"+name, strconv.Itoa(n-1))
					return steps.Applied{}, &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}
				}
			}
			if _, ok := w.knob("fail_" + name); ok {
				return steps.Applied{}, errors.New(name + ": broken on purpose")
			}
			for {
				if _, ok := w.knob("block_" + name); !ok {
					break
				}
				select {
				case <-ctx.Done():
					return steps.Applied{}, ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
			if _, ok := w.knob("parallel_" + name); ok {
				// Both nodes must be in Apply at once: a runner that ran
				// them one after the other would time out here.
				os.WriteFile(w.path("knobs", "in_"+name+"_"+env.Node), nil, 0o600)
				deadline := time.Now().Add(10 * time.Second)
				for {
					m, _ := filepath.Glob(w.path("knobs", "in_"+name+"_*"))
					if len(m) >= 2 {
						break
					}
					if time.Now().After(deadline) {
						return steps.Applied{}, errors.New("the other node never started: steps ran one node at a time")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			if _, ok := w.knob("hollow_" + name); !ok {
				os.MkdirAll(filepath.Dir(file(env)), 0o700)
				if err := os.WriteFile(file(env), []byte(env.Node), 0o600); err != nil {
					return steps.Applied{}, err
				}
			}
			w.log("apply:" + name + "@" + env.Node)
			return steps.Applied{Action: messages.ActionCreate, Undo: map[string]string{"file": file(env)},
				Outputs: map[string]string{"made": target(env)}}, nil
		},
		Undo: func(ctx context.Context, env *steps.Env, undo json.RawMessage) error {
			var u map[string]string
			if err := json.Unmarshal(undo, &u); err != nil {
				return err
			}
			w.log("undo-start:" + name + "@" + env.Node)
			for {
				if _, ok := w.knob("block_undo_" + name); !ok {
					break
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
			if _, err := os.Stat(u["file"]); os.IsNotExist(err) {
				return nil // undone already: nothing to do
			}
			w.log("undo:" + name + "@" + env.Node)
			return os.Remove(u["file"])
		},
	}
}

func (w *setupWorld) setKnobNoT(name, v string) {
	os.WriteFile(w.path("knobs", name), []byte(v), 0o600)
}

// registry: network (net_dir on the cluster, then net_node on every node,
// with sealed values both ways), cluster (kube_a, then kube_b on every node).
func (w *setupWorld) registry(t *testing.T) *steps.Registry {
	netDir := w.fileStep("net_dir", messages.LayerNetwork, "net", steps.ScopeCluster)
	netDir.Seal = func(ctx context.Context, se *steps.SealEnv) (map[string]string, error) {
		return map[string]string{"talos.machine_config": planted + "-" + se.Node.Name}, nil
	}
	netDir.SealedOutputs = []string{"kubeconfig"}
	apply := netDir.Apply
	netDir.Apply = func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
		if env.Sealed["talos.machine_config"] != planted+"-"+env.Node {
			return steps.Applied{}, errors.New("sealed input missing")
		}
		a, err := apply(ctx, env)
		if err == nil && a.Action == messages.ActionCreate {
			// "talosconfig" is not declared: the controller drops it.
			a.Sealed = map[string]string{"kubeconfig": plantedOut, "talosconfig": plantedOut + "-undeclared"}
		}
		return a, err
	}
	netNode := w.fileStep("net_node", messages.LayerNetwork, "net", steps.ScopeNode, "net_dir")
	netNode.Seal = func(ctx context.Context, se *steps.SealEnv) (map[string]string, error) {
		kc, ok := se.Saved("kubeconfig")
		if !ok {
			return nil, errors.New("no kubeconfig saved")
		}
		return map[string]string{"kubeconfig": kc}, nil
	}
	applyNode := netNode.Apply
	netNode.Apply = func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
		if env.Sealed["kubeconfig"] != plantedOut {
			return steps.Applied{}, steps.Configf("run net_dir first", "kubeconfig not handed over")
		}
		if env.Inputs["net_dir.made"] != "cluster" {
			return steps.Applied{}, steps.Configf("run net_dir first", "input net_dir.made missing: %v", env.Inputs)
		}
		return applyNode(ctx, env)
	}
	reg, err := steps.NewRegistry(netDir, netNode,
		w.fileStep("kube_a", messages.LayerCluster, "kube", steps.ScopeCluster),
		w.fileStep("kube_b", messages.LayerCluster, "kube", steps.ScopeNode, "kube_a"))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

type setupFleet struct {
	*fleet
	w      *setupWorld
	reg    *steps.Registry
	spec   messages.Fleet
	agents []*testAgent
}

func newSetupFleet(t *testing.T) *setupFleet {
	return newSetupFleetSettle(t, -1) // an unhealthy layer fails at once here
}

func newSetupFleetSettle(t *testing.T, settle time.Duration) *setupFleet {
	t.Helper()
	w := &setupWorld{dir: t.TempDir()}
	os.MkdirAll(w.path("knobs"), 0o700)
	reg := w.registry(t)
	f := newFleet(t, func(o *controller.Options) {
		o.Steps = reg
		o.SetupBackoff = 20 * time.Millisecond
		o.SetupVerifySettle = settle
		o.SweepInterval = -1
	})
	sf := &setupFleet{fleet: f, w: w, reg: reg}
	tok := f.token(true, "1h")
	for _, n := range []struct{ name, role string }{{"n1", "controlplane"}, {"n2", "worker"}} {
		checksFile := w.path("checks-" + n.name + ".yaml")
		os.WriteFile(checksFile, []byte(fmt.Sprintf(`checks:
  - {name: net_marker, layer: network, type: file, path: %q}
  - {name: kube_marker, layer: cluster, scope: cluster, type: file, path: %q}
`, w.path("alpha", "net", n.name), w.path("alpha", "kube", "cluster"))), 0o600)
		sf.agents = append(sf.agents, f.runStepAgent(n.name, "alpha", n.role, tok, reg, checksFile))
	}
	f.waitOnline("n1", "n2")
	sf.spec = sf.specFor(t)
	return sf
}

// specFor is the spec of the test fleet: alpha with n1 (controlplane) and
// n2, network and cluster layers verified by the custom checks.
func (sf *setupFleet) specFor(t *testing.T) messages.Fleet {
	t.Helper()
	spec, err := fleetspec.Parse("fleet.yaml", []byte(`apiVersion: metaguildnet/v1
kind: Fleet
clusters:
  - name: alpha
    nodes:
      - {name: n1, role: controlplane}
      - {name: n2, role: worker}
    network:
      loginServer: http://127.0.0.1:9
      headscaleAPIKeyFrom: env:HS_KEY
    cluster:
      provider: kubernetes
      kubeconfigFrom: env:KUBECONFIG_DATA
    require:
      layers: [network, cluster]
      checks: [net_marker, kube_marker]
`))
	if err != nil {
		t.Fatal(err)
	}
	return *spec
}

// apply starts a run and waits for it to end.
func (sf *setupFleet) apply(t *testing.T, req messages.SetupRequest) messages.SetupRun {
	t.Helper()
	id := sf.start(t, req)
	return sf.wait(t, id)
}

func (sf *setupFleet) start(t *testing.T, req messages.SetupRequest) string {
	t.Helper()
	req.Spec = sf.spec
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := sf.cli.SetupApply(ctx, req)
	if err != nil {
		t.Fatalf("setup apply: %v", err)
	}
	return rep.RunID
}

func (sf *setupFleet) wait(t *testing.T, id string) messages.SetupRun {
	t.Helper()
	var run messages.SetupRun
	poll.Until(t, 60*time.Second, "run "+id+" finished", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rep, err := sf.cli.SetupStatus(ctx, id)
		if err != nil {
			return false
		}
		run = rep.Run
		return run.Status != messages.RunRunning
	})
	return run
}

// restartAfter stops the controller mid-work; the fleet goes on without
// it: meanwhile runs, then up to 20 s pass until done holds (what names
// it). Then the controller starts again on the same data dir.
func (f *fleet) restartAfter(meanwhile func(), what string, done func() bool) {
	f.t.Helper()
	f.stop()
	meanwhile()
	poll.Until(f.t, 20*time.Second, what, done)
	f.start()
}

// runStepAgent runs an agent that runs the steps of reg and the custom
// checks in the file checks.
func (f *fleet) runStepAgent(name, cluster, role, tok string, reg *steps.Registry, checks string) *testAgent {
	f.t.Helper()
	cfg := f.agentCfg(name, cluster, tok)
	cfg.Role = role
	cfg.Tasks = tasks.Builtin().With(tasks.StepTask{Steps: reg})
	cfg.Settings = config.Settings{"METAGN_CUSTOM_CHECKS": checks}
	return f.runAgent(cfg)
}

// wantAPIError fails the test unless err is the controller's API error
// with code, naming mention.
func wantAPIError(t *testing.T, err error, code, mention, what string) {
	t.Helper()
	var apiErr *ctlclient.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != code || !strings.Contains(err.Error(), mention) {
		t.Fatalf("%s: %v", what, err)
	}
}

func layerOf(run messages.SetupRun, name string) messages.SetupLayer {
	for _, l := range run.Layers {
		if l.Name == name {
			return l
		}
	}
	return messages.SetupLayer{}
}

func stepRows(l messages.SetupLayer, step string) map[string]messages.SetupStep {
	m := map[string]messages.SetupStep{}
	for _, s := range l.Steps {
		if s.Name == step {
			m[s.Node] = s
		}
	}
	return m
}

func dump(run messages.SetupRun) string {
	b, _ := json.MarshalIndent(run, "", " ")
	return string(b)
}

func TestSetupApplyOrderVerifyIdempotent(t *testing.T) {
	sf := newSetupFleet(t)
	sf.w.setKnob(t, "parallel_kube_b", "")
	progress := make(chan messages.SetupProgress, 256)
	sub, err := sf.cli.Conn().Subscribe(messages.EventSubject(messages.SetupEventKind), func(m *nats.Msg) {
		if p, err := messages.Decode[messages.SetupProgress](m.Data, 0); err == nil {
			select {
			case progress <- p:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	run := sf.apply(t, messages.SetupRequest{})
	if run.Status != messages.RunSucceeded {
		t.Fatalf("run: %s", dump(run))
	}
	// Order: net_dir before net_node, network before cluster, kube_a
	// before kube_b; kube_b ran on both nodes at once (the parallel knob).
	lines := sf.w.lines()
	idx := func(l string) int {
		for i, x := range lines {
			if x == l {
				return i
			}
		}
		t.Fatalf("%s never happened: %v", l, lines)
		return -1
	}
	if !(idx("apply:net_dir@n1") < idx("apply:net_node@n1") && idx("apply:net_node@n2") < idx("apply:kube_a@n1") &&
		idx("apply:kube_a@n1") < idx("start:kube_b@n1") && idx("apply:kube_a@n1") < idx("start:kube_b@n2")) {
		t.Fatalf("order: %v", lines)
	}
	for _, l := range run.Layers {
		if l.Status != "verified" || len(l.Verification) == 0 || !bytes.Contains(l.Verification, []byte(`"healthy"`)) {
			t.Fatalf("layer %s: %s", l.Name, dump(run))
		}
	}
	// The dashboard's runs page shows the run from the same record.
	resp, err := http.Get(sf.c.Info().HTTPURL + "/runs")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(run.RunID)) {
		t.Fatalf("runs page (%d) does not show run %s:\n%s", resp.StatusCode, run.RunID, page)
	}
	net := layerOf(run, "network")
	if r := stepRows(net, "net_node"); r["n1"].Outcome != "applied" || r["n2"].Outcome != "applied" || r["n1"].Action != "create" || r["n1"].Attempts != 1 || r["n1"].Cluster != "alpha" {
		t.Fatalf("net_node rows: %+v", r)
	}
	if r := stepRows(net, "net_dir"); len(r) != 1 || r["n1"].Outcome != "applied" {
		t.Fatalf("net_dir runs once, on the controlplane: %+v", r)
	}
	// Progress events: the step running on each node, steps done of total.
	sawBoth, sawDone := false, false
	for len(progress) > 0 {
		p := <-progress
		if len(p.Clusters) == 1 && p.Clusters[0].Running["n1"] == "kube_b" && p.Clusters[0].Running["n2"] == "kube_b" && p.Clusters[0].Layer == "cluster" && p.Clusters[0].Done == 1 && p.Clusters[0].Total == 2 {
			sawBoth = true
		}
		if p.Status == messages.RunSucceeded && p.ETAMS == 0 {
			sawDone = true
		}
	}
	if !sawBoth || !sawDone {
		t.Fatalf("progress events: both nodes on kube_b at 1/2 %v, done %v", sawBoth, sawDone)
	}
	// The sealed output is kept as a 0600 file in the cluster's secrets dir.
	kc := filepath.Join(sf.opts.DataDir, "secrets", "alpha", "kubeconfig")
	if fi, err := os.Stat(kc); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig kept: %v %v", fi, err)
	}
	if fi, _ := os.Stat(filepath.Dir(kc)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("secrets dir mode %v", fi.Mode())
	}
	// A sealed key the step does not declare (Step.SealedOutputs) is not kept.
	if _, err := os.Stat(filepath.Join(filepath.Dir(kc), "talosconfig")); !os.IsNotExist(err) {
		t.Fatalf("an undeclared sealed output was kept: %v", err)
	}

	// A second apply: every step unchanged, nothing written.
	before := len(sf.w.lines())
	again := sf.apply(t, messages.SetupRequest{})
	if again.Status != messages.RunSucceeded || len(sf.w.lines()) != before {
		t.Fatalf("second apply changed something: %v\n%s", sf.w.lines()[before:], dump(again))
	}
	for _, l := range again.Layers {
		for _, s := range l.Steps {
			if s.Outcome != "unchanged" || s.Action != "unchanged" || s.Attempts != 0 {
				t.Fatalf("second apply: %+v", s)
			}
		}
	}
	// The plan says so too; then break one thing and the plan says exactly that.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	os.Remove(sf.w.path("alpha", "kube", "n2"))
	plan, err := sf.cli.SetupPlan(ctx, messages.SetupRequest{Spec: sf.spec})
	if err != nil {
		t.Fatal(err)
	}
	var changes []string
	for _, r := range plan.Rows {
		if r.Action != "unchanged" {
			changes = append(changes, r.Step+"@"+r.Node+"="+r.Action+":"+r.Diff)
		}
	}
	if len(plan.Rows) != 6 || len(changes) != 1 || changes[0] != "kube_b@n2=create:kube/n2 created" {
		t.Fatalf("plan after breaking kube/n2: %v (%d rows)", changes, len(plan.Rows))
	}
	repair := sf.apply(t, messages.SetupRequest{Layer: "cluster"})
	if repair.Status != messages.RunSucceeded || sf.w.count("apply:kube_b@n2") != 2 || sf.w.count("apply:kube_b@n1") != 1 || len(repair.Layers) != 1 {
		t.Fatalf("repair: %v\n%s", sf.w.lines(), dump(repair))
	}

	// Secrets: the planted sealed input and output are nowhere in
	// JetStream's storage (KV, streams, object stores) or the run record.
	assertNotStored(t, sf.opts.DataDir, planted, plantedOut)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	st, _ := sf.cli.SetupStatus(ctx2, "")
	if b, _ := json.Marshal(st); bytes.Contains(b, []byte("PLANTED")) {
		t.Fatalf("a secret in setup status: %s", b)
	}
	// The backup holds the runs and the durations, and no secret.
	var buf bytes.Buffer
	bst, err := controller.Backup(ctx2, sf.cli.Conn(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if bst.By["KV_mgn_setup_runs"] != 3 || bst.By["KV_mgn_setup_durations"] == 0 || bytes.Contains(buf.Bytes(), []byte("PLANTED")) {
		t.Fatalf("backup: %+v", bst.By)
	}
}

// assertNotStored scans every file of the data dir but the secrets dir.
func assertNotStored(t *testing.T, dataDir string, secrets ...string) {
	t.Helper()
	n := 0
	filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "secrets" {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		n++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("secret %q stored in %s", s, p)
			}
		}
		return nil
	})
	if n < 10 {
		t.Fatalf("scanned only %d files of %s", n, dataDir)
	}
}

func TestSetupRetryAndConfigErrorAndRollback(t *testing.T) {
	sf := newSetupFleet(t)
	// kube_a fails twice with a refused connection, then works: 3 attempts.
	// kube_b has a configuration error on its first node: it fails at once,
	// and the cluster layer is rolled back (kube_b's applies on other
	// nodes, then kube_a); the verified network layer stays.
	sf.w.setKnob(t, "retry_kube_a", "2")
	sf.w.setKnob(t, "config_kube_b", "")
	run := sf.apply(t, messages.SetupRequest{})
	if run.Status != messages.RunRolledBack {
		t.Fatalf("run: %s", dump(run))
	}
	if l := layerOf(run, "network"); l.Status != "verified" {
		t.Fatalf("network: %s", dump(run))
	}
	kube := layerOf(run, "cluster")
	if kube.Status != "rolled_back" {
		t.Fatalf("cluster: %s", dump(run))
	}
	if a := stepRows(kube, "kube_a")["n1"]; a.Attempts != 3 || a.Outcome != "undone" {
		t.Fatalf("kube_a: %+v", a)
	}
	for _, n := range []string{"n1", "n2"} {
		b := stepRows(kube, "kube_b")[n]
		if b.Attempts != 1 || b.Outcome != "failed" || !strings.Contains(b.Error, "config: ") || !strings.Contains(b.Error, "fix: set application.operator.image") {
			t.Fatalf("kube_b@%s: %+v", n, b)
		}
	}
	if sf.w.count("start:kube_a@n1") != 3 || sf.w.count("undo:kube_a@n1") != 1 || sf.w.count("start:kube_b@n1") != 1 {
		t.Fatalf("log: %v", sf.w.lines())
	}
	if _, err := os.Stat(sf.w.path("alpha", "kube", "cluster")); !os.IsNotExist(err) {
		t.Fatalf("kube_a not undone: %v", err)
	}
	if _, err := os.Stat(sf.w.path("alpha", "net", "n2")); err != nil {
		t.Fatalf("network layer was touched: %v", err)
	}
	// Fixed, the next run applies the cluster layer and leaves network be.
	sf.w.clearKnob("config_kube_b")
	before := sf.w.count("apply:net_node@n1")
	if run := sf.apply(t, messages.SetupRequest{}); run.Status != messages.RunSucceeded || sf.w.count("apply:net_node@n1") != before {
		t.Fatalf("after the fix: %s", dump(run))
	}
}

func TestSetupVerificationGatesLayers(t *testing.T) {
	sf := newSetupFleet(t)
	// net_node says it created its file but does not: the network layer
	// does not verify, and the cluster layer never starts.
	sf.w.setKnob(t, "hollow_net_node", "")
	run := sf.apply(t, messages.SetupRequest{})
	if run.Status != messages.RunFailed || layerOf(run, "network").Status != "unhealthy" || layerOf(run, "cluster").Status != "pending" {
		t.Fatalf("run: %s", dump(run))
	}
	if !bytes.Contains(layerOf(run, "network").Verification, []byte(`"unhealthy"`)) || sf.w.count("start:kube_a@n1") != 0 {
		t.Fatalf("verification: %s\n%v", layerOf(run, "network").Verification, sf.w.lines())
	}
}

// A layer that needs a moment after its steps to work (here: net_node's
// files appear only after it returned) is verified again until it is
// healthy, within Options.SetupVerifySettle, instead of failing the run.
func TestSetupVerificationSettles(t *testing.T) {
	sf := newSetupFleetSettle(t, 20*time.Second)
	sf.w.setKnob(t, "hollow_net_node", "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if sf.w.count("apply:net_node@n1") > 0 && sf.w.count("apply:net_node@n2") > 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, n := range []string{"n1", "n2"} {
			os.MkdirAll(sf.w.path("alpha", "net"), 0o700)
			os.WriteFile(sf.w.path("alpha", "net", n), []byte(n), 0o600)
		}
	}()
	run := sf.apply(t, messages.SetupRequest{})
	<-done
	if run.Status != messages.RunSucceeded || layerOf(run, "network").Status != "verified" {
		t.Fatalf("a layer that settles: %s", dump(run))
	}
}

func TestSetupResumeAfterRestart(t *testing.T) {
	sf := newSetupFleet(t)
	sf.w.setKnob(t, "block_kube_b", "")
	id := sf.start(t, messages.SetupRequest{})
	poll.Until(t, 30*time.Second, "kube_b started on both nodes", func() bool {
		return sf.w.count("start:kube_b@n1") == 1 && sf.w.count("start:kube_b@n2") == 1
	})
	// One run per cluster: a second is refused, naming the first.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := sf.cli.SetupApply(ctx, messages.SetupRequest{Spec: sf.spec})
	wantAPIError(t, err, messages.CodeConflict, id, "second run")
	// The controller goes away mid-step; kube_b finishes on the nodes
	// meanwhile; the restarted controller resumes the run: kube_b is
	// re-planned (unchanged) and nothing is applied twice.
	sf.restartAfter(func() { sf.w.clearKnob("block_kube_b") }, "kube_b applied on both nodes", func() bool {
		return sf.w.count("apply:kube_b@n1") == 1 && sf.w.count("apply:kube_b@n2") == 1
	})
	run := sf.wait(t, id)
	if run.Status != messages.RunSucceeded {
		t.Fatalf("resumed run: %s", dump(run))
	}
	for _, l := range sf.w.lines() {
		if strings.HasPrefix(l, "apply:") && sf.w.count(l) != 1 {
			t.Fatalf("%s done %d times: %v", l, sf.w.count(l), sf.w.lines())
		}
	}
	kb := stepRows(layerOf(run, "cluster"), "kube_b")
	if kb["n1"].Outcome != "unchanged" || kb["n2"].Outcome != "unchanged" {
		t.Fatalf("kube_b after resume: %+v", kb)
	}
	if net := stepRows(layerOf(run, "network"), "net_node"); net["n1"].Outcome != "applied" {
		t.Fatalf("rows before the restart kept: %s", dump(run))
	}
}

func TestSetupInvalidSpecDispatchesNothing(t *testing.T) {
	sf := newSetupFleet(t)
	bad := sf.spec
	bad.Clusters = append([]messages.FleetCluster(nil), sf.spec.Clusters...)
	bad.Clusters[0].Nodes = []messages.FleetNode{{Name: "n1", Role: "boss"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, call := range []func() error{
		func() error { _, err := sf.cli.SetupApply(ctx, messages.SetupRequest{Spec: bad}); return err },
		func() error { _, err := sf.cli.SetupPlan(ctx, messages.SetupRequest{Spec: bad}); return err },
	} {
		wantAPIError(t, call(), messages.CodeBadRequest, `clusters[0].nodes[0].role: "boss"`, "invalid spec")
	}
	if _, err := sf.cli.SetupStatus(ctx, ""); err == nil {
		t.Fatal("a run was recorded for an invalid spec")
	}
	if len(sf.w.lines()) != 0 {
		t.Fatalf("something ran: %v", sf.w.lines())
	}
}

func TestSetupResumeDuringRollback(t *testing.T) {
	sf := newSetupFleet(t)
	sf.w.setKnob(t, "config_kube_b", "")
	sf.w.setKnob(t, "block_undo_kube_a", "")
	id := sf.start(t, messages.SetupRequest{})
	poll.Until(t, 30*time.Second, "kube_a being undone", func() bool { return sf.w.count("undo-start:kube_a@n1") == 1 })
	// The controller stops mid-rollback; meanwhile the fix lands. The
	// resumed run goes on undoing: it does not retry kube_b.
	sf.restartAfter(func() { sf.w.clearKnob("config_kube_b"); sf.w.clearKnob("block_undo_kube_a") },
		"undo finished on the node", func() bool { return sf.w.count("undo:kube_a@n1") == 1 })
	run := sf.wait(t, id)
	if run.Status != messages.RunRolledBack || layerOf(run, "cluster").Status != "rolled_back" || layerOf(run, "network").Status != "verified" {
		t.Fatalf("run: %s", dump(run))
	}
	if sf.w.count("start:kube_b@n1") != 1 || sf.w.count("apply:kube_b@n1") != 0 || sf.w.count("undo:kube_a@n1") != 1 {
		t.Fatalf("log: %v", sf.w.lines())
	}
	if a := stepRows(layerOf(run, "cluster"), "kube_a")["n1"]; a.Outcome != "undone" {
		t.Fatalf("kube_a: %+v", a)
	}
}

func TestSetupRetriesExhausted(t *testing.T) {
	sf := newSetupFleet(t)
	// kube_a's endpoint keeps refusing: 3 attempts with backoff, then the
	// layer is rolled back (nothing of it was applied) and the run says so.
	sf.w.setKnob(t, "retry_kube_a", "100")
	run := sf.apply(t, messages.SetupRequest{})
	a := stepRows(layerOf(run, "cluster"), "kube_a")["n1"]
	if run.Status != messages.RunRolledBack || a.Attempts != 3 || a.Outcome != "failed" ||
		!strings.Contains(a.Error, "retryable: ") || !strings.Contains(a.Error, "connection refused") || !strings.Contains(a.Error, "(after 3 attempts, backoff ") {
		t.Fatalf("run: %s", dump(run))
	}
	if sf.w.count("start:kube_a@n1") != 3 || sf.w.count("start:kube_b@n1") != 0 {
		t.Fatalf("log: %v", sf.w.lines())
	}
	t.Logf("kube_a: %s", a.Error)
}
