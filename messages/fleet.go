package messages

// The fleet spec: the desired state of every cluster that setup and
// rollouts bring about. Operators write it as YAML (apiVersion
// metaguildnet/v1, kind Fleet); package fleet parses and validates that
// file with FILE:LINE errors and produces these types, which are what is
// stored (spec revisions) and what a setup step receives. JSON names are
// the YAML names.
//
// Secrets are never values here: a field ending in From holds a
// [SecretRef] ("env:NAME" or "file:PATH") that is resolved where the
// secret is used, so a spec can be stored, printed and sent without
// carrying one.

// Fleet spec identity.
const (
	FleetAPIVersion = "metaguildnet/v1"
	FleetKind       = "Fleet"
)

// Node roles a fleet spec may give.
const (
	RoleControlPlane = "controlplane"
	RoleWorker       = "worker"
	RoleRouter       = "router"
	RoleHostApp      = "hostapp"
)

// Fleet is a whole fleet spec.
type Fleet struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   FleetMeta      `json:"metadata"`
	Clusters   []FleetCluster `json:"clusters"`
}

// FleetMeta names the spec.
type FleetMeta struct {
	Name string `json:"name"`
}

// FleetCluster is one cluster's desired state.
type FleetCluster struct {
	Name        string           `json:"name"`
	Nodes       []FleetNode      `json:"nodes"`
	Network     FleetNetwork     `json:"network"`
	Cluster     FleetKube        `json:"cluster"`
	Application FleetApplication `json:"application"`
	// Require lists the layers and checks this cluster must run: a
	// required check that is not configured fails with what to set.
	// Empty means the defaults (every layer, GuildNet's checks).
	Require FleetRequire `json:"require,omitzero"`
}

// FleetRequire says which layers and checks a cluster must run.
type FleetRequire struct {
	Layers []string `json:"layers,omitempty"`
	Checks []string `json:"checks,omitempty"`
}

// FleetNode is one node: an agent's name and its role.
type FleetNode struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Labels are the node's labels (claims), as with `controller nodes set`.
	Labels map[string]string `json:"labels,omitempty"`
	// TalosEndpoint is the node's apid address (HOST:PORT, port 50000 by
	// default); empty when the cluster's provider is not talos.
	TalosEndpoint string `json:"talosEndpoint,omitempty"`
	// Hostname is the tailnet hostname; empty means the node's name.
	Hostname string `json:"hostname,omitempty"`
}

// FleetNetwork is the network layer: Headscale and tailscaled.
type FleetNetwork struct {
	// LoginServer is the Headscale URL nodes log in to (TS_LOGIN_SERVER).
	LoginServer string `json:"loginServer"`
	// HeadscaleAPIKeyFrom is Headscale's API key (headscale apikeys create).
	HeadscaleAPIKeyFrom SecretRef `json:"headscaleAPIKeyFrom,omitempty"`
	// AuthKeyFrom, when set, is a pre-auth key nodes log in with instead
	// of one setup creates.
	AuthKeyFrom SecretRef `json:"authKeyFrom,omitempty"`
	// User is the Headscale user of the cluster; default cluster-<name>.
	User string `json:"user,omitempty"`
	// Routes are what router nodes advertise (TS_ROUTES); default
	// GuildNet's 10.0.0.0/24,10.96.0.0/12,10.244.0.0/16.
	Routes []string `json:"routes,omitempty"`
	// AcceptRoutes makes non-router nodes accept the routers' routes;
	// default true.
	AcceptRoutes *bool `json:"acceptRoutes,omitempty"`
	// AutoApproveRoutes approves advertised routes on Headscale
	// (METAGN_AUTO_APPROVE_ROUTES); default true.
	AutoApproveRoutes *bool `json:"autoApproveRoutes,omitempty"`
}

// FleetKube is the cluster layer: Talos (or an existing Kubernetes) and
// the add-ons.
type FleetKube struct {
	// Provider is talos (machine configs applied to apid) or kubernetes
	// (an existing API server: KubeconfigFrom).
	Provider       string      `json:"provider"`
	KubeconfigFrom SecretRef   `json:"kubeconfigFrom,omitempty"`
	Talos          FleetTalos  `json:"talos,omitzero"`
	Addons         FleetAddons `json:"addons,omitzero"`
}

// FleetTalos is what Talos machine configs are generated from.
type FleetTalos struct {
	ClusterName string `json:"clusterName,omitempty"` // default the cluster's name
	// Endpoint is the Kubernetes API endpoint, https://IP:6443.
	Endpoint          string `json:"endpoint,omitempty"`
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// ConfigPatches are strategic-merge or JSON6902 patches (YAML text)
	// applied to every generated machine config, in order.
	ConfigPatches []string `json:"configPatches,omitempty"`
}

// FleetAddons are the Kubernetes objects the cluster layer applies.
type FleetAddons struct {
	MetalLB    FleetMetalLB `json:"metallb,omitzero"`
	CRDs       *bool        `json:"crds,omitempty"` // the GuildNet CRDs; default true
	Namespaces []string     `json:"namespaces,omitempty"`
}

// FleetMetalLB is MetalLB's address pool and L2 advertisement.
type FleetMetalLB struct {
	Enabled         *bool    `json:"enabled,omitempty"`         // default true
	Pool            string   `json:"pool,omitempty"`            // default workspaces
	Addresses       []string `json:"addresses,omitempty"`       // default 10.0.0.200-10.0.0.250
	L2Advertisement string   `json:"l2Advertisement,omitempty"` // default workspaces-l2
}

// FleetApplication is the database and application layers.
type FleetApplication struct {
	RethinkDB FleetRethinkDB `json:"rethinkdb,omitzero"`
	Operator  FleetOperator  `json:"operator,omitzero"`
	HostApp   FleetHostApp   `json:"hostApp,omitzero"`
}

// FleetRethinkDB is RethinkDB's Deployment, Service and databases.
type FleetRethinkDB struct {
	Namespace string `json:"namespace,omitempty"` // default default
	Service   string `json:"service,omitempty"`   // default rethinkdb
	Port      int    `json:"port,omitempty"`      // default 28015
	Image     string `json:"image,omitempty"`
	// Addr overrides the address the driver dials (RETHINKDB_ADDR).
	Addr         string    `json:"addr,omitempty"`
	User         string    `json:"user,omitempty"`
	PasswordFrom SecretRef `json:"passwordFrom,omitempty"`
	// Databases are created with their meta tables (_schemas, _audit,
	// _info) when missing: org_<org>__<db>.
	Databases []string `json:"databases,omitempty"`
}

// FleetOperator is the workspace operator's Deployment.
type FleetOperator struct {
	Namespace string `json:"namespace,omitempty"` // default guildnet-system
	Image     string `json:"image,omitempty"`
	Replicas  *int32 `json:"replicas,omitempty"` // default 1
}

// FleetHostApp is the host app's settings (~/.guildnet/config.json).
type FleetHostApp struct {
	ListenLocal string `json:"listenLocal,omitempty"` // default 127.0.0.1:8090
	Name        string `json:"name,omitempty"`
	// ConfigPath is where the host app reads its config; default
	// ~/.guildnet/config.json of the agent's user.
	ConfigPath string `json:"configPath,omitempty"`
}

// SecretRef points at a secret: "env:NAME" (an environment variable of the
// process that uses it) or "file:PATH" (a file on that machine). It is the
// only way a spec names a secret.
type SecretRef string
