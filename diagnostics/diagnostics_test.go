package diagnostics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/messages"
)

var t0 = time.Date(2026, 11, 27, 6, 0, 0, 0, time.UTC)

func kb(t testing.TB) *rules.KB {
	t.Helper()
	k, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func cr(node, layer, name, status, msg string) messages.CheckResult {
	return messages.CheckResult{Name: name, Layer: layer, Status: status, Passed: status == messages.CheckPass, Message: msg, Node: node}
}

// The worked example of the diagnosis view (a slow RethinkDB among other
// findings), reproduced from check results.
func TestDiagnosisExampleText(t *testing.T) {
	slow := cr("n1", "database", "rethinkdb_query", "warn", "DBList took 350ms")
	slow.Observed = json.RawMessage(`{"address": "10.0.0.201:28015", "connect_ms": 2, "query_ms": 350, "databases": 3}`)
	nodes := []NodeInput{{Name: "n1", Checks: []messages.CheckResult{
		cr("n1", "network", "tailnet_connected", "fail", "BackendState Stopped"),
		cr("n1", "cluster", "kube_api_ready", "pass", ""),
		cr("n1", "cluster", "nodes_ready", "pass", ""),
		slow,
		cr("n1", "application", "hostapp_healthz", "pass", ""),
		cr("n1", "application", "operator_available", "pass", ""),
		cr("n1", "cluster", "talos_services_up", "pass", "not applicable: Talos is not configured"),
	}}}
	nodes[0].Checks[len(nodes[0].Checks)-1].Observed = json.RawMessage(`{"applicable": false}`)
	d := Analyze(kb(t), nodes, t0)
	var b bytes.Buffer
	if err := WriteText(&b, d, TextOptions{}); err != nil {
		t.Fatal(err)
	}
	want := `[NETWORK]
✗ Tailnet unreachable
  → Suggestion: Check if tailscaled is running
  → Command: sudo systemctl status tailscaled
  → Docs: docs/TROUBLESHOOTING.md#tailnet-unreachable

[CLUSTER]
✓ Kubernetes API healthy
✓ All nodes ready

[DATABASE]
⚠ RethinkDB slow response (350ms)
  → Suggestion: Check system resources
  → Command: kubectl top pods -n default -l app=rethinkdb
  → Threshold: 200ms expected
  → Docs: docs/TROUBLESHOOTING.md#rethinkdb-slow-response

[APPLICATION]
✓ Host app healthy
✓ Operator reconciling
`
	if got := b.String(); got != want {
		t.Errorf("text view:\n%s\nwant:\n%s", got, want)
	}
	if d.Status != messages.Unhealthy {
		t.Errorf("status = %s, want unhealthy", d.Status)
	}

	js, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Findings []map[string]any `json:"findings"`
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	for _, f := range back.Findings {
		for _, k := range []string{"id", "severity", "layer", "title", "suggestion", "command", "docs", "nodes"} {
			if _, ok := f[k]; !ok {
				t.Errorf("JSON finding %v lacks %q", f["id"], k)
			}
		}
	}
	b.Reset()
	WriteText(&b, d, TextOptions{Evidence: true})
	if !strings.Contains(b.String(), "  → Evidence: n1: check tailnet_connected: fail: BackendState Stopped") {
		t.Errorf("evidence missing:\n%s", b.String())
	}
}

func TestNoProblems(t *testing.T) {
	var b bytes.Buffer
	WriteText(&b, Analyze(kb(t), nil, t0), TextOptions{})
	if b.String() != "✓ No problems found\n" {
		t.Errorf("got %q", b.String())
	}
}

func ids(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.ID)
	}
	return out
}

func find(fs []Finding, id string) *Finding {
	for i := range fs {
		if fs[i].ID == id {
			return &fs[i]
		}
	}
	return nil
}

// A router node offline → routes missing on many nodes → the cluster API
// unreachable from them: one cause, its symptoms and nodes folded under it.
// The same symptom in another cluster is not folded.
func TestRootCauseAcrossNodes(t *testing.T) {
	nodes := []NodeInput{
		{Name: "router-1", Cluster: "c1", Role: "router", Offline: true, Reason: "offline"},
		{Name: "w1", Cluster: "c1", Checks: []messages.CheckResult{cr("w1", "network", "routes_approved", "fail", "no online peer carries 10.96.0.0/12 (offline: router-1)")}},
		{Name: "w2", Cluster: "c1", Checks: []messages.CheckResult{cr("w2", "network", "routes_approved", "fail", "no online peer carries 10.96.0.0/12 (offline: router-1)")}},
		{Name: "cp1", Cluster: "c1", Role: "controlplane", Checks: []messages.CheckResult{
			cr("cp1", "network", "routes_approved", "fail", "no online peer carries 10.96.0.0/12 (offline: router-1); 10.244.0.0/16 (offline: router-1)"),
			cr("cp1", "cluster", "kube_api_ready", "fail", "API server https://10.96.0.1:443 (kubeconfig) unreachable: dial tcp 10.96.0.1:443: i/o timeout"),
			cr("cp1", "cluster", "nodes_ready", "skipped", ""),
		}},
		{Name: "other", Cluster: "c2", Checks: []messages.CheckResult{cr("other", "network", "routes_approved", "fail", "no online peer carries 10.96.0.0/12 (offline: router-9)")}},
	}
	nodes[3].Checks[2].BlockedBy = "kube_api_ready"
	d := Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"router-offline", "routes-not-approved"}) {
		t.Fatalf("roots = %v, want [router-offline routes-not-approved]", got)
	}
	root := d.Findings[0]
	if !slices.Equal(root.Nodes, []string{"router-1"}) {
		t.Errorf("router-offline nodes = %v", root.Nodes)
	}
	if got := ids(root.Symptoms); !slices.Equal(got, []string{"routes-not-approved", "kube-api-unreachable", "node-offline"}) {
		t.Errorf("symptoms = %v", got)
	}
	if s := find(root.Symptoms, "routes-not-approved"); s == nil || !slices.Equal(s.Nodes, []string{"cp1", "w1", "w2"}) {
		t.Errorf("routes symptom = %+v", s)
	}
	if !slices.Equal(root.Affected, []string{"cp1", "router-1", "w1", "w2"}) {
		t.Errorf("affected = %v", root.Affected)
	}
	if other := d.Findings[1]; !slices.Equal(other.Nodes, []string{"other"}) || len(other.Symptoms) != 0 {
		t.Errorf("c2 finding = %+v", other)
	}
	var b bytes.Buffer
	WriteText(&b, d, TextOptions{})
	for _, want := range []string{"✗ Router node offline", "  → Nodes: router-1", "  → Explains 3 more finding(s) on 4 node(s): cp1, router-1, w1, w2",
		"      ✗ Routes not approved (cp1, w1, w2)", "      ✗ Kubernetes API unreachable (timed out) (cp1)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Count(b.String(), "Router node offline") != 1 {
		t.Errorf("cause reported more than once:\n%s", b.String())
	}
}

// CoreDNS down explains a failing lookup of a cluster name on another
// node of the cluster, because that lookup's own evidence fits (a DNS
// error for a *.cluster.local name); a failing lookup of another name does
// not fit and stays its own finding.
func TestRootCauseNeedsFittingEvidence(t *testing.T) {
	nodes := []NodeInput{
		{Name: "cp", Cluster: "c", Checks: []messages.CheckResult{cr("cp", "cluster", "coredns_running", "fail", "no CoreDNS pods (k8s-app=kube-dns in kube-system)")}},
		{Name: "n3", Cluster: "c", Checks: []messages.CheckResult{cr("n3", "network", "dns_resolution", "fail", `cannot resolve "kubernetes.default.svc.cluster.local": lookup kubernetes.default.svc.cluster.local: no such host`)}},
	}
	d := Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"coredns-not-running"}) {
		t.Fatalf("roots = %v", got)
	}
	if got := ids(d.Findings[0].Symptoms); !slices.Equal(got, []string{"dns-resolution-failing"}) {
		t.Errorf("symptoms = %v", got)
	}
	nodes[1].Checks[0].Message = `cannot resolve "example.org": lookup example.org: no such host`
	d = Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); len(got) != 2 {
		t.Errorf("a lookup of another name: roots = %v, want 2 (not folded)", got)
	}
}

// blocked_by relates checks the rules do not relate, but only for a
// finding that itself fired on a check skipped behind the cause's check.
func TestRootCauseFromBlockedBy(t *testing.T) {
	kbx, err := rules.New(kb(t).Rules, mustParse(t, `
- id: custom-skipped
  title: Custom check skipped
  severity: warning
  layer: custom
  reach: cluster
  when:
    - check: my_check
      status: [skipped, fail]
  suggestion: Look at what blocked it
`))
	if err != nil {
		t.Fatal(err)
	}
	blocked := cr("n2", "custom", "my_check", "skipped", "blocked: coredns_running fail")
	blocked.BlockedBy = "coredns_running"
	nodes := []NodeInput{
		{Name: "cp", Cluster: "c", Checks: []messages.CheckResult{cr("cp", "cluster", "coredns_running", "fail", "no CoreDNS pods")}},
		{Name: "n2", Cluster: "c", Checks: []messages.CheckResult{blocked}},
		{Name: "n3", Cluster: "c", Checks: []messages.CheckResult{cr("n3", "custom", "my_check", "fail", "broken on its own")}},
	}
	d := Analyze(kbx, nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"coredns-not-running", "custom-skipped"}) {
		t.Fatalf("roots = %v", got)
	}
	if got := ids(d.Findings[0].Symptoms); !slices.Equal(got, []string{"custom-skipped"}) || !slices.Equal(d.Findings[0].Symptoms[0].Nodes, []string{"n2"}) {
		t.Errorf("symptoms = %+v (want custom-skipped on n2 only)", d.Findings[0].Symptoms)
	}
	if !slices.Equal(d.Findings[1].Nodes, []string{"n3"}) {
		t.Errorf("n3's own failure: %+v", d.Findings[1])
	}
}

func mustParse(t *testing.T, y string) []*rules.Rule {
	t.Helper()
	rs, err := rules.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestNodeScopedCausesStayOnTheirNode(t *testing.T) {
	slow := cr("db", "database", "rethinkdb_query", "warn", "")
	slow.Observed = json.RawMessage(`"400ms"`)
	nodes := []NodeInput{
		{Name: "w1", Sections: []collect.Section{{Name: "system", Metrics: map[string]float64{"memory_percent": 95}}}},
		{Name: "db", Checks: []messages.CheckResult{slow}},
	}
	d := Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"rethinkdb-slow", "memory-pressure"}) {
		t.Errorf("memory pressure on w1 must not explain slowness seen on db: %v", got)
	}
	nodes[0].Name = "db"
	d = Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"memory-pressure"}) || ids(d.Findings[0].Symptoms)[0] != "rethinkdb-slow" {
		t.Errorf("same node: %v", got)
	}
	if d.Status != messages.Degraded {
		t.Errorf("status = %s", d.Status)
	}
}

func TestNodesFromReport(t *testing.T) {
	r := &messages.Report{
		Nodes: []messages.NodeReport{{Name: "a", Cluster: "c", Status: messages.Unknown, Reason: "offline"}, {Name: "b", Cluster: "c", Status: messages.Healthy}},
		Layers: []messages.LayerReport{{Name: "network", Checks: []messages.CheckResult{
			{Name: "tailnet_connected", Status: "fail", Node: "b", Cluster: "c"},
			{Name: "tailnet_connected", Status: "unknown", Node: "a", Message: "node offline"},
		}}},
	}
	r.Nodes = append(r.Nodes, messages.NodeReport{Name: "slow", Cluster: "c", Status: messages.Unknown, Reason: "timed_out"})
	ns := NodesFromReport(r)
	if len(ns) != 3 || !ns[0].Offline || ns[2].Offline || ns[1].Checks[0].Layer != "network" {
		t.Fatalf("NodesFromReport = %+v", ns)
	}
	ns = WithSections(ns, "b", []collect.Section{{Name: "system", Metrics: map[string]float64{"disk_percent": 97}}})
	ns = WithSections(ns, "new", []collect.Section{{Name: "system", Metrics: map[string]float64{"memory_percent": 97}}})
	if len(ns) != 4 || len(ns[1].Sections) != 1 {
		t.Fatalf("WithSections = %+v", ns)
	}
	d := Analyze(kb(t), ns, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"tailnet-unreachable", "node-offline", "memory-pressure", "disk-pressure"}) {
		t.Errorf("findings = %v", got)
	}
}

// logFaults: a line planted in a real log file for every rule with a log
// condition. The test fails when a rule gains a log condition without one.
var logFaults = map[string]string{
	"login-server-unreachable":     "2026/11/27 tailscaled: control: dial tcp 10.0.0.1:8081: connect: connection refused",
	"headscale-port-busy":          "headscale: listen tcp 0.0.0.0:8080: bind: address already in use",
	"auth-key-rejected":            "backend error: invalid key: unable to validate API key",
	"routes-not-approved":          "router: route 10.96.0.0/12 is not approved",
	"peers-unreachable":            "magicsock: derp-1 connect timeout",
	"dns-resolution-failing":       "lookup guildnet.internal on 127.0.0.53:53: server misbehaving",
	"kube-api-unreachable":         "Get https://10.0.0.10:6443/readyz: dial tcp 10.0.0.10:6443: connect: connection refused",
	"metallb-not-assigning":        "metallb controller: no available IPs for default/rethinkdb",
	"service-lb-pending":           "rethinkdb LoadBalancer 10.96.0.10 EXTERNAL-IP <pending>",
	"pods-pending":                 "Warning FailedScheduling pod/ws-1: 0/3 nodes are available",
	"image-pull-failed":            "Failed to pull image ghcr.io/x/y: ImagePullBackOff",
	"rethinkdb-crashloop":          "pod rethinkdb-0 OOMKilled, back-off restarting",
	"rethinkdb-connection-refused": "rethinkdb: dial tcp 10.0.0.201:28015: connect: connection refused",
	"hostapp-down":                 "proxy: upstream answered 502 Bad Gateway",
	"hostapp-cert-error":           "x509: certificate is valid for 127.0.0.1, not 100.64.0.7",
	"operator-idle":                `forbidden: User "system:serviceaccount:guildnet-system:workspace-operator" cannot list workspaces`,
	"proxy-504":                    "proxy /proxy/server/ws1/: 504 Gateway Timeout",
}

func TestLogRulesFireFromRealFiles(t *testing.T) {
	k := kb(t)
	for _, r := range k.Rules {
		hasLog := slices.ContainsFunc(r.When, func(c rules.Condition) bool { return c.Log != nil })
		_, ok := logFaults[r.ID]
		if hasLog != ok {
			t.Errorf("rule %s: has log condition %v, planted line %v", r.ID, hasLog, ok)
		}
	}
	for id, line := range logFaults {
		t.Run(id, func(t *testing.T) {
			dir := t.TempDir()
			name := "guildnet.log"
			if id == "headscale-port-busy" {
				name = "headscale.log"
			}
			p := filepath.Join(dir, name)
			body := strings.Repeat("INFO all is well\n", 50) + line + "\n" + strings.Repeat("INFO still fine\n", 5)
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			env := &collect.Env{Node: "n1", Settings: map[string]string{"METAGN_LOG_GLOBS": filepath.Join(dir, "*.log")},
				WorkDir: dir, Home: dir, LogPatterns: k.LogPatterns()}
			env.Prepare()
			secs := collect.Run(context.Background(), env, []collect.Collector{collect.Logs{}})
			d := Analyze(k, []NodeInput{{Name: "n1", Sections: secs}}, t0)
			if !fired(d, id) {
				t.Errorf("rule %s did not fire on %q; findings %v; lines %+v", id, line, ids(d.Findings), secs[0].Lines)
			}
		})
	}
}

// fired reports a rule among the roots or their symptoms.
func fired(d Diagnosis, id string) bool {
	for _, f := range d.Findings {
		if f.ID == id || find(f.Symptoms, id) != nil {
			return true
		}
	}
	return false
}

// BenchmarkAnalyze: a fleet of 1000 nodes in 10 clusters, each cluster's
// router offline and every other node failing its route and host checks.
func BenchmarkAnalyze(b *testing.B) {
	k := kb(b)
	var nodes []NodeInput
	for c := range 10 {
		cluster := fmt.Sprintf("c%d", c)
		nodes = append(nodes, NodeInput{Name: cluster + "-router", Cluster: cluster, Role: "router", Offline: true, Reason: "offline"})
		for n := range 99 {
			name := fmt.Sprintf("%s-n%02d", cluster, n)
			nodes = append(nodes, NodeInput{Name: name, Cluster: cluster, Checks: []messages.CheckResult{
				cr(name, "network", "routes_approved", "fail", "missing"),
				cr(name, "cluster", "kube_api_ready", "fail", "i/o timeout"),
				cr(name, "host", "host_memory", "pass", ""),
			}, Sections: []collect.Section{{Name: "system", Metrics: map[string]float64{"memory_percent": 50, "disk_percent": 95}}}})
		}
	}
	for b.Loop() {
		d := Analyze(k, nodes, t0)
		if len(d.Findings) != 2 || len(d.Findings[0].Nodes) != 10 || len(d.Findings[0].Affected) != 1000 {
			b.Fatalf("findings: %v", ids(d.Findings))
		}
	}
}

// make demo without a world: tailscaled is not running and no kubeconfig is
// set. The kubeconfig is a configuration error, its own finding, never
// folded under "Tailnet unreachable" (which once claimed to explain a
// "Kubernetes API unreachable" it had no evidence for).
func TestConfigErrorIsNeverFolded(t *testing.T) {
	nodes := []NodeInput{{Name: "n1", Cluster: "alpha", Role: "controlplane", Checks: []messages.CheckResult{
		cr("n1", "network", "tailscaled_running", "fail", "tailscaled not answering: status from tailscaled's default socket: dial unix /var/run/tailscale/tailscaled.sock: connect: no such file or directory"),
		cr("n1", "cluster", "kube_api_ready", "fail", "required (METAGN_REQUIRE_CHECKS names kube_api_ready) but not configured: no kubeconfig (KUBECONFIG unset, ~/.guildnet/kubeconfig missing) and not in a cluster; set KUBECONFIG"),
	}}}
	d := Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"tailnet-unreachable", "kubeconfig-missing"}) {
		t.Fatalf("roots = %v, want tailnet-unreachable and kubeconfig-missing, each on its own", got)
	}
	for _, f := range d.Findings {
		if len(f.Symptoms) > 0 {
			t.Errorf("%s explains %v without evidence", f.ID, ids(f.Symptoms))
		}
	}
	// With a kubeconfig whose API is on the tailnet and times out, the
	// same cause does explain it: the evidence fits.
	nodes[0].Checks[1] = cr("n1", "cluster", "kube_api_ready", "fail", "API server https://100.64.0.9:6443 (kubeconfig) unreachable: dial tcp 100.64.0.9:6443: i/o timeout")
	d = Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"tailnet-unreachable"}) || !slices.Equal(ids(d.Findings[0].Symptoms), []string{"kube-api-unreachable"}) {
		t.Errorf("API on the tailnet timing out: roots %v, symptoms %v", got, ids(d.Findings[0].Symptoms))
	}
	// And an API on loopback refusing is not the tailnet's doing.
	nodes[0].Checks[1] = cr("n1", "cluster", "kube_api_ready", "fail", "API server https://127.0.0.1:6443 (kubeconfig) unreachable: dial tcp 127.0.0.1:6443: connect: connection refused")
	d = Analyze(kb(t), nodes, t0)
	if got := ids(d.Findings); !slices.Equal(got, []string{"tailnet-unreachable", "kube-api-unreachable"}) {
		t.Errorf("API on loopback refused: roots %v, want two", got)
	}
}
