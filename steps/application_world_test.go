package steps_test

// The database and application steps against the test world's real
// components: etcd + kube-apiserver with the live control plane
// (kube-controller-manager, kube-scheduler, KWOK making pods Running) and
// the RethinkDB stand-in driven by rethinkdb-go. Each step goes Plan ->
// Apply -> Plan unchanged with nothing written -> broken -> Plan says
// exactly that -> Apply repairs -> Undo. Then the existing database and
// application checks run against what the steps made.

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

func init() { r.Log.Out = io.Discard }

// appWorld is a live control plane with one schedulable node, and a
// RethinkDB stand-in; stopped at the end of the test.
type appWorld struct {
	kube *testenv.Kube
	cs   kubernetes.Interface
	rdb  *rdbstandin.Server
}

func startAppWorld(t *testing.T) *appWorld {
	t.Helper()
	testenv.Require(t, testenv.NeedKube, testenv.NeedControlPlane)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
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
	cs, err := kubernetes.NewForConfig(k.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "w1", Labels: map[string]string{"kubernetes.io/hostname": "w1"}},
		Status:     corev1.NodeStatus{Allocatable: res, Capacity: res},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rdb, err := rdbstandin.Start(rdbstandin.Options{Password: "rdb-pw", Databases: map[string][]string{"org_keep__main": {"_info"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return &appWorld{kube: k, cs: cs, rdb: rdb}
}

func (w *appWorld) env(t *testing.T) *steps.Env {
	return &steps.Env{
		Node: "cp1", Cluster: "alpha", Role: messages.RoleControlPlane,
		Settings: config.Settings{"KUBECONFIG": w.kube.KubeconfigPath(), "RDB_PASS_FOR_TEST": "rdb-pw"},
		StateDir: t.TempDir(),
		Spec: messages.FleetCluster{
			Name:    "alpha",
			Nodes:   []messages.FleetNode{{Name: "cp1", Role: messages.RoleControlPlane}, {Name: "h1", Role: messages.RoleHostApp, Hostname: "guildnet-host"}},
			Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:1"},
			Application: messages.FleetApplication{RethinkDB: messages.FleetRethinkDB{
				Addr: w.rdb.Addr(), PasswordFrom: "env:RDB_PASS_FOR_TEST", Databases: []string{"org_demo__main", "org_keep__main"},
			}},
		},
		Secret: func(ref messages.SecretRef) (string, error) {
			name, ok := strings.CutPrefix(string(ref), "env:")
			if !ok {
				return "", os.ErrNotExist
			}
			return map[string]string{"RDB_PASS_FOR_TEST": "rdb-pw", "TS_KEY_FOR_TEST": "tskey-secret"}[name], nil
		},
	}
}

func step(t *testing.T, name string) *steps.Step {
	t.Helper()
	s, ok := steps.Builtin().Lookup(name)
	if !ok {
		t.Fatalf("step %s not registered", name)
	}
	return s
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func plan(t *testing.T, s *steps.Step, env *steps.Env) steps.Plan {
	t.Helper()
	p, err := s.Plan(ctxT(t, 30*time.Second), env)
	if err != nil {
		t.Fatalf("%s Plan: %v", s.Name, err)
	}
	return p
}

func apply(t *testing.T, s *steps.Step, env *steps.Env) (steps.Applied, json.RawMessage) {
	t.Helper()
	start := time.Now()
	a, err := s.Apply(ctxT(t, 3*time.Minute), env)
	if err != nil {
		t.Fatalf("%s Apply: %v", s.Name, err)
	}
	t.Logf("%s Apply: %s (%s) in %v", s.Name, a.Action, a.Diff, time.Since(start).Round(time.Millisecond))
	raw, err := json.Marshal(a.Undo)
	if err != nil {
		t.Fatal(err)
	}
	return a, raw
}

// versions are the resourceVersions of the objects a step keeps.
func (w *appWorld) versions(t *testing.T) map[string]string {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	out := map[string]string{}
	add := func(key string, m metav1.Object, err error) {
		if err == nil {
			out[key] = m.GetResourceVersion()
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	svc, err := w.cs.CoreV1().Services("default").Get(ctx, "rethinkdb", metav1.GetOptions{})
	add("svc", svc, err)
	sts, err := w.cs.AppsV1().StatefulSets("default").Get(ctx, "rethinkdb", metav1.GetOptions{})
	add("sts", sts, err)
	ns, err := w.cs.CoreV1().Namespaces().Get(ctx, "guildnet-system", metav1.GetOptions{})
	add("ns", ns, err)
	sa, err := w.cs.CoreV1().ServiceAccounts("guildnet-system").Get(ctx, "workspace-operator", metav1.GetOptions{})
	add("sa", sa, err)
	cr, err := w.cs.RbacV1().ClusterRoles().Get(ctx, "workspace-operator", metav1.GetOptions{})
	add("cr", cr, err)
	crb, err := w.cs.RbacV1().ClusterRoleBindings().Get(ctx, "workspace-operator", metav1.GetOptions{})
	add("crb", crb, err)
	dep, err := w.cs.AppsV1().Deployments("guildnet-system").Get(ctx, "workspace-operator", metav1.GetOptions{})
	add("dep", dep, err)
	return out
}

func runChecks(t *testing.T, env *steps.Env, list []checks.Check, settings config.Settings) map[string]messages.CheckResult {
	t.Helper()
	// The layer's checks depend on the cluster layer's (kube_api_ready).
	list = slices.Concat(checks.ClusterChecks(), list)
	res := checks.RunChecks(ctxT(t, time.Minute), &checks.Env{Node: env.Node, Cluster: env.Cluster, Role: env.Role, Settings: settings}, list, checks.RunOptions{})
	out := map[string]messages.CheckResult{}
	for _, r := range res {
		out[r.Name] = r
	}
	return out
}

func TestDatabaseAndApplicationStepsAgainstWorld(t *testing.T) {
	w := startAppWorld(t)
	env := w.env(t)

	t.Run("rethinkdb_service", func(t *testing.T) {
		s := step(t, "rethinkdb_service")
		if err := s.Prereqs(ctxT(t, time.Second), env); err != nil {
			t.Fatalf("Prereqs with a kubeconfig: %v", err)
		}
		if p := plan(t, s, env); p.Action != messages.ActionCreate || !strings.Contains(p.Diff, "create Service default/rethinkdb") || !strings.Contains(p.Diff, "create StatefulSet default/rethinkdb") {
			t.Fatalf("first plan = %+v", p)
		}
		a, undo := apply(t, s, env)
		if a.Action != messages.ActionCreate {
			t.Fatalf("apply action %s", a.Action)
		}
		before := w.versions(t)
		if p := plan(t, s, env); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after apply = %+v, want unchanged", p)
		}
		if a2, _ := apply(t, s, env); a2.Action != messages.ActionUnchanged || a2.Undo != nil {
			t.Fatalf("second apply = %+v, want unchanged with nothing to undo", a2)
		}
		if after := w.versions(t); after["svc"] != before["svc"] || after["sts"] != before["sts"] {
			t.Fatalf("an unchanged apply wrote: resourceVersions %v -> %v", before, after)
		}
		svc, err := w.cs.CoreV1().Services("default").Get(ctxT(t, 5*time.Second), "rethinkdb", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.Labels["app"] != "rethinkdb" || svc.Spec.Ports[0].Name != "client" || svc.Spec.Ports[0].Port != 28015 ||
			svc.ManagedFields[0].Manager != "metaguildnet" {
			t.Fatalf("Service = labels %v ports %+v managers %+v", svc.Labels, svc.Spec.Ports, svc.ManagedFields)
		}
		// Break it: someone deletes the Service. Plan names exactly that.
		if err := w.cs.CoreV1().Services("default").Delete(ctxT(t, 5*time.Second), "rethinkdb", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if p := plan(t, s, env); p.Action != messages.ActionCreate || p.Diff != "create Service default/rethinkdb" {
			t.Fatalf("plan after deleting the Service = %+v", p)
		}
		if a, _ := apply(t, s, env); a.Action != messages.ActionCreate {
			t.Fatalf("repair = %+v", a)
		}
		if p := plan(t, s, env); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after repair = %+v", p)
		}

		// The existing database checks on what the step made (pods from
		// the real StatefulSet controller, Running by KWOK).
		chk := runChecks(t, env, checks.DatabaseChecks(), config.Settings{"KUBECONFIG": w.kube.KubeconfigPath(), "RETHINKDB_ADDR": w.rdb.Addr(), "RETHINKDB_PASS": "rdb-pw"})
		if c := chk["rethinkdb_pods_ready"]; c.Status != messages.CheckPass {
			t.Fatalf("rethinkdb_pods_ready = %s: %s", c.Status, c.Message)
		}

		t.Run("undo", func(t *testing.T) {
			e2 := *env
			if err := s.Undo(ctxT(t, 30*time.Second), &e2, undo); err != nil {
				t.Fatal(err)
			}
			if v := w.versions(t); v["svc"] != "" || v["sts"] != "" {
				t.Fatalf("after undo still there: %v", v)
			}
			// Put it back for the steps after.
			apply(t, s, env)
		})
	})

	t.Run("rethinkdb_databases", func(t *testing.T) {
		s := step(t, "rethinkdb_databases")
		p := plan(t, s, env)
		want := "create database org_demo__main (_schemas, _audit, _info); create tables org_keep__main._schemas, org_keep__main._audit"
		if p.Action != messages.ActionCreate || p.Diff != want {
			t.Fatalf("first plan = %+v, want create %q", p, want)
		}
		_, undo := apply(t, s, env)
		dbs := w.rdb.Databases()
		if !slices.Equal(dbs["org_demo__main"], []string{"_audit", "_info", "_schemas"}) || !slices.Equal(dbs["org_keep__main"], []string{"_audit", "_info", "_schemas"}) {
			t.Fatalf("after apply: %v", dbs)
		}
		if p := plan(t, s, env); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after apply = %+v", p)
		}
		if a, _ := apply(t, s, env); a.Action != messages.ActionUnchanged || a.Undo != nil {
			t.Fatalf("second apply = %+v", a)
		}
		chk := runChecks(t, env, checks.DatabaseChecks(), config.Settings{"KUBECONFIG": w.kube.KubeconfigPath(), "RETHINKDB_ADDR": w.rdb.Addr(),
			"RETHINKDB_PASS": "rdb-pw", "METAGN_RDB_DATABASES": "org_demo__main,org_keep__main"})
		for _, name := range []string{"rethinkdb_pods_ready", "rethinkdb_address", "rethinkdb_tcp", "rethinkdb_query", "rethinkdb_databases", "rethinkdb_org_tables"} {
			if c := chk[name]; c.Status != messages.CheckPass {
				t.Errorf("check %s = %s: %s", name, c.Status, c.Message)
			}
		}

		// Drop a database: Plan says exactly that, Apply repairs.
		if err := w.rdb.DropDatabase("org_demo__main"); err != nil {
			t.Fatal(err)
		}
		if p := plan(t, s, env); p.Action != messages.ActionCreate || p.Diff != "create database org_demo__main (_schemas, _audit, _info)" {
			t.Fatalf("plan after the drop = %+v", p)
		}
		_, undo2 := apply(t, s, env)
		if p := plan(t, s, env); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after repair = %+v", p)
		}
		// Undo of the repair drops only what the repair created.
		if err := s.Undo(ctxT(t, 10*time.Second), env, undo2); err != nil {
			t.Fatal(err)
		}
		if dbs := w.rdb.Databases(); dbs["org_demo__main"] != nil || len(dbs["org_keep__main"]) != 3 {
			t.Fatalf("after undo of the repair: %v", dbs)
		}
		apply(t, s, env)
		// Undo of the first run: its database and its tables in the
		// database that was there before; org_keep__main._info stays.
		if err := s.Undo(ctxT(t, 10*time.Second), env, undo); err != nil {
			t.Fatal(err)
		}
		if dbs := w.rdb.Databases(); dbs["org_demo__main"] != nil || !slices.Equal(dbs["org_keep__main"], []string{"_info"}) {
			t.Fatalf("after undo: %v", dbs)
		}
		// A wrong password is not retried forever: it fails with RethinkDB's words.
		bad := *env
		bad.Secret = func(messages.SecretRef) (string, error) { return "wrong", nil }
		if _, err := s.Plan(ctxT(t, 10*time.Second), &bad); steps.Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "Wrong password") {
			t.Fatalf("plan with a wrong password: %v", err)
		}
		// An invalid name is a config error naming the field.
		bad = *env
		bad.Spec.Application.RethinkDB.Databases = []string{"org bad"}
		if _, err := s.Plan(ctxT(t, 10*time.Second), &bad); steps.Classify(err) != messages.StepErrConfig || !strings.Contains(err.Error(), "application.rethinkdb.databases[0]") {
			t.Fatalf("invalid name: %v (%s)", err, steps.Classify(err))
		}
	})

	t.Run("workspace_operator", func(t *testing.T) {
		s := step(t, "workspace_operator")
		p := plan(t, s, env)
		if p.Action != messages.ActionCreate || !strings.Contains(p.Diff, "create Deployment guildnet-system/workspace-operator") || !strings.Contains(p.Diff, "create ClusterRoleBinding workspace-operator") {
			t.Fatalf("first plan = %+v", p)
		}
		_, undo := apply(t, s, env)
		dep, err := w.cs.AppsV1().Deployments("guildnet-system").Get(ctxT(t, 5*time.Second), "workspace-operator", metav1.GetOptions{})
		if err != nil || dep.Status.AvailableReplicas != 1 || dep.Status.ObservedGeneration != dep.Generation {
			t.Fatalf("Apply returned before the Deployment was available: %+v, %v", dep.Status, err)
		}
		before := w.versions(t)
		if p := plan(t, s, env); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after apply = %+v", p)
		}
		apply(t, s, env)
		after := w.versions(t)
		for _, k := range []string{"ns", "sa", "cr", "crb", "dep"} {
			if before[k] == "" || before[k] != after[k] {
				t.Fatalf("%s: resourceVersion %q -> %q after an unchanged apply", k, before[k], after[k])
			}
		}
		chk := runChecks(t, env, checks.ApplicationChecks(), config.Settings{"KUBECONFIG": w.kube.KubeconfigPath()})
		if c := chk["operator_available"]; c.Status != messages.CheckPass {
			names := []string{}
			for n, c := range chk {
				names = append(names, n+"="+c.Status)
			}
			t.Fatalf("operator_available = %s: %s (all: %v)", c.Status, c.Message, names)
		}
		// Scale it away: Plan says exactly the replicas.
		ctx := ctxT(t, 10*time.Second)
		sc, err := w.cs.AppsV1().Deployments("guildnet-system").GetScale(ctx, "workspace-operator", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sc.Spec.Replicas = 0
		if _, err := w.cs.AppsV1().Deployments("guildnet-system").UpdateScale(ctx, "workspace-operator", sc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if p := plan(t, s, env); p.Action != messages.ActionUpdate || p.Diff != "update Deployment guildnet-system/workspace-operator (spec.replicas)" {
			t.Fatalf("plan after scaling away = %+v", p)
		}
		_, undoRepair := apply(t, s, env)
		if chk := runChecks(t, env, checks.ApplicationChecks(), config.Settings{"KUBECONFIG": w.kube.KubeconfigPath()}); chk["operator_available"].Status != messages.CheckPass {
			t.Fatalf("operator_available after repair = %+v", chk["operator_available"])
		}
		// Undo of the repair puts the changed field back as it was (0).
		if err := s.Undo(ctxT(t, 30*time.Second), env, undoRepair); err != nil {
			t.Fatal(err)
		}
		if dep, err := w.cs.AppsV1().Deployments("guildnet-system").Get(ctxT(t, 5*time.Second), "workspace-operator", metav1.GetOptions{}); err != nil || *dep.Spec.Replicas != 0 {
			t.Fatalf("after undo of the repair: %v, %v", dep.Spec.Replicas, err)
		}
		if p := plan(t, s, env); p.Diff != "update Deployment guildnet-system/workspace-operator (spec.replicas)" {
			t.Fatalf("plan after undo of the repair = %+v", p)
		}
		apply(t, s, env)
		// An undo record naming anything else is refused, and nothing is touched.
		foreign := json.RawMessage(`{"created":[{"group":"apps","version":"v1","resource":"deployments","namespace":"kube-system","name":"coredns"}]}`)
		if err := s.Undo(ctxT(t, 5*time.Second), env, foreign); err == nil || !strings.Contains(err.Error(), "does not manage") {
			t.Fatalf("undo of a foreign record: %v", err)
		}
		badField := json.RawMessage(`{"updated":[{"group":"apps","version":"v1","resource":"deployments","namespace":"guildnet-system","name":"workspace-operator","fields":[{"path":["metadata","name"],"value":"x"}]}]}`)
		if err := s.Undo(ctxT(t, 5*time.Second), env, badField); err == nil || !strings.Contains(err.Error(), "cannot be put back") {
			t.Fatalf("undo of metadata.name: %v", err)
		}
		if err := s.Undo(ctxT(t, 30*time.Second), env, undo); err != nil {
			t.Fatal(err)
		}
		v := w.versions(t)
		for _, k := range []string{"sa", "cr", "crb", "dep"} {
			if v[k] != "" {
				t.Errorf("%s still there after undo", k)
			}
		}
	})

	t.Run("namespace shared with the cluster layer", func(t *testing.T) {
		// The cluster layer's k8s_namespaces applied the namespace, with a
		// label, under the same field manager: the operator step must not
		// take the label away, nor delete the namespace on undo.
		ctx := ctxT(t, 30*time.Second)
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gn-shared", Labels: map[string]string{"from": "cluster-layer"}}}
		ns.APIVersion, ns.Kind = "v1", "Namespace"
		body, _ := json.Marshal(ns)
		force := true
		if _, err := w.cs.CoreV1().Namespaces().Patch(ctx, "gn-shared", "application/apply-patch+yaml", body, metav1.PatchOptions{FieldManager: "metaguildnet", Force: &force}); err != nil {
			t.Fatal(err)
		}
		e2 := *env
		e2.Spec.Application.Operator.Namespace = "gn-shared"
		s := step(t, "workspace_operator")
		p := plan(t, s, &e2)
		if strings.Contains(p.Diff, "Namespace") {
			t.Fatalf("plan touches the existing namespace: %+v", p)
		}
		_, undo := apply(t, s, &e2)
		if p := plan(t, s, &e2); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan after apply = %+v", p)
		}
		got, err := w.cs.CoreV1().Namespaces().Get(ctx, "gn-shared", metav1.GetOptions{})
		if err != nil || got.Labels["from"] != "cluster-layer" {
			t.Fatalf("namespace after the operator step: %v %v", got.Labels, err)
		}
		if err := s.Undo(ctx, &e2, undo); err != nil {
			t.Fatal(err)
		}
		if got, err := w.cs.CoreV1().Namespaces().Get(ctx, "gn-shared", metav1.GetOptions{}); err != nil || got.DeletionTimestamp != nil {
			t.Fatalf("undo deleted a namespace it did not create: %v %v", got.DeletionTimestamp, err)
		}
	})

	t.Run("no kubeconfig blocks", func(t *testing.T) {
		e2 := *env
		e2.Settings = config.Settings{}
		e2.StateDir = t.TempDir()
		t.Setenv("HOME", t.TempDir())
		err := step(t, "workspace_operator").Prereqs(ctxT(t, time.Second), &e2)
		if steps.Classify(err) != messages.StepErrBlocked || !strings.Contains(err.Error(), "--layer cluster") {
			t.Fatalf("Prereqs without a kubeconfig = %v", err)
		}
		// With the kubeconfig setup left in the state dir, it is found.
		b, err := os.ReadFile(w.kube.KubeconfigPath())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e2.StateDir, "kubeconfig"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if p := plan(t, step(t, "rethinkdb_service"), &e2); p.Action != messages.ActionUnchanged {
			t.Fatalf("plan through StateDir/kubeconfig = %+v", p)
		}
	})
}
