package checks

// Integration tests of the cluster, database, application and Talos checks
// against the test world (internal/testenv): a real etcd + kube-apiserver
// seeded like a GuildNet deployment, the RethinkDB wire-protocol stand-in
// driven by the real rethinkdb-go driver, the Talos apid stand-in driven by
// the real talos machinery client, and a TLS host app on 127.0.0.1. Every
// fault knob is checked to fail the right check with a message naming the
// broken thing, and to block its dependents behind it.
//
// The API server is started once, on first use, and stopped by TestMain.
// Without the binaries (`make testenv`) these tests skip (fail under
// CI=true, as testenv.Require does).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talos "github.com/siderolabs/talos/pkg/machinery/client"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
	"github.com/guildnet/metaguildnet/messages"
)

var world struct {
	once sync.Once
	kube *testenv.Kube
	g    *testenv.GuildNet
	err  error
}

// TestMain runs the package's tests inside a loopback-only network
// namespace when one can be made (the tailnet test needs it; every other
// server here is on 127.0.0.1 anyway), and stops the shared API server.
func TestMain(m *testing.M) {
	run := func() int {
		code := m.Run()
		if world.kube != nil {
			world.kube.Stop()
		}
		return code
	}
	// The fuzzing engine talks to its workers over inherited pipes, which
	// the re-exec into a namespace would not carry: fuzz in place (no
	// fuzz target starts a server).
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzz") {
			os.Exit(run())
		}
	}
	testenv.RunInNetNS(run)
}

// startWorld starts (once) and returns the seeded cluster.
func startWorld(t *testing.T) (*testenv.Kube, *testenv.GuildNet) {
	t.Helper()
	testenv.Require(t, testenv.NeedKube)
	world.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		world.kube, world.err = testenv.StartKube(ctx, testenv.KubeOptions{})
		if world.err != nil {
			return
		}
		world.g, world.err = testenv.SeedGuildNet(ctx, world.kube.RESTConfig(), testenv.SeedOptions{Nodes: 3, Workspaces: []string{"demo"}})
	})
	if world.err != nil {
		t.Fatalf("test world: %v", world.err)
	}
	return world.kube, world.g
}

// proxyHostApp is a TLS host app with a proxy whose answer a test sets.
type proxyHostApp struct {
	*hostAppServer
	proxyCode atomic.Int32
	proxied   atomic.Value // last proxied path
}

func startProxyHostApp(t *testing.T) *proxyHostApp {
	h := &proxyHostApp{}
	h.proxyCode.Store(http.StatusOK)
	h.hostAppServer = startHostApp(t, okHealthz, allOK)
	// startHostApp routes only /healthz and /api/health; add the proxy.
	mux := h.Config.Handler.(*http.ServeMux)
	mux.HandleFunc("/proxy/server/", func(w http.ResponseWriter, r *http.Request) {
		h.proxied.Store(strings.TrimPrefix(r.URL.Path, "/proxy/server/"))
		code := int(h.proxyCode.Load())
		w.WriteHeader(code)
		fmt.Fprint(w, http.StatusText(code))
	})
	return h
}

type expect struct {
	status    string
	msg       string // substring of the message
	blockedBy string
}

// verifyCluster runs the checks a verify task with args runs, and checks
// their results.
func verifyCluster(t *testing.T, settings config.Settings, args string, want map[string]expect) map[string]messages.CheckResult {
	t.Helper()
	res := byName(runArgs(t.Context(), t, &Env{Node: "guildnet-node-1", Cluster: "c1", Role: "controlplane", Settings: settings}, args, RunOptions{}))
	for name, w := range want {
		r, ok := res[name]
		if !ok {
			t.Errorf("%s: not run", name)
			continue
		}
		if r.Status != w.status || !strings.Contains(r.Message, w.msg) || r.BlockedBy != w.blockedBy {
			t.Errorf("%s: %s %q blocked_by %q\n   want %s containing %q blocked_by %q", name, r.Status, r.Message, r.BlockedBy, w.status, w.msg, w.blockedBy)
		}
	}
	return res
}

func TestVerifyAgainstTestWorld(t *testing.T) {
	k, g := startWorld(t)
	ctx := t.Context()

	rdb, err := rdbstandin.Start(rdbstandin.Options{Databases: map[string][]string{"org_acme__main": {"_schemas", "_audit", "_info"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })

	tal, err := talosstandin.Start(talosstandin.Options{ClusterName: "guildnet", Nodes: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tal.Close)
	talosconfig := filepath.Join(t.TempDir(), "talosconfig")
	if err := tal.WriteTalosconfig(talosconfig); err != nil {
		t.Fatal(err)
	}

	app := startProxyHostApp(t)

	base := config.Settings{
		"KUBECONFIG":           k.KubeconfigPath(),
		"RETHINKDB_ADDR":       rdb.Addr(),
		"METAGN_RDB_DATABASES": "org_acme__main",
		"HOSTAPP_URL":          app.URL,
		"METAGN_HOSTAPP_CA":    app.CAFile,
	}
	base["TALOSCONFIG"] = talosconfig
	talosPass := func(msg string) expect { return expect{messages.CheckPass, msg, ""} }
	with := func(kv ...string) config.Settings {
		s := config.Settings{}
		for k, v := range base {
			s[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s[kv[i]] = kv[i+1]
		}
		return s
	}
	allLayers := `{"scope":"cluster"}`

	t.Run("talos before bootstrap", func(t *testing.T) {
		verifyCluster(t, base, `{"checks":["talos_etcd_members","talos_services_up"]}`, map[string]expect{
			"talos_apid_version": {messages.CheckPass, "apid answers on 1 nodes: 127.0.0.1 ", ""},
			"talos_etcd_members": {messages.CheckFail, "etcd is not running", ""},
			// etcd waits for the bootstrap: coming up (a warning) while
			// etcd_members says it does not run.
			"talos_services_up": {messages.CheckWarn, "Talos services coming up: 127.0.0.1/etcd Preparing for", ""},
		})
	})
	// Bootstrap etcd as the controller's cluster setup would.
	tc, err := talos.New(ctx, talos.WithConfigFromFile(talosconfig))
	must(t, err)
	err = tc.Bootstrap(talos.WithNode(ctx, "127.0.0.1"), &machineapi.BootstrapRequest{})
	tc.Close()
	must(t, err)

	t.Run("healthy world", func(t *testing.T) {
		res := verifyCluster(t, base, allLayers, map[string]expect{
			"kube_api_ready":            {messages.CheckPass, "ready in", ""},
			"nodes_ready":               {messages.CheckPass, "all 3 nodes Ready", ""},
			"coredns_running":           {messages.CheckPass, "2 CoreDNS pods Running and ready", ""},
			"metallb_available":         {messages.CheckPass, "pool workspaces announced by workspaces-l2", ""},
			"guildnet_crds_established": {messages.CheckPass, "workspaces.guildnet.io, capabilities.guildnet.io", ""},
			"talos_apid_version":        talosPass("127.0.0.1"),
			"talos_etcd_members":        talosPass("etcd has 1 members"),
			"talos_services_up":         talosPass("Talos services up"),
			"rethinkdb_pods_ready":      {messages.CheckPass, "1 RethinkDB pods Running and ready", ""},
			"rethinkdb_address":         {messages.CheckPass, rdb.Addr() + " (setting, RETHINKDB_ADDR)", ""},
			"rethinkdb_tcp":             {messages.CheckPass, "accepts TCP connections", ""},
			"rethinkdb_query":           {messages.CheckPass, "r.dbList() on " + rdb.Addr() + " answered", ""},
			"rethinkdb_databases":       {messages.CheckPass, "all 1 configured databases present", ""},
			"rethinkdb_org_tables":      {messages.CheckPass, "all 1 org databases have _schemas, _audit, _info", ""},
			"hostapp_healthz":           {messages.CheckPass, "host app ok", ""},
			"hostapp_api_health":        {messages.CheckPass, "2 clusters ok", ""},
			"operator_available":        {messages.CheckPass, "guildnet-system/workspace-operator available", ""},
			"workspaces_settled":        {messages.CheckPass, "all 1 Workspaces settled", ""},
			"proxy_answers":             {messages.CheckPass, "proxy to Workspace default/demo answered 200", ""},
		})
		if len(res) != 19 {
			t.Errorf("%d results, want 19", len(res))
		}
		if p, _ := app.proxied.Load().(string); p != "demo/" {
			t.Errorf("proxied path %q, want demo/", p)
		}
		var obs map[string]any
		if err := json.Unmarshal(res["kube_api_ready"].Observed, &obs); err != nil || obs["latency_ms"] == nil {
			t.Errorf("kube_api_ready observed %s", res["kube_api_ready"].Observed)
		}
	})

	t.Run("node NotReady", func(t *testing.T) {
		must(t, g.SetNodeReady(ctx, testenv.NodeName(1), false))
		defer func() { must(t, g.SetNodeReady(ctx, testenv.NodeName(1), true)) }()
		verifyCluster(t, base, `{"layers":["cluster"]}`, map[string]expect{
			"nodes_ready": {messages.CheckFail, "1 of 3 nodes NotReady: " + testenv.NodeName(1), ""},
		})
	})

	t.Run("CoreDNS pods gone", func(t *testing.T) {
		must(t, g.DeleteCoreDNSPods(ctx))
		defer func() { must(t, g.RestoreCoreDNS(ctx)) }()
		verifyCluster(t, base, `{"checks":["coredns_running"]}`, map[string]expect{
			"coredns_running": {messages.CheckFail, "no CoreDNS pods (k8s-app=kube-dns in kube-system)", ""},
		})
	})

	t.Run("MetalLB speaker down", func(t *testing.T) {
		must(t, g.SetSpeakerAvailable(ctx, false))
		defer func() { must(t, g.SetSpeakerAvailable(ctx, true)) }()
		verifyCluster(t, base, `{"checks":["metallb_available"]}`, map[string]expect{
			"metallb_available": {messages.CheckFail, "DaemonSet metallb-system/speaker not available", ""},
		})
	})

	t.Run("MetalLB without GuildNet's pool or L2Advertisement", func(t *testing.T) {
		defer func() { must(t, g.SetMetalLBConfig(ctx, true, true)) }()
		// Another pool does not stand in for workspaces.
		other := g.Dynamic.Resource(testenv.IPAddressPoolGVR).Namespace(testenv.NamespaceMetalLB)
		_, err := other.Create(ctx, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
			"metadata": map[string]any{"name": "other"},
			"spec":     map[string]any{"addresses": []any{"10.0.1.0/28"}},
		}}, metav1.CreateOptions{})
		must(t, err)
		defer func() { must(t, other.Delete(ctx, "other", metav1.DeleteOptions{})) }()
		must(t, g.SetMetalLBConfig(ctx, false, true))
		verifyCluster(t, base, `{"checks":["metallb_available"]}`, map[string]expect{
			"metallb_available": {messages.CheckFail, "IPAddressPool metallb-system/workspaces missing (pools: other)", ""},
		})
		must(t, g.SetMetalLBConfig(ctx, true, false))
		verifyCluster(t, base, `{"checks":["metallb_available"]}`, map[string]expect{
			"metallb_available": {messages.CheckFail, "L2Advertisement metallb-system/workspaces-l2 missing", ""},
		})
		verifyCluster(t, with("METAGN_METALLB_POOL", "other", "METAGN_METALLB_L2ADVERTISEMENT", "none"), `{"checks":["metallb_available"]}`, map[string]expect{
			"metallb_available": {messages.CheckFail, "L2Advertisement metallb-system/none missing", ""},
		})
	})

	t.Run("RethinkDB pod not ready", func(t *testing.T) {
		must(t, g.SetRethinkPodReady(ctx, false))
		defer func() { must(t, g.SetRethinkPodReady(ctx, true)) }()
		verifyCluster(t, base, `{"layers":["database"]}`, map[string]expect{
			"rethinkdb_pods_ready": {messages.CheckFail, "rethinkdb-0 not ready", ""},
			"rethinkdb_address":    {messages.CheckSkipped, "blocked: rethinkdb_pods_ready fail", "rethinkdb_pods_ready"},
			"rethinkdb_databases":  {messages.CheckSkipped, "", "rethinkdb_pods_ready"},
		})
	})

	t.Run("RethinkDB refuses connections", func(t *testing.T) {
		rdb.SetRefuse(true)
		defer rdb.SetRefuse(false)
		verifyCluster(t, base, `{"layers":["database"]}`, map[string]expect{
			"rethinkdb_tcp":       {messages.CheckFail, "TCP connect to RethinkDB at " + rdb.Addr() + " (setting, RETHINKDB_ADDR): connection refused", ""},
			"rethinkdb_query":     {messages.CheckSkipped, "blocked: rethinkdb_tcp fail", "rethinkdb_tcp"},
			"rethinkdb_databases": {messages.CheckSkipped, "", "rethinkdb_tcp"},
		})
	})

	t.Run("RethinkDB slow", func(t *testing.T) {
		defer rdb.SetLatency(0)
		rdb.SetLatency(150 * time.Millisecond)
		verifyCluster(t, base, `{"checks":["rethinkdb_query"]}`, map[string]expect{
			"rethinkdb_query": {messages.CheckWarn, "above the warn threshold 100ms", ""},
		})
		verifyCluster(t, with("METAGN_RDB_WARN_MS", "500"), `{"checks":["rethinkdb_query"]}`, map[string]expect{
			"rethinkdb_query": {messages.CheckPass, "answered in", ""},
		})
		rdb.SetLatency(1200 * time.Millisecond)
		verifyCluster(t, base, `{"checks":["rethinkdb_query"]}`, map[string]expect{
			"rethinkdb_query": {messages.CheckFail, "above the fail threshold 1s", ""},
		})
	})

	t.Run("RethinkDB query error and wrong credentials", func(t *testing.T) {
		rdb.SetFailQueries("disk full")
		verifyCluster(t, base, `{"checks":["rethinkdb_databases"]}`, map[string]expect{
			"rethinkdb_query":     {messages.CheckFail, "disk full", ""},
			"rethinkdb_databases": {messages.CheckSkipped, "", "rethinkdb_query"},
		})
		rdb.SetFailQueries("")
		verifyCluster(t, with("RETHINKDB_PASS", "wrong"), `{"checks":["rethinkdb_query"]}`, map[string]expect{
			"rethinkdb_query": {messages.CheckFail, "connecting to RethinkDB at " + rdb.Addr() + " (setting, RETHINKDB_ADDR): rethinkdb: Wrong password", ""},
		})
	})

	t.Run("database missing", func(t *testing.T) {
		verifyCluster(t, with("METAGN_RDB_DATABASES", "org_acme__main,org_other__main"), `{"checks":["rethinkdb_databases"]}`, map[string]expect{
			"rethinkdb_databases": {messages.CheckFail, "databases missing: org_other__main", ""},
		})
	})

	t.Run("org database without its meta tables", func(t *testing.T) {
		bad, err := rdbstandin.Start(rdbstandin.Options{Databases: map[string][]string{
			"org_acme__main": {"_schemas", "_audit", "_info"},
			"org_beta__main": {"_schemas", "notes"},
			"scratch":        nil,
		}})
		must(t, err)
		defer bad.Close()
		verifyCluster(t, with("RETHINKDB_ADDR", bad.Addr()), `{"checks":["rethinkdb_org_tables"]}`, map[string]expect{
			"rethinkdb_org_tables": {messages.CheckFail, "1 of 2 org databases lack meta tables: org_beta__main lacks _audit, _info", ""},
		})
		none, err := rdbstandin.Start(rdbstandin.Options{Databases: map[string][]string{"scratch": nil}})
		must(t, err)
		defer none.Close()
		verifyCluster(t, with("RETHINKDB_ADDR", none.Addr(), "METAGN_RDB_DATABASES", ""), `{"checks":["rethinkdb_org_tables"]}`, map[string]expect{
			"rethinkdb_org_tables": {messages.CheckPass, "not applicable: no org_* databases yet", ""},
		})
	})

	t.Run("RethinkDB address from the Service", func(t *testing.T) {
		// Only rethinkdb_address runs: the ClusterIP is not on this machine
		// and is never dialled.
		res := verifyCluster(t, with("RETHINKDB_ADDR", ""), `{"checks":["rethinkdb_address"]}`, map[string]expect{
			"rethinkdb_address": {messages.CheckPass, ":28015 (clusterip", ""},
		})
		if !strings.Contains(string(res["rethinkdb_address"].Observed), `"source":"clusterip"`) {
			t.Errorf("observed %s", res["rethinkdb_address"].Observed)
		}
		// Then a NodePort on a node's address (the seeded nodes have
		// loopback addresses), then a LoadBalancer ingress IP.
		svcs := g.Clientset.CoreV1().Services("default")
		setType := func(typ corev1.ServiceType, ingress string) {
			t.Helper()
			svc, err := svcs.Get(ctx, "rethinkdb", metav1.GetOptions{})
			must(t, err)
			svc.Spec.Type = typ
			if typ == corev1.ServiceTypeClusterIP {
				for i := range svc.Spec.Ports {
					svc.Spec.Ports[i].NodePort = 0
				}
			}
			svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
			must(t, err)
			svc.Status.LoadBalancer.Ingress = nil
			if ingress != "" {
				svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ingress}}
			}
			_, err = svcs.UpdateStatus(ctx, svc, metav1.UpdateOptions{})
			must(t, err)
		}
		defer setType(corev1.ServiceTypeClusterIP, "")
		setType(corev1.ServiceTypeNodePort, "")
		res = verifyCluster(t, with("RETHINKDB_ADDR", ""), `{"checks":["rethinkdb_address"]}`, map[string]expect{
			"rethinkdb_address": {messages.CheckPass, "(nodeport, node " + testenv.NodeName(0) + ")", ""},
		})
		if !strings.Contains(res["rethinkdb_address"].Message, "RethinkDB at 127.") {
			t.Errorf("nodeport address: %s", res["rethinkdb_address"].Message)
		}
		setType(corev1.ServiceTypeLoadBalancer, "")
		verifyCluster(t, with("RETHINKDB_ADDR", ""), `{"checks":["rethinkdb_address"]}`, map[string]expect{
			"rethinkdb_address": {messages.CheckPass, "(nodeport, node ", ""},
		})
		setType(corev1.ServiceTypeLoadBalancer, "127.0.0.1")
		verifyCluster(t, with("RETHINKDB_ADDR", ""), `{"checks":["rethinkdb_address"]}`, map[string]expect{
			"rethinkdb_address": {messages.CheckPass, "RethinkDB at 127.0.0.1:28015 (loadbalancer)", ""},
		})
	})

	t.Run("operator down", func(t *testing.T) {
		must(t, g.SetOperatorAvailable(ctx, false))
		defer func() { must(t, g.SetOperatorAvailable(ctx, true)) }()
		verifyCluster(t, base, `{"layers":["application"]}`, map[string]expect{
			"operator_available": {messages.CheckFail, "Deployment guildnet-system/workspace-operator not available (0 of 1 replicas available; Deployment does not have minimum availability.)", ""},
			"workspaces_settled": {messages.CheckSkipped, "blocked: operator_available fail", "operator_available"},
			"proxy_answers":      {messages.CheckPass, "answered 200", ""},
		})
		verifyCluster(t, with("GN_EMBED_OPERATOR", "1"), `{"checks":["operator_available"]}`, map[string]expect{
			"operator_available": {messages.CheckPass, "not applicable: operator embedded", ""},
		})
	})

	t.Run("workspace stuck", func(t *testing.T) {
		for _, phase := range []string{"Pending", "Failed"} {
			must(t, g.SetWorkspacePhase(ctx, "default", "demo", phase))
			verifyCluster(t, with("METAGN_WORKSPACE_PENDING_MAX", "1ms"), `{"layers":["application"]}`, map[string]expect{
				"workspaces_settled": {messages.CheckFail, "1 Workspaces stuck beyond 1ms: default/demo " + phase, ""},
				"proxy_answers":      {messages.CheckPass, "not applicable: no Running Workspace", ""},
			})
			verifyCluster(t, with("METAGN_WORKSPACE_PENDING_WARN", "1h", "METAGN_WORKSPACE_PENDING_MAX", "2h"), `{"checks":["workspaces_settled"]}`, map[string]expect{
				"workspaces_settled": {messages.CheckPass, "still settling: default/demo " + phase, ""},
			})
		}
		// Pending past GuildNet's 45 s target warns before it fails;
		// Failed is judged by the fail threshold alone.
		must(t, g.SetWorkspacePhase(ctx, "default", "demo", "Pending"))
		verifyCluster(t, with("METAGN_WORKSPACE_PENDING_WARN", "1ms"), `{"checks":["workspaces_settled"]}`, map[string]expect{
			"workspaces_settled": {messages.CheckWarn, "1 Workspaces Pending beyond 1ms (GuildNet's target for Running): default/demo Pending", ""},
		})
		must(t, g.SetWorkspacePhase(ctx, "default", "demo", "Failed"))
		verifyCluster(t, with("METAGN_WORKSPACE_PENDING_WARN", "1ms"), `{"checks":["workspaces_settled"]}`, map[string]expect{
			"workspaces_settled": {messages.CheckPass, "still settling: default/demo Failed", ""},
		})
		must(t, g.SetWorkspacePhase(ctx, "default", "demo", "Running"))
	})

	t.Run("proxy 502", func(t *testing.T) {
		app.proxyCode.Store(http.StatusBadGateway)
		defer app.proxyCode.Store(http.StatusOK)
		verifyCluster(t, base, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckFail, "proxy to Workspace default/demo answered 502 Bad Gateway", ""},
		})
	})

	t.Run("proxy 404", func(t *testing.T) {
		app.proxyCode.Store(http.StatusNotFound)
		defer app.proxyCode.Store(http.StatusOK)
		verifyCluster(t, base, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckFail, "proxy to Workspace default/demo answered 404 Not Found: no pod backs it", ""},
		})
	})

	t.Run("proxy probes the host app's namespace", func(t *testing.T) {
		// A Running Workspace in another namespace, first in name order,
		// is not one the host app's proxy can reach.
		_, err := g.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "aaa"}}, metav1.CreateOptions{})
		must(t, err)
		must(t, g.CreateWorkspace(ctx, "aaa", "alpha", testenv.WorkspaceImageDefault))
		defer func() {
			must(t, g.Dynamic.Resource(testenv.WorkspaceGVR).Namespace("aaa").Delete(ctx, "alpha", metav1.DeleteOptions{}))
		}()
		verifyCluster(t, base, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckPass, "proxy to Workspace default/demo answered 200", ""},
		})
		if p, _ := app.proxied.Load().(string); p != "demo/" {
			t.Errorf("proxied path %q, want demo/", p)
		}
		verifyCluster(t, with("METAGN_HOSTAPP_NAMESPACE", "aaa"), `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckPass, "proxy to Workspace aaa/alpha answered 200", ""},
		})
		verifyCluster(t, with("METAGN_HOSTAPP_NAMESPACE", "empty"), `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckPass, "not applicable: no Running Workspace in empty, the host app's namespace", ""},
		})
	})

	t.Run("proxy judged from the API server's state", func(t *testing.T) {
		// The host-app stand-in's proxy answers as GuildNet's does from the
		// world's pods and Services.
		sa, err := hostappstandin.Start(hostappstandin.Options{Kube: g.Clientset})
		must(t, err)
		defer sa.Close()
		ca := filepath.Join(t.TempDir(), "ca.pem")
		must(t, sa.WriteCA(ca))
		s := with("HOSTAPP_URL", sa.URL(), "METAGN_HOSTAPP_CA", ca)
		verifyCluster(t, s, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckPass, "proxy to Workspace default/demo answered 200", ""},
		})
		defer func() { must(t, g.SetWorkspaceBackends(ctx, "default", "demo", true, true)) }()
		must(t, g.SetWorkspaceBackends(ctx, "default", "demo", false, true))
		verifyCluster(t, s, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckFail, "answered 404 Not Found: no pod backs it", ""},
		})
		must(t, g.SetWorkspaceBackends(ctx, "default", "demo", true, false))
		verifyCluster(t, s, `{"checks":["proxy_answers"]}`, map[string]expect{
			"proxy_answers": {messages.CheckFail, "answered 502 Bad Gateway: proxy error: service default/demo not found", ""},
		})
	})

	t.Run("host app judged for this node's cluster", func(t *testing.T) {
		sa, err := hostappstandin.Start(hostappstandin.Options{Clusters: []hostappstandin.Cluster{{ID: "c1", Name: "alpha"}, {ID: "c2", Name: "beta"}}})
		must(t, err)
		defer sa.Close()
		ca := filepath.Join(t.TempDir(), "ca.pem")
		must(t, sa.WriteCA(ca))
		s := with("HOSTAPP_URL", sa.URL(), "METAGN_HOSTAPP_CA", ca)
		sa.SetClusterStatus("c2", hostappstandin.StatusError, "kube-apiserver unreachable")
		verifyCluster(t, s, `{"checks":["hostapp_api_health"]}`, map[string]expect{
			"hostapp_api_health": {messages.CheckPass, "other clusters not ok: beta (c2) error: kube-apiserver unreachable", ""},
		})
		sa.SetClusterRDB("c1", false, "connection refused")
		verifyCluster(t, s, `{"checks":["hostapp_api_health"]}`, map[string]expect{
			"hostapp_api_health": {messages.CheckFail, "cluster c1 health: RethinkDB not ok: connection refused; other clusters not ok: beta (c2)", ""},
		})
	})

	t.Run("Talos service down", func(t *testing.T) {
		tal.SetServiceState("kubelet", "Failed", false)
		defer tal.SetServiceState("kubelet", "Running", true)
		verifyCluster(t, base, `{"checks":["talos_services_up"]}`, map[string]expect{
			"talos_services_up": {messages.CheckFail, "127.0.0.1/kubelet Failed", ""},
		})
		verifyCluster(t, with("TALOS_NODES", "127.0.0.1,127.0.0.9"), `{"checks":["talos_apid_version"]}`, map[string]expect{
			"talos_apid_version": {messages.CheckFail, "127.0.0.9", ""},
		})
	})

	t.Run("Talos control plane and worker", func(t *testing.T) {
		// A worker runs no etcd: the checks must not expect it there; one
		// node's service Starting is a warning naming that node while it
		// is within METAGN_TALOS_START_GRACE, a failure past it.
		tw, err := talosstandin.Start(talosstandin.Options{ClusterName: "guildnet", Nodes: []string{"127.0.0.1"}, Workers: []string{"127.0.0.2"}})
		must(t, err)
		defer tw.Close()
		cfg := filepath.Join(t.TempDir(), "talosconfig")
		must(t, tw.WriteTalosconfig(cfg))
		c, err := talos.New(ctx, talos.WithConfigFromFile(cfg))
		must(t, err)
		err = c.Bootstrap(talos.WithNode(ctx, "127.0.0.1"), &machineapi.BootstrapRequest{})
		c.Close()
		must(t, err)
		s := with("TALOSCONFIG", cfg)
		verifyCluster(t, s, `{"checks":["talos_etcd_members","talos_services_up"]}`, map[string]expect{
			"talos_etcd_members": talosPass("etcd has 1 members"),
			"talos_services_up":  talosPass("14 Talos services up"),
		})
		tw.SetNodeServiceState("127.0.0.2", "kubelet", "Starting", false)
		verifyCluster(t, s, `{"checks":["talos_services_up"]}`, map[string]expect{
			"talos_services_up": {messages.CheckWarn, "Talos services coming up: 127.0.0.2/kubelet Starting for", ""},
		})
		tw.SetNodeServiceState("127.0.0.2", "kubelet", "Waiting", false)
		verifyCluster(t, with("METAGN_TALOS_START_GRACE", "1ms", "TALOSCONFIG", cfg), `{"checks":["talos_services_up"]}`, map[string]expect{
			"talos_services_up": {messages.CheckFail, "Talos services: 127.0.0.2/kubelet stuck Waiting for", ""},
		})
	})

	t.Run("API server unreachable", func(t *testing.T) {
		kc := writeKubeconfig(t, "https://"+closedAddr(t))
		res := verifyCluster(t, with("KUBECONFIG", kc), allLayers, map[string]expect{
			"kube_api_ready":     {messages.CheckFail, "connection refused", ""},
			"nodes_ready":        {messages.CheckSkipped, "blocked: kube_api_ready fail", "kube_api_ready"},
			"workspaces_settled": {messages.CheckSkipped, "", "kube_api_ready"},
			"rethinkdb_query":    {messages.CheckSkipped, "", "kube_api_ready"},
			"hostapp_healthz":    {messages.CheckPass, "", ""},
			"talos_apid_version": {messages.CheckPass, "", ""},
		})
		roots := 0
		for _, r := range res {
			if r.Status == messages.CheckFail {
				roots++
			}
		}
		if roots != 1 {
			t.Errorf("%d failures reported, want only the root cause", roots)
		}
	})

	t.Run("world healthy again", func(t *testing.T) {
		for name, r := range verifyCluster(t, base, allLayers, nil) {
			if r.Status != messages.CheckPass {
				t.Errorf("%s: %s %q (a fault was not undone)", name, r.Status, r.Message)
			}
		}
	})
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, server)
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
