package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

func cr(node, layer, name, status, msg string) messages.CheckResult {
	return messages.CheckResult{Name: name, Layer: layer, Status: status, Passed: status == messages.CheckPass, Message: msg, Node: node, DurationMS: 3}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name   string
		checks []messages.CheckResult
		want   string
		reason string
	}{
		{"all pass", []messages.CheckResult{cr("n1", "network", "a", "pass", ""), cr("n1", "network", "b", "pass", "")}, messages.Healthy, ""},
		{"a warning", []messages.CheckResult{cr("n1", "network", "a", "pass", ""), cr("n1", "network", "b", "warn", "slow")}, messages.Degraded, ""},
		{"a failure and its skipped dependents", []messages.CheckResult{cr("n1", "network", "a", "fail", "down"), cr("n1", "network", "b", "skipped", "")}, messages.Unhealthy, ""},
		{"all unknown", []messages.CheckResult{cr("n1", "network", "network_checks", "unknown", "offline")}, messages.Unknown, "n1: offline"},
		{"some unknown", []messages.CheckResult{cr("n1", "network", "a", "pass", ""), cr("n2", "network", "network_checks", "unknown", "offline")}, messages.Degraded, "not verified: n2: offline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := Status(tt.checks)
			if got != tt.want || reason != tt.reason {
				t.Fatalf("got %s %q, want %s %q", got, reason, tt.want, tt.reason)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	runs := []Run{
		{Node: "n1", Cluster: "a", Outcome: "ok", Checks: []messages.CheckResult{cr("n1", "network", "tailscaled_running", "pass", ""), cr("n1", "host", "host_disk", "pass", "")}},
		{Node: "n2", Cluster: "a", Outcome: "unknown", Reason: "offline", Layers: NodeScopedLayers},
		{Node: "n1", Cluster: "a", Outcome: "fail", Checks: []messages.CheckResult{cr("", "cluster", "nodes_ready", "fail", "node w1 NotReady"), cr("", "cluster", "coredns_running", "skipped", "")}},
	}
	missing := []Unavailable{{Cluster: "b", Layers: ClusterScopedLayers, Reason: "no online agent in cluster b"}}
	r := Build(time.Unix(0, 0), 1500*time.Millisecond, []string{"n1", "n2", "n3"}, map[string]string{"n1": "a", "n2": "a", "n3": "b"}, runs, missing)
	if r.OverallStatus != messages.Unhealthy {
		t.Fatalf("overall %s", r.OverallStatus)
	}
	got := map[string]string{}
	for _, l := range r.Layers {
		got[l.Name] = l.Status
	}
	want := map[string]string{"network": "degraded", "host": "degraded", "cluster": "unhealthy", "database": "unknown", "application": "unknown"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("layer %s = %s, want %s", k, got[k], v)
		}
	}
	if r.Layers[0].Name != "network" {
		t.Errorf("layer order: %v", r.Layers)
	}
	nodes := map[string]messages.NodeReport{}
	for _, n := range r.Nodes {
		nodes[n.Name] = n
	}
	if nodes["n2"].Status != messages.Unknown || !strings.Contains(nodes["n2"].Reason, "offline") {
		t.Errorf("n2: %+v", nodes["n2"])
	}
	if nodes["n1"].Status != messages.Unhealthy || nodes["n1"].Layers["cluster"] != messages.Unhealthy {
		t.Errorf("n1: %+v", nodes["n1"])
	}
	var b bytes.Buffer
	WriteText(&b, r)
	out := b.String()
	for _, want := range []string{"[NETWORK] ⚠ degraded", "✓ tailscaled_running", "✗ nodes_ready", "node w1 NotReady",
		"[DATABASE] ? unknown (no online agent in cluster b)", "↳ skipped, blocked by a failed dependency (n1): coredns_running", "UNHEALTHY", "not healthy: n1 unhealthy, n2 unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
}

func TestAllSkippedIsUnknown(t *testing.T) {
	c := cr("n1", "database", "rethinkdb_tcp", "skipped", "")
	c.BlockedBy = "kube_api_ready"
	st, reason := Status([]messages.CheckResult{c})
	if st != messages.Unknown || reason != "not verified: blocked by kube_api_ready" {
		t.Fatalf("%s %q", st, reason)
	}
}

// Two clusters, one of them failing: each is judged from its own checks,
// beside the fleet roll-up, and the text has a line per cluster.
func TestBuildPerCluster(t *testing.T) {
	in := func(c messages.CheckResult, cluster string) messages.CheckResult { c.Cluster = cluster; return c }
	runs := []Run{
		{Node: "a1", Cluster: "a", Outcome: "ok", Checks: []messages.CheckResult{cr("a1", "host", "host_disk", "pass", "")}},
		{Node: "b1", Cluster: "b", Outcome: "ok", Checks: []messages.CheckResult{cr("b1", "host", "host_disk", "pass", "")}},
		{Node: "x1", Outcome: "ok", Checks: []messages.CheckResult{cr("x1", "host", "host_disk", "warn", "90% used")}},
		// A check that claims another cluster counts for its node's own.
		{Node: "a1", Cluster: "a", Outcome: "ok", Checks: []messages.CheckResult{in(cr("", "cluster", "nodes_ready", "pass", ""), "a"), in(cr("", "database", "rethinkdb_tcp", "fail", "claimed"), "")}},
		{Node: "b1", Cluster: "b", Outcome: "fail", Checks: []messages.CheckResult{cr("", "cluster", "nodes_ready", "fail", "node w1 NotReady"), in(cr("", "database", "rethinkdb_tcp", "pass", ""), "a")}},
	}
	r := Build(time.Unix(0, 0), time.Second, []string{"a1", "b1", "x1"}, map[string]string{"a1": "a", "b1": "b"}, runs, nil)
	if r.OverallStatus != messages.Unhealthy {
		t.Fatalf("fleet overall %s", r.OverallStatus)
	}
	type cl struct {
		overall string
		layers  map[string]string
	}
	got := map[string]cl{}
	for _, c := range r.Clusters {
		m := map[string]string{}
		for _, l := range c.Layers {
			m[l.Name] = l.Status
		}
		got[c.Name] = cl{c.OverallStatus, m}
	}
	want := map[string]cl{
		"a": {messages.Unhealthy, map[string]string{"host": messages.Healthy, "cluster": messages.Healthy, "database": messages.Unhealthy}},
		"b": {messages.Unhealthy, map[string]string{"host": messages.Healthy, "cluster": messages.Unhealthy, "database": messages.Healthy}},
		"":  {messages.Degraded, map[string]string{"host": messages.Degraded}},
	}
	if len(got) != len(want) {
		t.Fatalf("clusters %+v", r.Clusters)
	}
	for name, w := range want {
		g := got[name]
		if g.overall != w.overall || len(g.layers) != len(w.layers) {
			t.Errorf("cluster %q: %+v, want %+v", name, g, w)
		}
		for l, s := range w.layers {
			if g.layers[l] != s {
				t.Errorf("cluster %q layer %s = %s, want %s", name, l, g.layers[l], s)
			}
		}
	}
	if r.Clusters[0].Name != "" || r.Clusters[1].Name != "a" || r.Clusters[1].Layers[0].Name != "host" {
		t.Errorf("order: %+v", r.Clusters)
	}
	if err := (&r).Validate(); err != nil {
		t.Errorf("built report does not validate: %v", err)
	}
	var b bytes.Buffer
	WriteText(&b, r)
	for _, want := range []string{"CLUSTER (no cluster)  ⚠ degraded   host⚠", "CLUSTER a             ✗ unhealthy  host✓ cluster✓ database✗", "CLUSTER b             ✗ unhealthy  host✓ cluster✗ database✓"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

func TestClusterReasonIsBounded(t *testing.T) {
	long := strings.Repeat("é", messages.MaxStatusReason)
	runs := []Run{{Node: "a1", Cluster: "a", Outcome: "unknown", Reason: long, Layers: []string{"host"}}}
	r := Build(time.Unix(0, 0), time.Second, []string{"a1"}, map[string]string{"a1": "a"}, runs, nil)
	if err := (&r).Validate(); err != nil {
		t.Fatalf("report with a long reason: %v", err)
	}
}

func notConfigured(node, layer, name, setting string) messages.CheckResult {
	c := cr(node, layer, name, messages.CheckNotConfigured, messages.NotConfiguredPrefix+setting+" is not set")
	c.Observed = []byte(`{"configured":false,"settings":["` + setting + `"]}`)
	return c
}

// not_configured is never a pass: a layer of them only is unknown with the
// checks and settings named; beside passing checks it neither fails nor
// passes the layer; the text lists them on one line.
func TestNotConfigured(t *testing.T) {
	only := []messages.CheckResult{notConfigured("n1", "cluster", "talos_apid_version", "TALOSCONFIG"), notConfigured("n1", "cluster", "kube_api_ready", "KUBECONFIG")}
	st, reason := Status(only)
	if st != messages.Unknown || reason != "not configured: talos_apid_version, kube_api_ready (set TALOSCONFIG, KUBECONFIG)" {
		t.Errorf("all not configured: %s %q", st, reason)
	}
	mixed := []messages.CheckResult{cr("n1", "network", "tailscaled_running", "pass", ""), notConfigured("n1", "network", "login_server_health", "TS_LOGIN_SERVER")}
	if st, reason := Status(mixed); st != messages.Healthy || reason != "" {
		t.Errorf("pass + not configured: %s %q", st, reason)
	}
	r := Build(time.Unix(0, 0), time.Second, []string{"n1"}, map[string]string{"n1": "a"},
		[]Run{{Node: "n1", Cluster: "a", Outcome: "warn", Checks: append(only, mixed...)}}, nil)
	if r.OverallStatus != messages.Degraded {
		t.Errorf("overall %s, want degraded (a layer not configured is not healthy)", r.OverallStatus)
	}
	if len(r.Clusters) != 1 || r.Clusters[0].Layers[1].Status != messages.Unknown || !strings.HasPrefix(r.Clusters[0].Layers[1].Reason, "not configured: ") {
		t.Errorf("clusters: %+v", r.Clusters)
	}
	var b bytes.Buffer
	WriteText(&b, r)
	for _, want := range []string{"[CLUSTER] ? unknown (not configured: talos_apid_version, kube_api_ready (set TALOSCONFIG, KUBECONFIG))",
		"○ not configured: login_server_health (set TS_LOGIN_SERVER)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "✓ login_server_health") {
		t.Errorf("a not configured check shown as a pass:\n%s", b.String())
	}
}
