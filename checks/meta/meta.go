// Package meta is the table of the built-in verification checks: each
// check's name, layer, scope, title and the checks it depends on, in report
// order. Package checks, which runs them, and package diagnostics, which
// explains their results, both read it, so the contract between
// verification and diagnostics is written once. It imports nothing heavy,
// so the controller reads it without linking the check families' clients.
package meta

import (
	"slices"

	"github.com/guildnet/metaguildnet/messages"
)

// Scope says where a check runs: on every node, or once per cluster on one
// agent chosen by the controller.
type Scope string

const (
	ScopeNode    Scope = messages.ScopeNode    // network and host checks: every node
	ScopeCluster Scope = messages.ScopeCluster // cluster, database and application checks: one agent per cluster
)

// Check is what is known of a built-in check without running it.
type Check struct {
	// Name identifies the check in reports and diagnostics rules: a
	// contract, lower_snake_case.
	Name string
	// Layer is the report layer (messages.Layer*).
	Layer string
	// Scope is where the check runs.
	Scope Scope
	// Title is how the check reads in a report when it passed.
	Title string
	// DependsOn names the checks that must pass (or warn) before this one
	// is worth running.
	DependsOn []string
	// OnHostApp marks a cluster check that must run on the node that runs
	// the host app (it listens on that machine's loopback); the others go
	// to one agent of the cluster, a controlplane node first.
	OnHostApp bool
}

// HostAppChecks are the names of the checks marked OnHostApp.
func HostAppChecks() []string {
	var out []string
	for _, c := range Builtin {
		if c.OnHostApp {
			out = append(out, c.Name)
		}
	}
	return out
}

// Builtin is every built-in check, in report order: network, host, cluster
// (Kubernetes, then Talos), database, application.
var Builtin = []Check{
	{Name: "tailscaled_running", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "tailscaled running"},
	{Name: "tailnet_connected", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "Tailnet connected", DependsOn: []string{"tailscaled_running"}},
	{Name: "controller_reachable", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "Controller reachable over the tailnet", DependsOn: []string{"tailnet_connected"}},
	{Name: "routes_approved", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "Routes approved", DependsOn: []string{"tailnet_connected"}},
	{Name: "login_server_health", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "Login server healthy"},
	{Name: "dns_resolution", Layer: messages.LayerNetwork, Scope: ScopeNode, Title: "DNS resolution working"},
	{Name: "host_cpu", Layer: messages.LayerHost, Scope: ScopeNode, Title: "CPU ok"},
	{Name: "host_memory", Layer: messages.LayerHost, Scope: ScopeNode, Title: "Memory ok"},
	{Name: "host_disk", Layer: messages.LayerHost, Scope: ScopeNode, Title: "Disk ok"},
	{Name: "kube_api_ready", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "Kubernetes API healthy"},
	{Name: "nodes_ready", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "All nodes ready", DependsOn: []string{"kube_api_ready"}},
	{Name: "coredns_running", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "CoreDNS running", DependsOn: []string{"kube_api_ready"}},
	{Name: "metallb_available", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "MetalLB available", DependsOn: []string{"kube_api_ready"}},
	{Name: "guildnet_crds_established", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "GuildNet CRDs established", DependsOn: []string{"kube_api_ready"}},
	{Name: "talos_apid_version", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "Talos apid answering"},
	{Name: "talos_etcd_members", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "etcd members healthy", DependsOn: []string{"talos_apid_version"}},
	{Name: "talos_services_up", Layer: messages.LayerCluster, Scope: ScopeCluster, Title: "Talos services up", DependsOn: []string{"talos_apid_version"}},
	{Name: "rethinkdb_pods_ready", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB pods ready", DependsOn: []string{"kube_api_ready"}},
	{Name: "rethinkdb_address", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB address found", DependsOn: []string{"rethinkdb_pods_ready"}},
	{Name: "rethinkdb_tcp", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB port reachable", DependsOn: []string{"rethinkdb_address"}},
	{Name: "rethinkdb_query", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB answering queries", DependsOn: []string{"rethinkdb_tcp"}},
	{Name: "rethinkdb_databases", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB databases present", DependsOn: []string{"rethinkdb_query"}},
	{Name: "rethinkdb_org_tables", Layer: messages.LayerDatabase, Scope: ScopeCluster, Title: "RethinkDB org meta tables present", DependsOn: []string{"rethinkdb_query"}},
	{Name: "hostapp_healthz", Layer: messages.LayerApplication, Scope: ScopeCluster, Title: "Host app healthy", OnHostApp: true},
	{Name: "hostapp_api_health", Layer: messages.LayerApplication, Scope: ScopeCluster, Title: "Host app reports its clusters ok", DependsOn: []string{"hostapp_healthz"}, OnHostApp: true},
	{Name: "operator_available", Layer: messages.LayerApplication, Scope: ScopeCluster, Title: "Operator reconciling", DependsOn: []string{"kube_api_ready"}},
	{Name: "workspaces_settled", Layer: messages.LayerApplication, Scope: ScopeCluster, Title: "Workspaces settled", DependsOn: []string{"operator_available", "guildnet_crds_established"}},
	{Name: "proxy_answers", Layer: messages.LayerApplication, Scope: ScopeCluster, Title: "Proxy answering", DependsOn: []string{"hostapp_healthz", "guildnet_crds_established"}, OnHostApp: true},
}

// Lookup returns the built-in check of a name.
func Lookup(name string) (Check, bool) {
	if i := Rank(name); i < len(Builtin) {
		return Builtin[i], true
	}
	return Check{}, false
}

// Rank is a check's position in report order, after every built-in check
// when it is not one.
func Rank(name string) int {
	if i := slices.IndexFunc(Builtin, func(c Check) bool { return c.Name == name }); i >= 0 {
		return i
	}
	return len(Builtin)
}
