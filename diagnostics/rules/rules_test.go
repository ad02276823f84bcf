package rules

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/messages"
)

func builtin(t testing.TB) *KB {
	t.Helper()
	kb, err := Builtin()
	if err != nil {
		t.Fatalf("Builtin: %v", err)
	}
	return kb
}

// Fact builders for the tables below.
func chk(name, status, msg string) Facts {
	return Facts{Node: "n1", Checks: []messages.CheckResult{{Name: name, Status: status, Message: msg, Node: "n1"}}}
}

func obs(name, status, observed string) Facts {
	f := chk(name, status, "")
	f.Checks[0].Observed = json.RawMessage(observed)
	return f
}

func met(name string, v float64) Facts {
	return Facts{Node: "n1", Metrics: map[string]float64{name: v}}
}

func logl(source, text string) Facts {
	return Facts{Node: "n1", Lines: []Line{{Source: source, Text: text}}}
}

func role(f Facts, r string) Facts { f.Role = r; return f }

// faults: for every built-in rule, facts that must fire it (one per
// condition where practical).
var faults = map[string][]Facts{
	"tailnet-unreachable": {chk("tailscaled_running", "fail", "tailscaled not running"), chk("tailnet_connected", "fail", "BackendState Stopped"), met("tailscaled_up", 0)},
	"router-offline": {role(Facts{Node: "r1", Offline: true, Reason: "offline"}, "router"),
		role(chk("tailscaled_running", "fail", ""), "router"), role(chk("tailnet_connected", "fail", ""), "router")},
	"node-offline":             {{Node: "n9", Offline: true, Reason: "offline"}},
	"login-server-unreachable": {chk("login_server_health", "fail", "GET /health: connection refused"), met("headscale_health_up", 0), logl("/var/log/guildnet/router.log", "control: dial tcp 10.0.0.1:8081: connect: connection refused")},
	"headscale-port-busy":      {logl("/var/log/guildnet/x.log", "headscale: listen tcp :8080: bind: address already in use"), logl("/var/log/guildnet/headscale.log", "listen tcp 0.0.0.0:8080: bind: address already in use")},
	"auth-key-rejected":        {chk("tailnet_connected", "fail", "BackendState NeedsLogin: auth key expired"), logl("/var/log/guildnet/router.log", "backend error: invalid key: unable to validate API key")},
	"routes-not-approved":      {chk("routes_approved", "fail", "10.96.0.0/12 not in PrimaryRoutes"), logl("r.log", "route 10.96.0.0/12 is not approved")},
	"peers-unreachable":        {chk("controller_reachable", "fail", "tailnet ping timed out"), logl("t.log", "magicsock: derp-1 connect timeout")},
	"dns-resolution-failing":   {chk("dns_resolution", "fail", "lookup x: no such host"), logl("a.log", "lookup guildnet.internal on 127.0.0.53:53: server misbehaving")},

	"kube-api-unreachable":     {chk("kube_api_ready", "fail", "readyz: connection refused"), logl("h.log", "Get https://10.0.0.10:6443/api: dial tcp 10.0.0.10:6443: connect: connection refused")},
	"kube-api-slow":            {obs("kube_api_ready", "warn", `{"url": "https://10.0.0.10:6443/readyz", "status": 200, "latency_ms": 2500}`), obs("kube_api_ready", "pass", `{"latency_ms": 2100}`)},
	"nodes-not-ready":          {chk("nodes_ready", "fail", "NotReady: w2")},
	"kubelet-not-running":      {met("kubelet_up", 0), met("containerd_up", 0)},
	"coredns-not-running":      {chk("coredns_running", "fail", "0/2 running")},
	"metallb-not-assigning":    {chk("metallb_available", "fail", "no IPAddressPool"), logl("m.log", "controller: no available IPs for service default/rethinkdb")},
	"service-lb-pending":       {chk("rethinkdb_address", "warn", "LoadBalancer ingress pending"), logl("k.log", "rethinkdb   LoadBalancer   10.96.0.10   <pending>  EXTERNAL-IP <pending>")},
	"crds-missing":             {chk("guildnet_crds_established", "fail", "workspaces.guildnet.io missing")},
	"pods-pending":             {logl("k.log", "Warning FailedScheduling 0/3 nodes are available: insufficient memory")},
	"image-pull-failed":        {chk("workspaces_settled", "fail", "ws1 Pending: ErrImagePull"), logl("k.log", "Back-off pulling image: ImagePullBackOff")},
	"talos-apid-unreachable":   {chk("talos_apid_version", "fail", "10.0.0.2:50000 refused")},
	"talos-etcd-unhealthy":     {chk("talos_etcd_members", "fail", "0 members")},
	"talos-services-down":      {chk("talos_services_up", "warn", "etcd not running")},
	"kubeconfig-cert-expiring": {met("kubeconfig_client_cert_days_left", 3)},

	"rethinkdb-pods-not-ready":     {chk("rethinkdb_pods_ready", "fail", "0/1 ready")},
	"rethinkdb-crashloop":          {chk("rethinkdb_pods_ready", "fail", "rethinkdb-0 CrashLoopBackOff"), logl("k.log", "pod rethinkdb-0 OOMKilled")},
	"rethinkdb-address-missing":    {chk("rethinkdb_address", "fail", "no address")},
	"rethinkdb-connection-refused": {chk("rethinkdb_tcp", "fail", "connection refused"), met("rethinkdb_port_up", 0), logl("h.log", "rethinkdb: dial tcp 10.0.0.201:28015: connect: connection refused")},
	"rethinkdb-query-failing":      {chk("rethinkdb_query", "fail", "DBList timed out")},
	"rethinkdb-slow": {obs("rethinkdb_query", "warn", `{"address": "10.0.0.201:28015", "connect_ms": 3, "query_ms": 350, "databases": 4}`),
		obs("rethinkdb_tcp", "pass", `{"address": "10.0.0.201:28015", "connect_ms": 250}`), met("rethinkdb_connect_ms", 300)},
	"rethinkdb-databases-missing":  {chk("rethinkdb_databases", "warn", "org_a__db missing")},
	"rethinkdb-org-tables-missing": {chk("rethinkdb_org_tables", "fail", "1 of 2 org databases lack meta tables: org_b__main lacks _audit, _info")},

	"hostapp-unreachable":        {chk("hostapp_healthz", "fail", "host app unreachable: GET https://127.0.0.1:8090/healthz: dial tcp 127.0.0.1:8090: connect: connection refused"), met("hostapp_port_up", 0)},
	"hostapp-down":               {chk("hostapp_healthz", "fail", "GET https://127.0.0.1:8090/healthz answered 502 Bad Gateway: upstream"), logl("p.log", "GET /healthz 502 Bad Gateway")},
	"kubeconfig-missing":         {chk("kube_api_ready", "not_configured", "not configured: no kubeconfig (KUBECONFIG unset, ~/.guildnet/kubeconfig missing) and not in a cluster"), chk("kube_api_ready", "fail", "required (METAGN_REQUIRE_CHECKS names kube_api_ready) but not configured: no kubeconfig; set KUBECONFIG")},
	"kube-api-not-ready":         {chk("kube_api_ready", "fail", "API server https://127.0.0.1:6443 /readyz answered 500: [-]etcd failed")},
	"hostapp-cert-error":         {chk("hostapp_healthz", "fail", "x509: certificate is valid for 127.0.0.1, not 100.64.0.5"), chk("proxy_answers", "fail", "tls: bad certificate"), met("tls_cert_missing_tailnet_ip", 1), logl("h.log", "http: TLS handshake error: remote error: tls: bad certificate")},
	"tls-cert-expiring":          {met("tls_cert_days_left_min", 5), met("tls_cert_days_left_min", -2)},
	"hostapp-clusters-unhealthy": {chk("hostapp_api_health", "warn", "cluster c1: error")},
	"operator-idle":              {chk("operator_available", "fail", "0/1 available"), logl("o.log", `workspaces.guildnet.io is forbidden: User "system:serviceaccount:guildnet-system:workspace-operator" cannot list`)},
	"workspace-pending":          {chk("workspaces_settled", "warn", "ws1 Pending for 5m")},
	"rethinkdb-unreachable":      {chk("rethinkdb_tcp", "fail", "TCP connect to 10.96.0.20:28015 (Service rethinkdb ClusterIP): dial tcp 10.96.0.20:28015: i/o timeout")},
	"proxy-504":                  {chk("proxy_answers", "fail", "proxy to Workspace demo answered 504 Gateway Timeout: upstream"), logl("p.log", "proxy: 504 Gateway Timeout")},
	"proxy-no-backend":           {chk("proxy_answers", "fail", "proxy to Workspace default/demo answered 404 Not Found: no pod backs it though its phase is Running"), chk("proxy_answers", "fail", "proxy to Workspace default/demo answered 502 Bad Gateway: proxy error: service default/demo not found")},

	"memory-pressure": {met("memory_percent", 91), chk("host_memory", "warn", "91%")},
	"cpu-saturated":   {met("cpu_percent", 97), met("load1_per_cpu", 3), chk("host_cpu", "fail", "")},
	"disk-pressure":   {met("disk_percent", 95), chk("host_disk", "warn", "")},
}

func TestEveryRuleFiresOnItsFault(t *testing.T) {
	kb := builtin(t)
	for _, r := range kb.Rules {
		fs, ok := faults[r.ID]
		if !ok {
			t.Errorf("rule %s has no fault in the test table", r.ID)
			continue
		}
		for i, f := range fs {
			m, fired := r.Match(&f)
			if !fired {
				t.Errorf("rule %s did not fire on fault %d: %+v", r.ID, i, f)
				continue
			}
			if len(m.Evidence) == 0 {
				t.Errorf("rule %s fired with no evidence on fault %d", r.ID, i)
			}
			if strings.Contains(m.Title(), "{") {
				t.Errorf("rule %s title %q keeps a placeholder", r.ID, m.Title())
			}
		}
	}
	for id := range faults {
		if kb.Rule(id) == nil {
			t.Errorf("test table names unknown rule %s", id)
		}
	}
}

func TestHealthyFactsFireNothing(t *testing.T) {
	kb := builtin(t)
	var checks []messages.CheckResult
	for _, c := range meta.Builtin {
		checks = append(checks, messages.CheckResult{Name: c.Name, Status: "pass", Passed: true, Observed: json.RawMessage(`{"latency_ms": 12}`)})
	}
	f := &Facts{Node: "n1", Role: "router", Checks: checks, Metrics: map[string]float64{
		"memory_percent": 40, "cpu_percent": 10, "load1_per_cpu": 0.2, "disk_percent": 50, "tailscaled_up": 1,
		"kubelet_up": 1, "containerd_up": 1, "hostapp_port_up": 1, "rethinkdb_port_up": 1, "rethinkdb_connect_ms": 3,
		"headscale_health_up": 1, "tls_cert_days_left_min": 300, "kubeconfig_client_cert_days_left": 200, "tls_cert_missing_tailnet_ip": 0,
	}, Lines: []Line{{Source: "a.log", Text: "GET /healthz 200 ok in 3ms"}}}
	if ms := kb.Evaluate(f); len(ms) != 0 {
		for _, m := range ms {
			t.Errorf("rule %s fired on healthy facts: %v", m.Rule.ID, m.Evidence)
		}
	}
}

func TestTitleObserved(t *testing.T) {
	kb := builtin(t)
	f := obs("rethinkdb_query", "warn", `{"connect_ms": 2, "query_ms": 350}`)
	m, ok := kb.Rule("rethinkdb-slow").Match(&f)
	if !ok || m.Title() != "RethinkDB slow response (350ms)" {
		t.Fatalf("title = %q (fired %v), want RethinkDB slow response (350ms)", m.Title(), ok)
	}
	f = met("memory_percent", 91.26)
	m, _ = kb.Rule("memory-pressure").Match(&f)
	if m.Title() != "Node memory high (91.3%)" {
		t.Errorf("title = %q", m.Title())
	}
	f = obs("host_memory", "warn", `{"used_pct": 88.5, "total_bytes": 100}`)
	m, _ = kb.Rule("memory-pressure").Match(&f)
	if m.Title() != "Node memory high (88.5%)" {
		t.Errorf("title from the check's used_pct = %q", m.Title())
	}
	f = chk("host_memory", "warn", "")
	m, _ = kb.Rule("memory-pressure").Match(&f)
	if m.Title() != "Node memory high" {
		t.Errorf("title without observed = %q", m.Title())
	}
}

func TestBuiltinChecksAreTheContract(t *testing.T) {
	kb := builtin(t)
	known := map[string]string{}
	for _, c := range meta.Builtin {
		known[c.Name] = c.Layer
	}
	used := map[string]bool{}
	for _, r := range kb.Rules {
		if !slices.Contains(Layers, r.Layer) {
			t.Errorf("rule %s: layer %q is not a standard layer", r.ID, r.Layer)
		}
		for _, c := range r.When {
			if c.Check == "" {
				continue
			}
			if _, ok := known[c.Check]; !ok {
				t.Errorf("rule %s matches check %q, which is not in the contract", r.ID, c.Check)
			}
			used[c.Check] = true
		}
	}
	for n := range known {
		if !used[n] {
			t.Errorf("check %s is covered by no rule", n)
		}
	}
}

func TestTroubleshootingDocFresh(t *testing.T) {
	kb := builtin(t)
	path := filepath.Join("..", "..", "docs", "TROUBLESHOOTING.md")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read committed doc: %v", err)
	}
	if want := Markdown(kb); !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go generate ./diagnostics/rules", path)
	}
}

func TestDocsLinksResolve(t *testing.T) {
	kb := builtin(t)
	md, err := os.ReadFile(filepath.Join("..", "..", "docs", "TROUBLESHOOTING.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := Anchors(md)
	headings := map[string]string{}
	for _, r := range kb.Rules {
		link := r.DocsLink()
		file, anchor, ok := strings.Cut(link, "#")
		if !ok || file != DocsFile {
			t.Errorf("rule %s: docs %q does not point into %s", r.ID, link, DocsFile)
			continue
		}
		if !anchors[anchor] {
			t.Errorf("rule %s: docs anchor #%s is not a heading of %s", r.ID, anchor, DocsFile)
		}
		if other, dup := headings[anchor]; dup {
			t.Errorf("rules %s and %s share the heading anchor #%s", other, r.ID, anchor)
		}
		headings[anchor] = r.ID
	}
	// A docs link is the troubleshooting page's anchor of the rule.
	if got := kb.Rule("tailnet-unreachable").DocsLink(); got != "docs/TROUBLESHOOTING.md#tailnet-unreachable" {
		t.Errorf("tailnet-unreachable docs = %q", got)
	}
}

// The example in the docs is a valid rule file.
func TestDocsExampleRule(t *testing.T) {
	rs, err := Parse("example.yaml", []byte(exampleRule))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(builtin(t).Rules, rs); err != nil {
		t.Fatal(err)
	}
}

func TestAnchor(t *testing.T) {
	for in, want := range map[string]string{
		"Tailnet unreachable":                  "tailnet-unreachable",
		"Host app down (502)":                  "host-app-down-502",
		"Headscale will not start (port busy)": "headscale-will-not-start-port-busy",
		"Nodes NotReady":                       "nodes-notready",
		"a_b -- c.d":                           "a_b----cd",
		"Ünïcode ok":                           "ünïcode-ok",
	} {
		if got := Anchor(in); got != want {
			t.Errorf("Anchor(%q) = %q, want %q", in, got, want)
		}
	}
	got := Anchors([]byte("# A\n## A\n```\n# Not\n```\n### `Code` *x*\n"))
	for _, want := range []string{"a", "a-1", "code-x"} {
		if !got[want] {
			t.Errorf("Anchors missing %q: %v", want, got)
		}
	}
	if got["not"] {
		t.Error("heading inside a code fence was taken")
	}
}

func TestObservedValue(t *testing.T) {
	tests := []struct {
		raw, field, unit string
		want             float64
		shown            string
		ok               bool
	}{
		{`350`, "", "ms", 350, "350ms", true},
		{`"350ms"`, "", "ms", 350, "350ms", true},
		{`"1.5s"`, "", "ms", 1500, "1.5s", true},
		{`"91%"`, "", "%", 91, "91%", true},
		{`{"latency_ms": 250}`, "", "ms", 250, "250ms", true},
		{`{"seconds": 2}`, "", "ms", 2000, "2000ms", true},
		{`{"p95": 12, "name": "x"}`, "", "ms", 12, "12ms", true},
		{`{"a": 1, "b": 2}`, "", "ms", 0, "", false},
		{`{"a": 1, "b": 2}`, "b", "", 2, "2", true},
		{`{"a": 1}`, "missing", "", 0, "", false},
		{`true`, "", "", 0, "", false},
		{`"fast"`, "", "", 0, "fast", false},
		{``, "", "", 0, "", false},
		{`{bad`, "", "", 0, "", false},
	}
	for _, tc := range tests {
		v, shown, ok := ObservedValue(json.RawMessage(tc.raw), tc.field, tc.unit)
		if ok != tc.ok || ok && (v != tc.want || shown != tc.shown) {
			t.Errorf("ObservedValue(%s, %q, %q) = %v, %q, %v; want %v, %q, %v", tc.raw, tc.field, tc.unit, v, shown, ok, tc.want, tc.shown, tc.ok)
		}
	}
}

// FuzzObservedValue: any observed JSON yields a value or not, never a panic.
func FuzzObservedValue(f *testing.F) {
	f.Add([]byte(`{"query_ms": 350}`), "query_ms", "ms")
	f.Add([]byte(`"1.5s"`), "", "ms")
	f.Add([]byte(`{"seconds": "x"}`), "", "%")
	f.Fuzz(func(t *testing.T, raw []byte, field, unit string) {
		v, shown, ok := ObservedValue(json.RawMessage(raw), field, unit)
		if !ok && v != 0 {
			t.Fatalf("value %v without ok", v)
		}
		_ = shown
	})
}

// A rule fires only on the error class it names, and its title says the
// error observed: "Host app down (HTTP 502)" only for a 502, a refused
// connection gets its own rule and title; a missing kubeconfig is not an
// unreachable API.
func TestTitlesFollowTheErrorClass(t *testing.T) {
	kb, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	fired := func(f Facts) map[string]string {
		out := map[string]string{}
		for _, m := range kb.Evaluate(&f) {
			out[m.Rule.ID] = m.Title()
		}
		return out
	}
	for _, tc := range []struct {
		facts Facts
		want  map[string]string // rule -> title
		not   []string
	}{
		{chk("hostapp_healthz", "fail", "host app unreachable: GET https://127.0.0.1:8090/healthz: dial tcp 127.0.0.1:8090: connect: connection refused"),
			map[string]string{"hostapp-unreachable": "Host app not reachable (connection refused)"}, []string{"hostapp-down"}},
		{chk("hostapp_healthz", "fail", "GET https://127.0.0.1:8090/healthz answered 502 Bad Gateway: upstream gone"),
			map[string]string{"hostapp-down": "Host app down (HTTP 502)"}, []string{"hostapp-unreachable"}},
		{chk("kube_api_ready", "fail", "required (METAGN_REQUIRE_CHECKS names kube_api_ready) but not configured: no kubeconfig (KUBECONFIG unset, ~/.guildnet/kubeconfig missing) and not in a cluster; set KUBECONFIG"),
			map[string]string{"kubeconfig-missing": "No kubeconfig for the Kubernetes API"}, []string{"kube-api-unreachable", "kube-api-not-ready"}},
		{chk("kube_api_ready", "fail", "API server https://10.96.0.1:443 (kubeconfig) unreachable: dial tcp 10.96.0.1:443: i/o timeout"),
			map[string]string{"kube-api-unreachable": "Kubernetes API unreachable (timed out)"}, []string{"kubeconfig-missing", "kube-api-not-ready"}},
		{chk("rethinkdb_tcp", "fail", "TCP connect to 10.96.0.20:28015: dial tcp 10.96.0.20:28015: i/o timeout"),
			map[string]string{"rethinkdb-unreachable": "RethinkDB unreachable (timed out)"}, []string{"rethinkdb-connection-refused"}},
		{chk("rethinkdb_tcp", "fail", "TCP connect to 127.0.0.1:28015: dial tcp 127.0.0.1:28015: connect: connection refused"),
			map[string]string{"rethinkdb-connection-refused": "RethinkDB connection refused"}, []string{"rethinkdb-unreachable"}},
		{chk("login_server_health", "fail", "login server unreachable: GET http://127.0.0.1:8081/health: dial tcp 127.0.0.1:8081: connect: connection refused"),
			map[string]string{"login-server-unreachable": "Login server not healthy (connection refused)"}, nil},
		{chk("login_server_health", "fail", "GET http://127.0.0.1:8081/health answered 500: db locked"),
			map[string]string{"login-server-unreachable": "Login server not healthy (HTTP 500)"}, nil},
		{chk("proxy_answers", "fail", "proxy to Workspace demo answered 504 Gateway Timeout: upstream"),
			map[string]string{"proxy-504": "Proxy timing out (HTTP 504)"}, nil},
		{chk("kube_api_ready", "fail", "API server https://127.0.0.1:6443 /readyz answered 500: [-]etcd failed"),
			map[string]string{"kube-api-not-ready": "Kubernetes API not ready (HTTP 500)"}, []string{"kube-api-unreachable"}},
	} {
		got := fired(tc.facts)
		for id, title := range tc.want {
			if got[id] != title {
				t.Errorf("%s: %s fired with title %q, want %q (all: %v)", tc.facts.Checks[0].Message, id, got[id], title, got)
			}
		}
		for _, id := range tc.not {
			if _, ok := got[id]; ok {
				t.Errorf("%s: %s fired, its evidence does not support it", tc.facts.Checks[0].Message, id)
			}
		}
	}
}

func TestClasses(t *testing.T) {
	for _, tc := range []struct {
		status, msg string
		want        []string
	}{
		{"fail", "dial tcp 10.96.0.1:443: connect: connection refused", []string{ClassRefused}},
		{"fail", "lookup x on 10.255.255.53:53: dial udp 10.255.255.53:53: connect: network is unreachable", []string{ClassNoRoute}},
		{"fail", "GET https://h/healthz answered 502 Bad Gateway", []string{"http_502"}},
		{"fail", "2 of 3 nodes NotReady: w1, w2", []string{ClassState}},
		{"not_configured", "not configured: TALOSCONFIG is not set", []string{ClassConfig}},
		{"fail", "setting TS_ROUTES: \"x\" is not a CIDR", []string{ClassConfig}},
		{"skipped", "blocked: kube_api_ready fail", []string{ClassBlocked}},
		{"fail", "x509: certificate signed by unknown authority", []string{ClassTLS}},
	} {
		if got := Classes(tc.status, tc.msg); !slices.Equal(got, tc.want) {
			t.Errorf("Classes(%s, %q) = %v, want %v", tc.status, tc.msg, got, tc.want)
		}
	}
	ps := Prefixes("dial tcp 10.96.0.1:443 and [fd7a:115c:a1e0::5]:80, route 10.244.0.0/16")
	if len(ps) != 3 || ps[0].String() != "10.96.0.1/32" || ps[1].String() != "fd7a:115c:a1e0::5/128" || ps[2].String() != "10.244.0.0/16" {
		t.Errorf("Prefixes = %v", ps)
	}
}

// FuzzClasses: any text classifies without panicking, every class it
// returns is one a rule may name, and Prefixes returns valid prefixes.
func FuzzClasses(f *testing.F) {
	for _, s := range []string{"dial tcp 10.96.0.1:443: connect: connection refused", "answered 502 Bad Gateway",
		"not configured: X is not set", "[fd7a:115c:a1e0::1]:80 10.0.0.0/24", "status 999", "HTTP/1.1 404"} {
		f.Add("fail", s)
	}
	f.Fuzz(func(t *testing.T, status, text string) {
		for _, c := range Classes(status, text) {
			if !validClass(c) {
				t.Fatalf("Classes(%q, %q) returned %q, which a rule cannot name", status, text, c)
			}
		}
		for _, p := range Prefixes(text) {
			if !p.IsValid() {
				t.Fatalf("Prefixes(%q): invalid %v", text, p)
			}
		}
	})
}
