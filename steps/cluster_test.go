package steps

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
	"github.com/guildnet/metaguildnet/messages"
)

// clusterWorld is a bare cluster: a live control plane (kube-apiserver,
// kube-controller-manager, kube-scheduler, KWOK) with nothing of GuildNet
// in it, and one Talos apid stand-in per node in maintenance mode. When a
// node is bootstrapped its Kubernetes Node is registered (KWOK plays its
// kubelet) and, on the control plane, CoreDNS is deployed, as Talos does.
type clusterWorld struct {
	kube   *testenv.Kube
	cs     *kubernetes.Clientset
	dyn    dynamic.Interface
	nodes  map[string]*talosstandin.Server
	spec   messages.FleetCluster
	secret string // the controller's secrets dir of the cluster
	states map[string]string

	mu     sync.Mutex
	saved  map[string]string // the controller's sealed outputs
	errs   []error
	kubeCA []byte
}

func registerNode(ctx context.Context, cs *kubernetes.Clientset, name, role string) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/os": "linux", "kubernetes.io/hostname": name, "node-role.kubernetes.io/" + role: "",
	}}}
	n.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
	n.Status.Capacity = n.Status.Allocatable
	if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return nil
}

func deployCoreDNS(ctx context.Context, cs *kubernetes.Clientset) error {
	labels := map[string]string{"k8s-app": "kube-dns"}
	two := int32(2)
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: "kube-system", Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &two, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "coredns", Image: "registry.k8s.io/coredns/coredns:v1.11.1"}}}}}}
	if _, err := cs.AppsV1().Deployments("kube-system").Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("deploy CoreDNS: %w", err)
	}
	return nil
}

func startClusterWorld(t *testing.T, ctx context.Context, roles map[string]string, patches []string) *clusterWorld {
	t.Helper()
	testenv.Require(t, testenv.NeedKube, testenv.NeedControlPlane)
	k, err := testenv.StartKube(ctx, testenv.KubeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	cp, err := k.StartControlPlane(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(k.ControlPlaneLogs())
		}
	})
	w := &clusterWorld{kube: k, nodes: map[string]*talosstandin.Server{}, saved: map[string]string{}, states: map[string]string{}}
	if w.cs, err = kubernetes.NewForConfig(k.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	if w.dyn, err = dynamic.NewForConfig(k.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	kc, err := os.ReadFile(k.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	onState := func(node, role, state string) {
		w.mu.Lock()
		w.states[node] = state
		w.mu.Unlock()
		if state != talosstandin.StateBootstrapped {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := registerNode(ctx, w.cs, node, role)
		if err == nil && role == talosstandin.RoleControlPlane {
			err = deployCoreDNS(ctx, w.cs)
		}
		if err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, err)
			w.mu.Unlock()
		}
	}
	cl := talosstandin.NewCluster()
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range roles {
			if !yield(n) {
				return
			}
		}
	})
	w.spec = messages.FleetCluster{Name: "alpha", Cluster: messages.FleetKube{Provider: ProviderTalos,
		Talos:  messages.FleetTalos{Endpoint: k.URL(), ConfigPatches: patches},
		Addons: messages.FleetAddons{Namespaces: []string{"apps"}}}}
	for _, n := range names {
		s, err := talosstandin.Start(talosstandin.Options{Name: n, Maintenance: true, Cluster: cl, Kubeconfig: kc, OnState: onState})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		w.nodes[n] = s
		w.spec.Nodes = append(w.spec.Nodes, messages.FleetNode{Name: n, Role: roles[n], TalosEndpoint: s.Endpoint()})
	}
	// Control-plane nodes first, as the runner orders them.
	slices.SortStableFunc(w.spec.Nodes, func(a, b messages.FleetNode) int {
		return boolInt(b.Role == messages.RoleControlPlane) - boolInt(a.Role == messages.RoleControlPlane)
	})
	w.secret = filepath.Join(t.TempDir(), "secrets", "alpha")
	return w
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// env is the Env a node's agent would build; stateDir per node.
func (w *clusterWorld) env(t *testing.T, node string) *Env {
	t.Helper()
	var fn messages.FleetNode
	for _, n := range w.spec.Nodes {
		if n.Name == node {
			fn = n
		}
	}
	dir := t.TempDir()
	return &Env{Node: node, Cluster: w.spec.Name, Role: fn.Role, StateDir: dir, Spec: w.spec,
		Settings: config.Settings{"TALOS_ENDPOINT": fn.TalosEndpoint}}
}

// seal runs the step's Seal as the controller does.
func (w *clusterWorld) seal(ctx context.Context, s *Step, env *Env) error {
	env.Sealed = nil
	if s.Seal == nil {
		return nil
	}
	var fn messages.FleetNode
	for _, n := range w.spec.Nodes {
		if n.Name == env.Node {
			fn = n
		}
	}
	sealed, err := s.Seal(ctx, &SealEnv{Spec: env.Spec, Node: fn, Dir: w.secret, Saved: func(key string) (string, bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		v, ok := w.saved[key]
		return v, ok
	}})
	env.Sealed = sealed
	return err
}

// keep does what the controller does with Applied.Sealed.
func (w *clusterWorld) keep(a Applied) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, v := range a.Sealed {
		w.saved[k] = v
	}
}

// where is the env a step runs in: cluster steps on the first control
// plane, node steps on every node it applies to.
func (w *clusterWorld) where(t *testing.T, s *Step, envs map[string]*Env) []*Env {
	var out []*Env
	for _, n := range w.spec.Nodes {
		if s.Scope == ScopeCluster {
			if n.Role == messages.RoleControlPlane {
				return []*Env{envs[n.Name]}
			}
			continue
		}
		if s.AppliesTo(n.Role) {
			out = append(out, envs[n.Name])
		}
	}
	return out
}

type stepRun struct{ step, node, action, diff string }

func (w *clusterWorld) planAll(t *testing.T, ctx context.Context, reg *Registry, envs map[string]*Env) []stepRun {
	t.Helper()
	var out []stepRun
	for _, s := range reg.Layer(messages.LayerCluster) {
		for _, env := range w.where(t, &s, envs) {
			if err := w.seal(ctx, &s, env); err != nil {
				t.Fatalf("seal %s for %s: %v", s.Name, env.Node, err)
			}
			p, err := s.Plan(ctx, env)
			if err != nil {
				t.Fatalf("plan %s on %s: %v", s.Name, env.Node, err)
			}
			out = append(out, stepRun{s.Name, env.Node, p.Action, p.Diff})
		}
	}
	return out
}

func (w *clusterWorld) applyAll(t *testing.T, ctx context.Context, reg *Registry, envs map[string]*Env) []stepRun {
	t.Helper()
	var out []stepRun
	for _, s := range reg.Layer(messages.LayerCluster) {
		for _, env := range w.where(t, &s, envs) {
			if s.Prereqs != nil {
				if err := s.Prereqs(ctx, env); err != nil {
					t.Fatalf("prereqs of %s on %s: %v", s.Name, env.Node, err)
				}
			}
			if err := w.seal(ctx, &s, env); err != nil {
				t.Fatalf("seal %s for %s: %v", s.Name, env.Node, err)
			}
			a, err := s.Apply(ctx, env)
			if err != nil {
				t.Fatalf("apply %s on %s: %v", s.Name, env.Node, err)
			}
			w.keep(a)
			out = append(out, stepRun{s.Name, env.Node, a.Action, a.Diff})
		}
	}
	return out
}

// resourceVersions of everything the cluster steps own.
func (w *clusterWorld) resourceVersions(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	out := map[string]string{}
	env := &Env{Spec: w.spec}
	var all []kobj
	for _, f := range []objectsFunc{namespaceObjects, guildnetCRDObjects, metalLBObjects} {
		objs, _ := f(env)
		all = append(all, objs...)
	}
	for _, o := range all {
		u, err := o.ri(w.dyn).Get(ctx, o.u.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s: %v", o, err)
		}
		out[o.String()] = u.GetResourceVersion()
	}
	return out
}

func fileTimes(t *testing.T, envs map[string]*Env) map[string]time.Time {
	out := map[string]time.Time{}
	for _, env := range envs {
		for _, f := range []string{stateKubeconfigFile, stateTalosconfigFile} {
			st, err := os.Stat(filepath.Join(env.StateDir, f))
			if err != nil {
				t.Fatalf("state file %s of %s: %v", f, env.Node, err)
			}
			out[env.Node+"/"+f] = st.ModTime()
		}
	}
	return out
}

func runChecks(t *testing.T, ctx context.Context, env *Env, names ...string) {
	t.Helper()
	sel, err := checks.Select(checks.BuiltinChecks(), checks.Selection{Names: names})
	if err != nil {
		t.Fatal(err)
	}
	settings := config.Settings{"KUBECONFIG": filepath.Join(env.StateDir, stateKubeconfigFile),
		"TALOSCONFIG": filepath.Join(env.StateDir, stateTalosconfigFile)}
	res := checks.RunChecks(ctx, &checks.Env{Node: env.Node, Cluster: env.Cluster, Role: env.Role, Settings: settings}, sel, checks.RunOptions{})
	for _, r := range res {
		if slices.Contains(names, r.Name) && r.Status != messages.CheckPass {
			t.Errorf("check %s: %s %s", r.Name, r.Status, r.Message)
		}
	}
}

func changed(runs []stepRun) []string {
	var out []string
	for _, r := range runs {
		if r.action != messages.ActionUnchanged {
			out = append(out, r.step+"@"+r.node+" "+r.action+": "+r.diff)
		}
	}
	return out
}

// TestClusterLayer brings a bare 3-node Talos cluster up with the cluster
// family's steps against the real test world, then checks idempotence
// (nothing written on a second apply), repair of a deleted MetalLB pool,
// Undo, and how a refusing apid and an invalid patch are classified.
func TestClusterLayer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	w := startClusterWorld(t, ctx, map[string]string{"cp1": messages.RoleControlPlane, "w1": messages.RoleWorker, "w2": messages.RoleWorker}, nil)
	// No ~/.guildnet/kubeconfig of the machine's (after the world found its
	// binaries under the real HOME).
	t.Setenv("HOME", t.TempDir())
	reg := Builtin()
	envs := map[string]*Env{}
	for _, n := range w.spec.Nodes {
		envs[n.Name] = w.env(t, n.Name)
	}
	cpEnv := envs["cp1"]

	// A bare world: every step plans create (nothing fails for want of
	// what earlier steps will make), and nothing is written by planning.
	plan := w.planAll(t, ctx, reg, envs)
	if len(plan) != 3+1+1+3+3 {
		t.Fatalf("plan of a bare cluster has %d entries: %v", len(plan), plan)
	}
	for _, r := range plan {
		t.Logf("plan %s@%s: %s %s", r.step, r.node, r.action, r.diff)
		if r.action != messages.ActionCreate {
			t.Errorf("plan %s@%s on a bare cluster: %s %s", r.step, r.node, r.action, r.diff)
		}
	}
	for n, s := range w.nodes {
		if s.State() != talosstandin.StateMaintenance {
			t.Fatalf("node %s is %s after a plan", n, s.State())
		}
	}
	// Before kubeconfig_install the add-ons plan create (the cluster layer
	// installs the kubeconfig first); applying one then is blocked.
	ns, _ := reg.Lookup("metallb")
	if _, err := ns.Apply(ctx, cpEnv); Classify(err) != messages.StepErrBlocked {
		t.Fatalf("metallb apply before kubeconfig_install: %v (class %s), want blocked", err, Classify(err))
	}

	start := time.Now()
	first := w.applyAll(t, ctx, reg, envs)
	t.Logf("cluster layer from bare: %v", time.Since(start))
	for _, r := range first {
		t.Logf("apply %s@%s: %s %s", r.step, r.node, r.action, r.diff)
	}
	if len(w.errs) > 0 {
		t.Fatalf("world callbacks: %v", w.errs)
	}
	for n, s := range w.nodes {
		if s.State() != talosstandin.StateBootstrapped || s.AppliedConfigs() != 1 {
			t.Errorf("node %s: %s, config version %d", n, s.State(), s.AppliedConfigs())
		}
	}
	if st, err := os.Stat(filepath.Join(w.secret, TalosSecretsFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secrets bundle: %v %v", st, err)
	}
	for _, env := range envs {
		st, err := os.Stat(filepath.Join(env.StateDir, stateKubeconfigFile))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("kubeconfig on %s: %v %v", env.Node, st, err)
		}
	}
	// The existing cluster checks pass on what setup built.
	runChecks(t, ctx, cpEnv, "metallb_available", "guildnet_crds_established", "coredns_running", "nodes_ready",
		"talos_apid_version", "talos_etcd_members", "talos_services_up")

	// Idempotent for real: plan says unchanged everywhere, and a second
	// apply writes nothing.
	rv := w.resourceVersions(t, ctx)
	times := fileTimes(t, envs)
	if c := changed(w.planAll(t, ctx, reg, envs)); len(c) > 0 {
		t.Fatalf("plan after apply changes %q", c)
	}
	start = time.Now()
	if c := changed(w.applyAll(t, ctx, reg, envs)); len(c) > 0 {
		t.Fatalf("second apply changed %q", c)
	}
	t.Logf("re-apply with nothing to do: %v", time.Since(start))
	if got := w.resourceVersions(t, ctx); !mapsEqual(got, rv) {
		t.Errorf("resourceVersions moved on a no-op apply:\nbefore %v\nafter  %v", rv, got)
	}
	if got := fileTimes(t, envs); !mapsEqual(got, times) {
		t.Error("state files rewritten on a no-op apply")
	}
	for n, s := range w.nodes {
		if s.AppliedConfigs() != 1 {
			t.Errorf("node %s config version %d after a no-op apply", n, s.AppliedConfigs())
		}
	}

	// Break it: delete the pool. Plan says exactly that; apply repairs;
	// undo of that apply deletes what it created.
	pool := kobj{gvrIPPool, newObj("metallb.io/v1beta1", "IPAddressPool", NamespaceMetalLB, DefaultMetalLBPool, nil, nil)}
	if err := pool.ri(w.dyn).Delete(ctx, DefaultMetalLBPool, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got := changed(w.planAll(t, ctx, reg, envs))
	want := []string{"metallb@cp1 create: create IPAddressPool metallb-system/workspaces"}
	if !slices.Equal(got, want) {
		t.Fatalf("plan after deleting the pool: %q, want %q", got, want)
	}
	metallb, _ := reg.Lookup("metallb")
	repair, err := metallb.Apply(ctx, cpEnv)
	if err != nil || repair.Action != messages.ActionCreate {
		t.Fatalf("repair: %+v %v", repair, err)
	}
	if c := changed(w.planAll(t, ctx, reg, envs)); len(c) > 0 {
		t.Fatalf("plan after the repair: %q", c)
	}
	runChecks(t, ctx, cpEnv, "metallb_available")
	undo, _ := json.Marshal(repair.Undo)
	if err := metallb.Undo(ctx, cpEnv, undo); err != nil {
		t.Fatalf("undo the repair: %v", err)
	}
	if _, err := pool.ri(w.dyn).Get(ctx, DefaultMetalLBPool, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("pool after undoing its creation: %v", err)
	}

	// Undo data naming what setup did not apply deletes nothing.
	hostile := json.RawMessage(`{"objects":[{"version":"v1","resource":"namespaces","name":"kube-system","created":true}]}`)
	if err := metallb.Undo(ctx, cpEnv, hostile); err == nil || !strings.Contains(err.Error(), "not applied by") {
		t.Fatalf("undo naming kube-system: %v", err)
	}
	if _, err := w.cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
		t.Fatalf("kube-system after a hostile undo: %v", err)
	}

	// An update is undone by restoring the previous content.
	if _, err := metallb.Apply(ctx, cpEnv); err != nil {
		t.Fatal(err)
	}
	upd := w.spec
	upd.Cluster.Addons.MetalLB.Addresses = []string{"10.0.0.10-10.0.0.20"}
	updEnv := *cpEnv
	updEnv.Spec = upd
	p, err := metallb.Plan(ctx, &updEnv)
	if err != nil || p.Action != messages.ActionUpdate || p.Diff != "update IPAddressPool metallb-system/workspaces" {
		t.Fatalf("plan of a new pool range: %+v %v", p, err)
	}
	a, err := metallb.Apply(ctx, &updEnv)
	if err != nil {
		t.Fatal(err)
	}
	undo, _ = json.Marshal(a.Undo)
	if err := metallb.Undo(ctx, cpEnv, undo); err != nil {
		t.Fatalf("undo the update: %v", err)
	}
	if p, err := metallb.Plan(ctx, cpEnv); err != nil || p.Action != messages.ActionUnchanged {
		t.Fatalf("plan after undoing the update: %+v %v (the old range is back)", p, err)
	}

	// A changed Talos config patch: update through mTLS, undo re-applies
	// the previous config.
	mc, _ := reg.Lookup("talos_machine_config")
	patched := *envs["w1"]
	patched.Spec.Cluster.Talos.ConfigPatches = []string{"machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n"}
	if err := w.seal(ctx, mc, &patched); err != nil {
		t.Fatal(err)
	}
	if p, err := mc.Plan(ctx, &patched); err != nil || p.Action != messages.ActionUpdate {
		t.Fatalf("plan with a new patch: %+v %v", p, err)
	}
	a, err = mc.Apply(ctx, &patched)
	if err != nil || w.nodes["w1"].AppliedConfigs() != 2 {
		t.Fatalf("apply with a new patch: %v, version %d", err, w.nodes["w1"].AppliedConfigs())
	}
	undo, _ = json.Marshal(a.Undo)
	if strings.Contains(string(undo), "BEGIN") {
		t.Fatal("the undo data carries key material")
	}
	if err := mc.Undo(ctx, &patched, undo); err != nil {
		t.Fatalf("undo of the patch: %v", err)
	}
	orig := envs["w1"]
	if err := w.seal(ctx, mc, orig); err != nil {
		t.Fatal(err)
	}
	if p, err := mc.Plan(ctx, orig); err != nil || p.Action != messages.ActionUnchanged {
		t.Fatalf("plan after the undo: %+v %v", p, err)
	}

	// apid refusing: the step's error is retryable.
	w.nodes["cp1"].SetRefusing(true)
	if err := w.seal(ctx, mc, cpEnv); err != nil {
		t.Fatal(err)
	}
	_, err = mc.Apply(ctx, cpEnv)
	if Classify(err) != messages.StepErrRetryable {
		t.Errorf("apply against a refusing apid: %v (class %q), want retryable", err, Classify(err))
	}
	w.nodes["cp1"].SetRefusing(false)
	if _, err := mc.Apply(ctx, cpEnv); err != nil {
		t.Errorf("apply once apid answers again: %v", err)
	}
}

// TestInvalidPatchRefusedByNode: a patch that makes the config invalid
// is refused by the node's apid; the step fails as a config error (not
// retried) that says what to fix, and the node stays in maintenance.
func TestInvalidPatchRefusedByNode(t *testing.T) {
	cl := talosstandin.NewCluster()
	s, err := talosstandin.Start(talosstandin.Options{Name: "cp1", Maintenance: true, Cluster: cl})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	spec := messages.FleetCluster{Name: "alpha", Nodes: []messages.FleetNode{{Name: "cp1", Role: messages.RoleControlPlane, TalosEndpoint: s.Endpoint()}},
		Cluster: messages.FleetKube{Provider: ProviderTalos, Talos: messages.FleetTalos{
			ConfigPatches: []string{"machine:\n  kubelet:\n    nodeIP:\n      validSubnets: [\"not-a-cidr\"]\n"}}}}
	step, _ := Builtin().Lookup("talos_machine_config")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sealed, err := step.Seal(ctx, &SealEnv{Spec: spec, Node: spec.Nodes[0], Dir: filepath.Join(t.TempDir(), "alpha")})
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	env := &Env{Node: "cp1", Cluster: "alpha", Role: messages.RoleControlPlane, StateDir: t.TempDir(), Spec: spec, Sealed: sealed}
	_, err = step.Apply(ctx, env)
	if Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "not-a-cidr") || !strings.Contains(err.Error(), "configPatches") {
		t.Fatalf("apply of an invalid patch: %v (class %q), want a config error naming the patch", err, Classify(err))
	}
	if s.State() != talosstandin.StateMaintenance || s.AppliedConfigs() != 0 {
		t.Fatalf("node after the refusal: %s, version %d", s.State(), s.AppliedConfigs())
	}
}

// TestSecretsBundleOnce: the bundle and talosconfig are created once,
// 0600, and every Seal after gives the same machine config.
func TestSecretsBundleOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "alpha")
	spec := messages.FleetCluster{Name: "alpha", Nodes: []messages.FleetNode{{Name: "cp1", Role: messages.RoleControlPlane, TalosEndpoint: "127.0.0.1:50000"}}}
	var wg sync.WaitGroup
	outs := make([]map[string]string, 4)
	for i := range outs {
		wg.Go(func() {
			outs[i], _ = sealMachineConfig(t.Context(), &SealEnv{Spec: spec, Node: spec.Nodes[0], Dir: dir})
		})
	}
	wg.Wait()
	for i := range outs {
		if outs[i][SealedMachineConfig] == "" || outs[i][SealedMachineConfig] != outs[0][SealedMachineConfig] || outs[i][SealedTalosconfig] != outs[0][SealedTalosconfig] {
			t.Fatalf("seal %d differs or is empty", i)
		}
	}
	for _, f := range []string{TalosSecretsFile, TalosconfigFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	if !strings.Contains(outs[0][SealedMachineConfig], "type: controlplane") {
		t.Fatal("cp1's config is not a controlplane config")
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// TestKubernetesProvider: with provider kubernetes the Talos steps have
// nothing to do and kubeconfig_install writes the kubeconfig that
// kubeconfigFrom names, resolved on the agent; undo removes it.
func TestKubernetesProvider(t *testing.T) {
	const kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: c\n  context:\n    cluster: c\ncurrent-context: c\n"
	spec := messages.FleetCluster{Name: "beta", Nodes: []messages.FleetNode{{Name: "n1", Role: messages.RoleControlPlane}},
		Cluster: messages.FleetKube{Provider: ProviderKubernetes, KubeconfigFrom: "env:BETA_KUBECONFIG"}}
	reg := Builtin()
	env := &Env{Node: "n1", Cluster: "beta", Role: messages.RoleControlPlane, StateDir: t.TempDir(), Spec: spec,
		Secret: func(ref messages.SecretRef) (string, error) {
			if ref != "env:BETA_KUBECONFIG" {
				return "", fmt.Errorf("unknown secret %s", ref)
			}
			return kc, nil
		}}
	ctx := t.Context()
	for _, name := range []string{"talos_machine_config", "talos_bootstrap", "kubeconfig_fetch"} {
		s, _ := reg.Lookup(name)
		if s.Seal != nil {
			if sealed, err := s.Seal(ctx, &SealEnv{Spec: spec, Node: spec.Nodes[0], Dir: t.TempDir()}); err != nil || len(sealed) != 0 {
				t.Fatalf("seal %s: %v %v", name, sealed, err)
			}
		}
		if s.Prereqs != nil {
			if err := s.Prereqs(ctx, env); err != nil {
				t.Fatalf("prereqs %s: %v", name, err)
			}
		}
		p, err := s.Plan(ctx, env)
		if err != nil || p.Action != messages.ActionUnchanged {
			t.Fatalf("plan %s: %+v %v", name, p, err)
		}
	}
	inst, _ := reg.Lookup("kubeconfig_install")
	sealed, err := inst.Seal(ctx, &SealEnv{Spec: spec, Node: spec.Nodes[0], Dir: t.TempDir()})
	if err != nil || len(sealed) != 0 {
		t.Fatalf("seal kubeconfig_install: %v %v (the secret must not travel from the controller)", sealed, err)
	}
	if p, err := inst.Plan(ctx, env); err != nil || p.Action != messages.ActionCreate {
		t.Fatalf("plan: %+v %v", p, err)
	}
	a, err := inst.Apply(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(env.StateDir, stateKubeconfigFile)
	if b, err := os.ReadFile(path); err != nil || string(b) != kc {
		t.Fatalf("state kubeconfig: %q %v", b, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if p, err := inst.Plan(ctx, env); err != nil || p.Action != messages.ActionUnchanged {
		t.Fatalf("plan after apply: %+v %v", p, err)
	}
	undo, _ := json.Marshal(a.Undo)
	if strings.Contains(string(undo), "server:") {
		t.Fatal("undo data carries the kubeconfig")
	}
	if err := inst.Undo(ctx, env, undo); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("kubeconfig after undo: %v", err)
	}

	// No kubeconfigFrom: a config error that says what to set.
	env.Spec.Cluster.KubeconfigFrom = ""
	if _, err := inst.Plan(ctx, env); Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "kubeconfigFrom") {
		t.Fatalf("plan without kubeconfigFrom: %v", err)
	}
}

func TestTalosPrereqsAndPatches(t *testing.T) {
	spec := messages.FleetCluster{Name: "alpha", Nodes: []messages.FleetNode{{Name: "cp1", Role: messages.RoleControlPlane}}}
	step, _ := Builtin().Lookup("talos_machine_config")
	err := step.Prereqs(t.Context(), &Env{Node: "cp1", Spec: spec})
	if Classify(err) != messages.StepErrBlocked || !strings.Contains(err.Error(), "TALOS_ENDPOINT") || !strings.Contains(err.Error(), "talosEndpoint") {
		t.Fatalf("prereqs without an endpoint: %v", err)
	}
	if err := step.Prereqs(t.Context(), &Env{Node: "cp1", Spec: spec, Settings: config.Settings{"TALOS_ENDPOINT": "127.0.0.1:50000"}}); err != nil {
		t.Fatalf("prereqs with TALOS_ENDPOINT: %v", err)
	}
	tests := []struct {
		patches []string
		bad     string
	}{
		{[]string{"machine:\n  sysctls:\n    a: \"1\"\n"}, ""},
		{[]string{"machine:\n  sysctls:\n    a: \"1\"\n", "machine: [unclosed\n"}, "configPatches[1]"},
	}
	for _, tt := range tests {
		err := ValidateTalosPatches(tt.patches)
		if (tt.bad == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.bad)) {
			t.Errorf("ValidateTalosPatches(%q) = %v, want %q", tt.patches, err, tt.bad)
		}
	}
}

// TestBuiltinClusterSteps: the cluster family's step names (a contract
// with the runner) are registered in run order, in layer cluster.
func TestBuiltinClusterSteps(t *testing.T) {
	var got []string
	for _, s := range Builtin().Layer(messages.LayerCluster) {
		got = append(got, s.Name)
	}
	want := []string{"talos_machine_config", "talos_bootstrap", "kubeconfig_fetch", "kubeconfig_install", "k8s_namespaces", "guildnet_crds", "metallb"}
	if !slices.Equal(got, want) {
		t.Fatalf("cluster steps %q, want %q", got, want)
	}
}
