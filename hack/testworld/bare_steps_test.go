package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// worldStepEnv is the steps.Env an agent started from the node's env file
// would build, with the kubeconfig setup's kubeconfig_install leaves in
// its state dir.
func worldStepEnv(t *testing.T, c messages.FleetCluster, node string, nodeEnv map[string]string, kubeconfig []byte) *steps.Env {
	t.Helper()
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "kubeconfig"), kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	settings := config.Settings{}
	for k, v := range nodeEnv {
		settings[k] = v
	}
	return &steps.Env{
		Node: node, Cluster: c.Name, Role: nodeEnv["METAGN_ROLE"], Settings: settings, StateDir: state, Spec: c,
		Secret: func(ref messages.SecretRef) (string, error) {
			if p, ok := strings.CutPrefix(string(ref), "file:"); ok {
				b, err := os.ReadFile(p)
				return strings.TrimSpace(string(b)), err
			}
			return "", fmt.Errorf("secret %s not resolvable here", ref)
		},
	}
}

// appLayers runs the database and application steps of the registry on a
// bootstrapped cluster of the bare world, as the setup runner would (a
// cluster step on the controlplane agent, hostapp_config on the hostapp
// node), and returns each step's plan.
func appLayers(t *testing.T, c messages.FleetCluster, envs map[string]*steps.Env, apply bool) map[string]steps.Plan {
	t.Helper()
	plans := map[string]steps.Plan{}
	reg := steps.Builtin()
	for _, layer := range []string{messages.LayerDatabase, messages.LayerApplication} {
		for _, s := range reg.Layer(layer) {
			for _, n := range c.Nodes {
				if s.Scope == steps.ScopeCluster && n.Role != messages.RoleControlPlane || s.Scope == steps.ScopeNode && !s.AppliesTo(n.Role) {
					continue
				}
				env := envs[n.Name]
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				if s.Prereqs != nil {
					if err := s.Prereqs(ctx, env); err != nil {
						cancel()
						t.Fatalf("%s on %s: prereqs: %v", s.Name, n.Name, err)
					}
				}
				p, err := s.Plan(ctx, env)
				if err != nil {
					cancel()
					t.Fatalf("%s on %s: plan: %v", s.Name, n.Name, err)
				}
				plans[s.Name] = p
				if apply && p.Action != messages.ActionUnchanged {
					start := time.Now()
					a, err := s.Apply(ctx, env)
					if err != nil {
						cancel()
						t.Fatalf("%s on %s: apply: %v", s.Name, n.Name, err)
					}
					t.Logf("%s on %s: %s (%s) in %v", s.Name, n.Name, a.Action, a.Diff, time.Since(start).Round(time.Millisecond))
				}
				cancel()
			}
		}
	}
	return plans
}

// checkAppLayers runs the existing database and application checks the way
// a controlplane agent (and the hostapp agent for the host app) would.
func checkAppLayers(t *testing.T, envs map[string]*steps.Env, cp, host string) {
	t.Helper()
	run := func(env *steps.Env, list []checks.Check, want ...string) {
		s := config.Settings{}
		for k, v := range env.Settings {
			s[k] = v
		}
		s["KUBECONFIG"] = filepath.Join(env.StateDir, "kubeconfig")
		s["METAGN_RDB_DATABASES"] = strings.Join(env.Spec.Application.RethinkDB.Databases, ",")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res := checks.RunChecks(ctx, &checks.Env{Node: env.Node, Cluster: env.Cluster, Role: env.Role, Settings: s},
			append(checks.ClusterChecks(), list...), checks.RunOptions{})
		got := map[string]messages.CheckResult{}
		for _, r := range res {
			got[r.Name] = r
		}
		for _, name := range want {
			if c := got[name]; c.Status != messages.CheckPass {
				t.Errorf("%s on %s: %s: %s", name, env.Node, c.Status, c.Message)
			}
		}
	}
	run(envs[cp], checks.DatabaseChecks(), "rethinkdb_pods_ready", "rethinkdb_address", "rethinkdb_tcp", "rethinkdb_query", "rethinkdb_databases", "rethinkdb_org_tables")
	run(envs[cp], checks.ApplicationChecks(), "operator_available")
	run(envs[host], checks.ApplicationChecks(), "hostapp_healthz", "hostapp_api_health")
}

// testAppLayersOnBareWorld: apply -> verified by the existing checks ->
// a second pass plans every step unchanged -> a database dropped with the
// real driver -> exactly rethinkdb_databases plans a change -> apply
// repairs it.
func testAppLayersOnBareWorld(t *testing.T, c messages.FleetCluster, nodeEnv map[string]map[string]string, kubeconfig []byte) {
	envs := map[string]*steps.Env{}
	var cp, host string
	for _, n := range c.Nodes {
		envs[n.Name] = worldStepEnv(t, c, n.Name, nodeEnv[n.Name], kubeconfig)
		switch n.Role {
		case messages.RoleControlPlane:
			cp = n.Name
		case messages.RoleHostApp:
			host = n.Name
		}
	}
	start := time.Now()
	first := appLayers(t, c, envs, true)
	t.Logf("database + application layers applied on a bare cluster in %v", time.Since(start).Round(time.Millisecond))
	for name, p := range first {
		if p.Action != messages.ActionCreate {
			t.Errorf("first plan of %s on a bare cluster = %+v, want create", name, p)
		}
	}
	checkAppLayers(t, envs, cp, host)

	start = time.Now()
	for name, p := range appLayers(t, c, envs, true) {
		if p.Action != messages.ActionUnchanged {
			t.Errorf("second pass: %s plans %+v", name, p)
		}
	}
	t.Logf("a second pass over the 4 steps (nothing to do) took %v", time.Since(start).Round(time.Millisecond))

	sess, err := r.Connect(r.ConnectOpts{Address: c.Application.RethinkDB.Addr, Username: "admin", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := r.DBDrop(c.Application.RethinkDB.Databases[0]).RunWrite(sess); err != nil {
		t.Fatal(err)
	}
	changed := map[string]string{}
	for name, p := range appLayers(t, c, envs, false) {
		if p.Action != messages.ActionUnchanged {
			changed[name] = p.Action + ": " + p.Diff
		}
	}
	if len(changed) != 1 || changed["rethinkdb_databases"] == "" {
		t.Fatalf("after dropping %s, the plan changes %v, want exactly rethinkdb_databases", c.Application.RethinkDB.Databases[0], changed)
	}
	appLayers(t, c, envs, true)
	for name, p := range appLayers(t, c, envs, false) {
		if p.Action != messages.ActionUnchanged {
			t.Errorf("after the repair: %s plans %+v", name, p)
		}
	}
	checkAppLayers(t, envs, cp, host)
}
