package fleet

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/guildnet/metaguildnet/messages"
)

// Roles are the node roles a spec may give.
var Roles = []string{messages.RoleControlPlane, messages.RoleWorker, messages.RoleRouter, messages.RoleHostApp}

// Layers are the layers a spec may require, in setup order.
var Layers = []string{messages.LayerNetwork, messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication}

// Providers of the cluster layer.
const (
	ProviderTalos      = "talos"
	ProviderKubernetes = "kubernetes"
)

// Bounds on a spec.
const (
	MaxClusters       = 64
	MaxNodesPerCluser = 1000
	maxList           = 256
	maxString         = 4096
	maxPatchBytes     = 64 << 10
)

// GuildNet's defaults.
var (
	DefaultRoutes          = []string{"10.0.0.0/24", "10.96.0.0/12", "10.244.0.0/16"}
	DefaultMetalLBPool     = "workspaces"
	DefaultMetalLBAddrs    = []string{"10.0.0.200-10.0.0.250"}
	DefaultL2Advertisement = "workspaces-l2"
	DefaultRethinkNS       = "default"
	DefaultRethinkService  = "rethinkdb"
	DefaultRethinkPort     = 28015
	DefaultOperatorNS      = "guildnet-system"
	DefaultHostAppListen   = "127.0.0.1:8090"
	DefaultTalosPort       = "50000"
)

var (
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hostname = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	dbName   = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
	image    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$`)
)

// ValidSecretRef checks a secret reference: env:NAME or file:PATH. The
// error never repeats the value (it may be a secret pasted by mistake).
func ValidSecretRef(r messages.SecretRef) error {
	s := string(r)
	switch {
	case strings.HasPrefix(s, "env:"):
		if !envName.MatchString(s[4:]) {
			return fmt.Errorf("env:NAME needs a variable name (letters, digits, '_')")
		}
		return nil
	case strings.HasPrefix(s, "file:"):
		p := s[5:]
		if p == "" || len(p) > maxString || strings.ContainsAny(p, "\x00\n\r") {
			return fmt.Errorf("file:PATH needs a path (one line)")
		}
		return nil
	}
	return fmt.Errorf("not a secret reference: want env:NAME or file:PATH (secrets are never written in the spec; the value is not shown)")
}

// validate checks f; at gives the file and line of a field path.
func validate(f *messages.Fleet, at func(field string) (string, int)) error {
	fail := func(field, format string, a ...any) error {
		file, line := at(field)
		return &Error{File: file, Line: line, Field: field, Msg: fmt.Sprintf(format, a...)}
	}
	if f.APIVersion != messages.FleetAPIVersion {
		return fail("apiVersion", "want %q, got %q", messages.FleetAPIVersion, f.APIVersion)
	}
	if f.Kind != messages.FleetKind {
		return fail("kind", "want %q, got %q", messages.FleetKind, f.Kind)
	}
	if f.Metadata.Name != "" {
		if err := messages.ValidClusterName(f.Metadata.Name); err != nil {
			return fail("metadata.name", "%v", err)
		}
	}
	if len(f.Clusters) == 0 {
		return fail("clusters", "no clusters: a spec names at least one")
	}
	if len(f.Clusters) > MaxClusters {
		return fail("clusters", "%d clusters, at most %d", len(f.Clusters), MaxClusters)
	}
	clusters := map[string]int{}
	nodes := map[string]string{} // node -> field of its first mention
	for ci := range f.Clusters {
		c := &f.Clusters[ci]
		p := fmt.Sprintf("clusters[%d]", ci)
		if err := messages.ValidClusterName(c.Name); err != nil {
			return fail(p+".name", "%v", err)
		}
		if prev, dup := clusters[c.Name]; dup {
			return fail(p+".name", "cluster %q is also clusters[%d]", c.Name, prev)
		}
		clusters[c.Name] = ci
		if len(c.Nodes) == 0 {
			return fail(p+".nodes", "cluster %q has no nodes", c.Name)
		}
		if len(c.Nodes) > MaxNodesPerCluser {
			return fail(p+".nodes", "%d nodes, at most %d", len(c.Nodes), MaxNodesPerCluser)
		}
		controlplanes := 0
		for ni := range c.Nodes {
			n := &c.Nodes[ni]
			np := fmt.Sprintf("%s.nodes[%d]", p, ni)
			if err := messages.ValidNodeName(n.Name); err != nil {
				return fail(np+".name", "%v", err)
			}
			if prev, dup := nodes[n.Name]; dup {
				return fail(np+".name", "node %q is also %s: node names are unique across the fleet", n.Name, prev)
			}
			nodes[n.Name] = np
			if !slices.Contains(Roles, n.Role) {
				return fail(np+".role", "%q is not one of %s", n.Role, strings.Join(Roles, ", "))
			}
			if n.Role == messages.RoleControlPlane {
				controlplanes++
			}
			if err := messages.ValidateLabels(n.Labels); err != nil {
				return fail(np+".labels", "%v", err)
			}
			if n.Hostname != "" && !hostname.MatchString(n.Hostname) {
				return fail(np+".hostname", "%q is not a host name (letters, digits, '-', at most 63)", n.Hostname)
			}
			if n.TalosEndpoint != "" {
				if err := validEndpoint(n.TalosEndpoint); err != nil {
					return fail(np+".talosEndpoint", "%v", err)
				}
			}
		}
		if controlplanes == 0 {
			return fail(p+".nodes", "cluster %q has no node with role controlplane (cluster steps and checks run there)", c.Name)
		}
		if err := validateRequire(c, p, fail); err != nil {
			return err
		}
		if err := validateNetwork(c, p, fail); err != nil {
			return err
		}
		if err := validateKube(c, p, fail); err != nil {
			return err
		}
		if err := validateApp(c, p, fail); err != nil {
			return err
		}
	}
	return nil
}

type failFunc func(field, format string, a ...any) error

func required(c *messages.FleetCluster, layer string) bool {
	return len(c.Require.Layers) == 0 || slices.Contains(c.Require.Layers, layer)
}

func validateRequire(c *messages.FleetCluster, p string, fail failFunc) error {
	if len(c.Require.Layers) > len(Layers) {
		return fail(p+".require.layers", "%d layers, there are %d", len(c.Require.Layers), len(Layers))
	}
	for i, l := range c.Require.Layers {
		if !slices.Contains(Layers, l) {
			return fail(fmt.Sprintf("%s.require.layers[%d]", p, i), "%q is not one of %s", l, strings.Join(Layers, ", "))
		}
	}
	if len(c.Require.Checks) > maxList {
		return fail(p+".require.checks", "%d checks, at most %d", len(c.Require.Checks), maxList)
	}
	for i, ch := range c.Require.Checks {
		if err := messages.ValidCheckName(ch); err != nil {
			return fail(fmt.Sprintf("%s.require.checks[%d]", p, i), "%v", err)
		}
	}
	return nil
}

func validateNetwork(c *messages.FleetCluster, p string, fail failFunc) error {
	n := &c.Network
	p += ".network"
	if n.LoginServer == "" {
		if required(c, messages.LayerNetwork) {
			return fail(p+".loginServer", "missing: the Headscale URL nodes log in to (https://headscale.example:443)")
		}
	} else if err := validURL(n.LoginServer, "http", "https"); err != nil {
		return fail(p+".loginServer", "%v", err)
	}
	for _, r := range []struct {
		field string
		ref   messages.SecretRef
	}{{"headscaleAPIKeyFrom", n.HeadscaleAPIKeyFrom}, {"authKeyFrom", n.AuthKeyFrom}} {
		if r.ref != "" {
			if err := ValidSecretRef(r.ref); err != nil {
				return fail(p+"."+r.field, "%v", err)
			}
		}
	}
	if n.HeadscaleAPIKeyFrom == "" && n.AuthKeyFrom == "" && required(c, messages.LayerNetwork) {
		return fail(p+".headscaleAPIKeyFrom", "missing: give headscaleAPIKeyFrom (setup creates the user and pre-auth key) or authKeyFrom (env:NAME or file:PATH)")
	}
	if n.User != "" {
		if err := messages.ValidClusterName(n.User); err != nil {
			return fail(p+".user", "%v", err)
		}
	}
	if len(n.Routes) > maxList {
		return fail(p+".routes", "%d routes, at most %d", len(n.Routes), maxList)
	}
	for i, r := range n.Routes {
		if _, err := netip.ParsePrefix(r); err != nil {
			return fail(fmt.Sprintf("%s.routes[%d]", p, i), "%q is not a CIDR (10.96.0.0/12)", r)
		}
	}
	return nil
}

func validateKube(c *messages.FleetCluster, p string, fail failFunc) error {
	k := &c.Cluster
	p += ".cluster"
	switch k.Provider {
	case ProviderTalos:
		for i, n := range c.Nodes {
			// A hostapp node runs GuildNet's host app, not Talos: it
			// needs no apid address.
			if n.TalosEndpoint == "" && n.Role != messages.RoleHostApp {
				return fail(fmt.Sprintf("%s.nodes[%d].talosEndpoint", strings.TrimSuffix(p, ".cluster"), i),
					"missing: provider talos needs each Kubernetes node's apid address (HOST:PORT, port 50000)")
			}
		}
		if k.Talos.Endpoint == "" {
			return fail(p+".talos.endpoint", "missing: provider talos needs the Kubernetes API endpoint (https://IP:6443)")
		}
		if err := validURL(k.Talos.Endpoint, "https"); err != nil {
			return fail(p+".talos.endpoint", "%v", err)
		}
		if k.KubeconfigFrom != "" {
			if err := ValidSecretRef(k.KubeconfigFrom); err != nil {
				return fail(p+".kubeconfigFrom", "%v", err)
			}
		}
	case ProviderKubernetes:
		if k.KubeconfigFrom == "" {
			return fail(p+".kubeconfigFrom", "missing: provider kubernetes needs the cluster's kubeconfig (env:NAME or file:PATH)")
		}
		if err := ValidSecretRef(k.KubeconfigFrom); err != nil {
			return fail(p+".kubeconfigFrom", "%v", err)
		}
	case "":
		return fail(p+".provider", "missing: talos or kubernetes")
	default:
		return fail(p+".provider", "%q is not talos or kubernetes", k.Provider)
	}
	if t := k.Talos.ClusterName; t != "" && !dnsLabel.MatchString(t) {
		return fail(p+".talos.clusterName", "%q is not a DNS label", t)
	}
	if v := k.Talos.KubernetesVersion; v != "" && !regexp.MustCompile(`^v?\d+\.\d+\.\d+$`).MatchString(v) {
		return fail(p+".talos.kubernetesVersion", "%q is not a version (1.37.2)", v)
	}
	if len(k.Talos.ConfigPatches) > maxList {
		return fail(p+".talos.configPatches", "%d patches, at most %d", len(k.Talos.ConfigPatches), maxList)
	}
	for i, patch := range k.Talos.ConfigPatches {
		if len(patch) > maxPatchBytes || strings.TrimSpace(patch) == "" {
			return fail(fmt.Sprintf("%s.talos.configPatches[%d]", p, i), "empty or larger than %d bytes", maxPatchBytes)
		}
	}
	m := &k.Addons.MetalLB
	if m.Pool != "" && !dnsLabel.MatchString(m.Pool) {
		return fail(p+".addons.metallb.pool", "%q is not a DNS label", m.Pool)
	}
	if m.L2Advertisement != "" && !dnsLabel.MatchString(m.L2Advertisement) {
		return fail(p+".addons.metallb.l2Advertisement", "%q is not a DNS label", m.L2Advertisement)
	}
	if len(m.Addresses) > maxList {
		return fail(p+".addons.metallb.addresses", "%d entries, at most %d", len(m.Addresses), maxList)
	}
	for i, a := range m.Addresses {
		if err := validAddressRange(a); err != nil {
			return fail(fmt.Sprintf("%s.addons.metallb.addresses[%d]", p, i), "%v", err)
		}
	}
	if len(k.Addons.Namespaces) > maxList {
		return fail(p+".addons.namespaces", "%d namespaces, at most %d", len(k.Addons.Namespaces), maxList)
	}
	for i, ns := range k.Addons.Namespaces {
		if !dnsLabel.MatchString(ns) {
			return fail(fmt.Sprintf("%s.addons.namespaces[%d]", p, i), "%q is not a namespace name (DNS label)", ns)
		}
	}
	return nil
}

func validateApp(c *messages.FleetCluster, p string, fail failFunc) error {
	r := &c.Application.RethinkDB
	p += ".application"
	if r.Namespace != "" && !dnsLabel.MatchString(r.Namespace) {
		return fail(p+".rethinkdb.namespace", "%q is not a namespace name", r.Namespace)
	}
	if r.Service != "" && !dnsLabel.MatchString(r.Service) {
		return fail(p+".rethinkdb.service", "%q is not a Service name", r.Service)
	}
	if r.Port != 0 && (r.Port < 1 || r.Port > 65535) {
		return fail(p+".rethinkdb.port", "%d is not a port (1-65535)", r.Port)
	}
	if r.Image != "" && !image.MatchString(r.Image) {
		return fail(p+".rethinkdb.image", "%q is not an image reference", r.Image)
	}
	if r.Addr != "" {
		if err := validEndpoint(r.Addr); err != nil {
			return fail(p+".rethinkdb.addr", "%v", err)
		}
	}
	if len(r.User) > 128 || strings.ContainsAny(r.User, "\x00\n") {
		return fail(p+".rethinkdb.user", "not a user name")
	}
	if r.PasswordFrom != "" {
		if err := ValidSecretRef(r.PasswordFrom); err != nil {
			return fail(p+".rethinkdb.passwordFrom", "%v", err)
		}
	}
	if len(r.Databases) > maxList {
		return fail(p+".rethinkdb.databases", "%d databases, at most %d", len(r.Databases), maxList)
	}
	for i, db := range r.Databases {
		if !dbName.MatchString(db) {
			return fail(fmt.Sprintf("%s.rethinkdb.databases[%d]", p, i), "%q is not a RethinkDB database name (letters, digits, '_')", db)
		}
	}
	o := &c.Application.Operator
	if o.Namespace != "" && !dnsLabel.MatchString(o.Namespace) {
		return fail(p+".operator.namespace", "%q is not a namespace name", o.Namespace)
	}
	if o.Image != "" && !image.MatchString(o.Image) {
		return fail(p+".operator.image", "%q is not an image reference", o.Image)
	}
	if o.Replicas != nil && (*o.Replicas < 0 || *o.Replicas > 100) {
		return fail(p+".operator.replicas", "%d is not between 0 and 100", *o.Replicas)
	}
	h := &c.Application.HostApp
	if h.ListenLocal != "" {
		host, _, err := net.SplitHostPort(h.ListenLocal)
		if err != nil {
			return fail(p+".hostApp.listenLocal", "%q is not HOST:PORT", h.ListenLocal)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			return fail(p+".hostApp.listenLocal", "%q is not a loopback address (the host app listens locally)", h.ListenLocal)
		}
	}
	if len(h.Name) > 253 || strings.ContainsAny(h.Name, "\x00\n") {
		return fail(p+".hostApp.name", "not a name (one line, at most 253 bytes)")
	}
	if len(h.ConfigPath) > maxString || strings.ContainsAny(h.ConfigPath, "\x00\n") {
		return fail(p+".hostApp.configPath", "not a path (one line)")
	}
	return nil
}

func validURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || !slices.Contains(schemes, u.Scheme) || len(s) > maxString {
		return fmt.Errorf("%q is not a %s URL", s, strings.Join(schemes, " or "))
	}
	if u.User != nil {
		return fmt.Errorf("a URL with credentials is refused (secrets go in *From references)")
	}
	return nil
}

// validEndpoint checks HOST[:PORT].
func validEndpoint(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, ""
	}
	if host == "" || len(s) > 255 || strings.ContainsAny(host, "/ \t\n@") {
		return fmt.Errorf("%q is not HOST:PORT", s)
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port is not 1-65535", s)
		}
	}
	return nil
}

// validAddressRange checks a MetalLB address: a CIDR or FIRST-LAST.
func validAddressRange(s string) error {
	if _, err := netip.ParsePrefix(s); err == nil {
		return nil
	}
	a, b, ok := strings.Cut(s, "-")
	if ok {
		x, err1 := netip.ParseAddr(strings.TrimSpace(a))
		y, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if err1 == nil && err2 == nil && x.Is4() == y.Is4() && !y.Less(x) {
			return nil
		}
	}
	return fmt.Errorf("%q is neither a CIDR nor FIRST-LAST (10.0.0.200-10.0.0.250)", s)
}

// Defaults fills in GuildNet's defaults where f leaves a field empty.
func Defaults(f *messages.Fleet) {
	for i := range f.Clusters {
		c := &f.Clusters[i]
		n := &c.Network
		if n.User == "" {
			n.User = "cluster-" + c.Name
		}
		if len(n.Routes) == 0 {
			n.Routes = slices.Clone(DefaultRoutes)
		}
		if n.AcceptRoutes == nil {
			n.AcceptRoutes = ptrTrue()
		}
		if n.AutoApproveRoutes == nil {
			n.AutoApproveRoutes = ptrTrue()
		}
		for j := range c.Nodes {
			nd := &c.Nodes[j]
			if nd.Hostname == "" {
				nd.Hostname = nd.Name
			}
			if nd.TalosEndpoint != "" {
				if _, _, err := net.SplitHostPort(nd.TalosEndpoint); err != nil {
					nd.TalosEndpoint = net.JoinHostPort(nd.TalosEndpoint, DefaultTalosPort)
				}
			}
		}
		k := &c.Cluster
		if k.Provider == ProviderTalos && k.Talos.ClusterName == "" {
			k.Talos.ClusterName = c.Name
		}
		m := &k.Addons.MetalLB
		if m.Enabled == nil {
			m.Enabled = ptrTrue()
		}
		if m.Pool == "" {
			m.Pool = DefaultMetalLBPool
		}
		if len(m.Addresses) == 0 {
			m.Addresses = slices.Clone(DefaultMetalLBAddrs)
		}
		if m.L2Advertisement == "" {
			m.L2Advertisement = DefaultL2Advertisement
		}
		if k.Addons.CRDs == nil {
			k.Addons.CRDs = ptrTrue()
		}
		r := &c.Application.RethinkDB
		if r.Namespace == "" {
			r.Namespace = DefaultRethinkNS
		}
		if r.Service == "" {
			r.Service = DefaultRethinkService
		}
		if r.Port == 0 {
			r.Port = DefaultRethinkPort
		}
		o := &c.Application.Operator
		if o.Namespace == "" {
			o.Namespace = DefaultOperatorNS
		}
		if o.Replicas == nil {
			one := int32(1)
			o.Replicas = &one
		}
		if c.Application.HostApp.ListenLocal == "" {
			c.Application.HostApp.ListenLocal = DefaultHostAppListen
		}
	}
}

func ptrTrue() *bool { t := true; return &t }

// ValidateCluster checks one cluster of a spec alone (the step task's
// arguments carry only the node's cluster).
func ValidateCluster(c *messages.FleetCluster) error {
	f := &messages.Fleet{APIVersion: messages.FleetAPIVersion, Kind: messages.FleetKind, Clusters: []messages.FleetCluster{*c}}
	return validate(f, func(string) (string, int) { return "", 0 })
}
