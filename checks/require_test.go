package checks

import (
	"slices"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// noKubeconfig leaves the kube checks nothing to load: KUBECONFIG unset, a
// home without ~/.guildnet/kubeconfig, not in a cluster.
func noKubeconfig(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
}

// TestNotConfiguredIsNeverAPass: a setting left unset gives
// not_configured (not passed, outcome warn), its dependents follow, and a
// required check that is not configured fails naming the setting to set
// and the requirement.
func TestNotConfiguredIsNeverAPass(t *testing.T) {
	noKubeconfig(t)
	run := func(settings config.Settings) map[string]messages.CheckResult {
		t.Helper()
		return byName(runArgs(t.Context(), t, &Env{Node: "n1", Cluster: "c1", Settings: settings}, `{"layers":["cluster"]}`, RunOptions{}))
	}

	// Nothing required: the whole cluster layer is not configured.
	res := run(config.Settings{"METAGN_REQUIRE_CHECKS": "none"})
	for name, r := range res {
		if r.Status != messages.CheckNotConfigured || r.Passed || !strings.HasPrefix(r.Message, messages.NotConfiguredPrefix) {
			t.Errorf("%s: %s passed=%v %q, want not_configured", name, r.Status, r.Passed, r.Message)
		}
	}
	if r := res["nodes_ready"]; !strings.Contains(r.Message, "depends on kube_api_ready") {
		t.Errorf("nodes_ready: %q, want it to name kube_api_ready", r.Message)
	}
	if r := res["talos_etcd_members"]; !strings.Contains(string(r.Observed), `"TALOSCONFIG"`) {
		t.Errorf("talos_etcd_members observed %s, want the setting TALOSCONFIG", r.Observed)
	}
	var all []messages.CheckResult
	for _, r := range res {
		all = append(all, r)
	}
	if o := Worst(all); o != messages.OutcomeWarn {
		t.Errorf("outcome %s, want warn (not configured is never ok)", o)
	}

	// The default: kube_api_ready is required (GuildNet always has a
	// kubeconfig), so it fails saying what to set; its dependents are
	// blocked by it.
	res = run(config.Settings{})
	if r := res["kube_api_ready"]; r.Status != messages.CheckFail ||
		!strings.Contains(r.Message, "required (METAGN_REQUIRE_CHECKS names kube_api_ready) but not configured") ||
		!strings.Contains(r.Message, "set KUBECONFIG") {
		t.Errorf("kube_api_ready by default: %s %q", r.Status, r.Message)
	}
	if r := res["coredns_running"]; r.Status != messages.CheckSkipped || r.BlockedBy != "kube_api_ready" {
		t.Errorf("coredns_running: %s blocked_by %q", r.Status, r.BlockedBy)
	}
	if r := res["talos_apid_version"]; r.Status != messages.CheckNotConfigured {
		t.Errorf("talos_apid_version (not required): %s %q", r.Status, r.Message)
	}

	// A required layer: every check of it that is not configured fails;
	// a dependent of a failed check is skipped behind it.
	res = run(config.Settings{"METAGN_REQUIRE_LAYERS": "cluster", "METAGN_REQUIRE_CHECKS": "none"})
	if r := res["talos_apid_version"]; r.Status != messages.CheckFail ||
		!strings.Contains(r.Message, "METAGN_REQUIRE_LAYERS names layer cluster") || !strings.Contains(r.Message, "set TALOSCONFIG") {
		t.Errorf("talos_apid_version required by layer: %s %q", r.Status, r.Message)
	}
	if r := res["talos_services_up"]; r.Status != messages.CheckSkipped || r.BlockedBy != "talos_apid_version" {
		t.Errorf("talos_services_up: %s blocked_by %q", r.Status, r.BlockedBy)
	}

	// The fleet spec's require block, passed by the controller.
	got := byName(runArgs(t.Context(), t, &Env{Node: "n1", Settings: config.Settings{"METAGN_REQUIRE_CHECKS": "none"}},
		`{"layers":["cluster"],"require":{"checks":["talos_apid_version"]}}`, RunOptions{}))
	if r := got["talos_apid_version"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, "the fleet spec's require.checks") {
		t.Errorf("talos_apid_version required by the spec: %s %q", r.Status, r.Message)
	}

	// A malformed requirement fails every check, naming the setting.
	res = run(config.Settings{"METAGN_REQUIRE_CHECKS": "Not A Name"})
	if r := res["kube_api_ready"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, "setting METAGN_REQUIRE_CHECKS") {
		t.Errorf("malformed requirement: %s %q", r.Status, r.Message)
	}
}

// Exclude leaves checks out unless a kept one depends on them.
func TestSelectExclude(t *testing.T) {
	sel, err := Select(BuiltinChecks(), Selection{Scope: ScopeCluster, Exclude: []string{"hostapp_healthz", "hostapp_api_health", "proxy_answers", "kube_api_ready", "no_such_check"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range sel {
		names = append(names, c.Name)
	}
	for _, n := range []string{"hostapp_healthz", "hostapp_api_health", "proxy_answers"} {
		if slices.Contains(names, n) {
			t.Errorf("%s selected though excluded", n)
		}
	}
	if !slices.Contains(names, "kube_api_ready") || !slices.Contains(names, "nodes_ready") {
		t.Errorf("selected %v: kube_api_ready is a dependency of kept checks and stays", names)
	}
}
