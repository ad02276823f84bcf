package main

// The bare world (`testworld up --bare [--clusters N]`, `make testenv-up
// TESTENV_BARE=1 [TESTENV_CLUSTERS=N]`): the servers a GuildNet fleet runs
// on with nothing of GuildNet in them, for setup to bring up. Per cluster:
// etcd + kube-apiserver with the live control plane (controllers,
// scheduler, KWOK) and no Nodes until Talos says a node is up, one Talos
// apid stand-in per Kubernetes node in maintenance mode, a RethinkDB
// stand-in with no GuildNet database. Shared: one Headscale with no users
// (an API key for setup in DIR/secrets/headscale-api-key, 0600), one
// host-app stand-in for the hostapp node, and one real tailscaled per node,
// logged out, in a loopback-only network namespace.
//
// It writes DIR/fleet.yaml (the fleet spec for this world, in
// messages.Fleet's field names) and DIR/nodes/NAME/env per node (what an
// agent needs, nothing secret), so
//
//	set -a; . DIR/nodes/alpha-cp1/env; set +a
//	agent run --controller URL --token T --state-dir S
//
// is all an agent needs.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
	"github.com/guildnet/metaguildnet/messages"
)

// Bare world layout and defaults.
const (
	fleetFile       = "fleet.yaml"
	nodesDir        = "nodes"
	clustersDir     = "clusters"
	secretsDir      = "secrets"
	apiKeyFile      = "headscale-api-key"
	maxBareClusters = 5
	// bareDatabase is the GuildNet database the fleet asks for.
	bareDatabase = "org_demo__main"
	// nodeRegisterTimeout bounds creating a Node (and CoreDNS) when Talos
	// reports a node bootstrapped.
	nodeRegisterTimeout = 60 * time.Second
)

// bareClusterNames are the clusters' names, in order.
var bareClusterNames = []string{"alpha", "beta", "gamma", "delta", "epsilon"}

// bareRoutes are what each cluster's router advertises: GuildNet's
// defaults for the first, distinct ranges for the others (so every router
// is the primary for its own).
func bareRoutes(i int) []string {
	if i == 0 {
		return []string{"10.0.0.0/24", "10.96.0.0/12", "10.244.0.0/16"}
	}
	return []string{fmt.Sprintf("10.%d.0.0/24", i), fmt.Sprintf("10.%d.0.0/12", 96+16*i), fmt.Sprintf("10.%d.0.0/16", 244+i)}
}

// bareNode is one simulated machine.
type bareNode struct {
	name, cluster, role string
	talos               *talosstandin.Server // nil for the hostapp node
	tailscaled          *testenv.Tailscaled  // nil when no namespace can be made
	tsSocket            string
}

// bareCluster is one cluster's server set.
type bareCluster struct {
	name     string
	routes   []string
	kube     *testenv.Kube
	cp       *testenv.ControlPlane
	cs       kubernetes.Interface
	rdb      *rdbstandin.Server
	talos    *talosstandin.Cluster
	nodes    []*bareNode
	coreOnce sync.Once
	// closers stop what the cluster started, in start order; addrs are
	// its ports for `testworld exec`. The world takes both over.
	closers []func()
	addrs   []string
}

// bareWorld is what a bare serve keeps besides the shared world fields.
type bareWorld struct {
	clusters []*bareCluster
	hostApp  *hostappstandin.Server
	hostNode *bareNode
}

// bareNodeRoles are the nodes of every cluster; the first cluster also has
// a hostapp node (the machine running GuildNet's host app).
var bareNodeRoles = []struct{ suffix, role string }{
	{"cp1", messages.RoleControlPlane},
	{"w1", messages.RoleWorker},
	{"r1", messages.RoleRouter},
}

func (w *world) startBare(ctx context.Context, clusters int) error {
	if clusters < 1 || clusters > maxBareClusters {
		return fmt.Errorf("--clusters %d: want 1 to %d", clusters, maxBareClusters)
	}
	t0 := time.Now()
	w.bare = &bareWorld{}
	if err := os.MkdirAll(filepath.Join(w.dir, secretsDir), 0o700); err != nil {
		return err
	}
	var err error
	if w.hs, err = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: filepath.Join(w.dir, "headscale")}); err != nil {
		return err
	}
	// Headscale has no users: setup makes them. It gets an API key for
	// that, kept in a 0600 file the fleet names (never in an env file).
	out, err := w.hs.CLI(ctx, "apikeys", "create", "--expiration", "168h")
	if err != nil {
		return fmt.Errorf("headscale API key: %w", err)
	}
	key := lastLine(string(out))
	if key == "" {
		return errors.New("headscale apikeys create printed no key")
	}
	if err := writePrivate(filepath.Join(w.dir, secretsDir, apiKeyFile), []byte(key+"\n")); err != nil {
		return err
	}
	log("headscale %s at %s in %v (no users; API key in %s)", testenv.HeadscaleVersion, w.hs.URL(), w.hs.StartedIn, filepath.Join(w.dir, secretsDir, apiKeyFile))
	w.add("HEADSCALE_URL", w.hs.URL(), "Headscale with its embedded DERP (plain HTTP); no users: setup creates them")
	w.add("TS_LOGIN_SERVER", w.hs.URL(), "")
	w.add("HEADSCALE_CONFIG", w.hs.ConfigPath(), "headscale -c $HEADSCALE_CONFIG users list")
	w.add("HEADSCALE_BIN", testenv.HeadscalePath(), "")
	w.addPort(w.hs.URL())

	// The clusters' server sets start side by side; what each started is
	// handed to the world in cluster order, failed or not, so close stops it.
	started := make([]*bareCluster, clusters)
	errs := make([]error, clusters)
	var wg sync.WaitGroup
	for i := range clusters {
		wg.Go(func() { started[i], errs[i] = w.startBareCluster(ctx, i) })
	}
	wg.Wait()
	for _, c := range started {
		w.closers = append(w.closers, c.closers...)
		for _, a := range c.addrs {
			w.addPort(a)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, c := range started {
		w.bare.clusters = append(w.bare.clusters, c)
		w.add("KUBECONFIG_"+strings.ToUpper(c.name), c.kube.KubeconfigPath(), fmt.Sprintf("cluster %s: admin kubeconfig (agents get theirs from setup)", c.name))
		w.add("RETHINKDB_ADDR_"+strings.ToUpper(c.name), c.rdb.Addr(), fmt.Sprintf("cluster %s: RethinkDB STAND-IN, no GuildNet databases", c.name))
	}
	if err := w.startBareHostApp(); err != nil {
		return err
	}
	if err := w.startForwarders(); err != nil {
		return err
	}
	if err := w.startBareTailscaleds(ctx); err != nil {
		return err
	}
	if err := w.startControl(); err != nil {
		return err
	}
	if err := w.writeFleet(); err != nil {
		return err
	}
	if err := w.writeNodeEnvs(); err != nil {
		return err
	}
	w.add("MGN_FLEET", filepath.Join(w.dir, fleetFile), "the fleet spec for this world: controller setup apply -f $MGN_FLEET")
	w.add("MGN_NODES_DIR", filepath.Join(w.dir, nodesDir), "one env file per node: set -a; . $MGN_NODES_DIR/NAME/env; set +a")
	log("bare world up in %v: %d clusters", time.Since(t0).Round(time.Millisecond), clusters)
	return nil
}

func (w *world) startBareCluster(ctx context.Context, i int) (*bareCluster, error) {
	name := bareClusterNames[i]
	c := &bareCluster{name: name, routes: bareRoutes(i), talos: talosstandin.NewCluster()}
	// c is returned even on failure: the world stops what it started.
	dir := filepath.Join(w.dir, clustersDir, name)
	var err error
	opts := testenv.KubeOptions{Dir: filepath.Join(dir, "kube")}
	if i > 0 {
		opts.ServiceCIDR = c.routes[1]
	}
	if c.kube, err = testenv.StartKube(ctx, opts); err != nil {
		return c, fmt.Errorf("cluster %s: %w", name, err)
	}
	c.closers = append(c.closers, c.kube.Stop)
	if c.cp, err = c.kube.StartControlPlane(ctx); err != nil {
		return c, fmt.Errorf("cluster %s: %w", name, err)
	}
	c.closers = append(c.closers, c.cp.Stop)
	if c.cs, err = kubernetes.NewForConfig(c.kube.RESTConfig()); err != nil {
		return c, fmt.Errorf("cluster %s: client: %w", name, err)
	}
	c.addrs = append(c.addrs, c.kube.URL())
	kc, err := os.ReadFile(c.kube.KubeconfigPath())
	if err != nil {
		return c, fmt.Errorf("cluster %s: %w", name, err)
	}

	if c.rdb, err = rdbstandin.Start(rdbstandin.Options{}); err != nil {
		return c, fmt.Errorf("cluster %s: rethinkdb stand-in: %w", name, err)
	}
	c.closers = append(c.closers, rdb{c.rdb}.close)
	c.addrs = append(c.addrs, c.rdb.Addr())

	for _, nr := range bareNodeRoles {
		n := &bareNode{name: name + "-" + nr.suffix, cluster: name, role: nr.role}
		talosRole := talosstandin.RoleWorker
		if nr.role == messages.RoleControlPlane {
			talosRole = talosstandin.RoleControlPlane
		}
		n.talos, err = talosstandin.Start(talosstandin.Options{
			ClusterName: name, Endpoint: c.kube.URL(), Maintenance: true,
			Name: n.name, Role: talosRole, Kubeconfig: kc, Cluster: c.talos,
			OnState: c.onTalosState,
		})
		if err != nil {
			return c, fmt.Errorf("node %s: talos stand-in: %w", n.name, err)
		}
		c.closers = append(c.closers, talos{n.talos}.close)
		c.addrs = append(c.addrs, n.talos.Endpoint())
		c.nodes = append(c.nodes, n)
	}
	if i == 0 {
		n := &bareNode{name: name + "-host", cluster: name, role: messages.RoleHostApp}
		c.nodes = append(c.nodes, n)
		w.bare.hostNode = n
	}
	log("cluster %s: kube-apiserver at %s (live control plane, no Nodes), rethinkdb stand-in at %s, %d Talos stand-ins in maintenance",
		name, c.kube.URL(), c.rdb.Addr(), len(bareNodeRoles))
	return c, nil
}

// onTalosState is the Talos stand-ins' callback: when a node is
// configured in a bootstrapped cluster its kubelet would register, so the
// world creates its Node (KWOK then keeps it Ready); at the cluster's
// bootstrap the control plane's CoreDNS appears, as Talos deploys it.
func (c *bareCluster) onTalosState(node, role, state string) {
	if state != talosstandin.StateBootstrapped {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodeRegisterTimeout)
	defer cancel()
	// A busy API server may time a call out: what a kubelet and Talos do
	// is retried (a Node or CoreDNS missing for good fails setup's
	// verification for a reason no real cluster has).
	if err := retryKube(ctx, func() error { return registerNode(ctx, c.cs, node, role) }); err != nil {
		log("cluster %s: registering Node %s: %v", c.name, node, err)
		return
	}
	log("cluster %s: Node %s (%s) registered", c.name, node, role)
	c.coreOnce.Do(func() {
		if err := retryKube(ctx, func() error { return deployCoreDNS(ctx, c.cs) }); err != nil {
			log("cluster %s: CoreDNS: %v", c.name, err)
			return
		}
		log("cluster %s: CoreDNS deployed", c.name)
	})
}

// retryKube runs f until it succeeds or ctx ends, every 500 ms.
func retryKube(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// nodeResources is what a simulated kubelet reports: enough for the
// scheduler to place GuildNet's pods.
var nodeResources = corev1.ResourceList{
	corev1.ResourceCPU:    resource.MustParse("4"),
	corev1.ResourceMemory: resource.MustParse("8Gi"),
	corev1.ResourcePods:   resource.MustParse("110"),
}

// registerNode creates the Node as a kubelet would (KWOK manages every
// node and reports it Ready). It exists already: nothing to do.
func registerNode(ctx context.Context, cs kubernetes.Interface, name, role string) error {
	labels := map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
	if role == talosstandin.RoleControlPlane {
		labels["node-role.kubernetes.io/control-plane"] = ""
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"}},
		Status: corev1.NodeStatus{
			Allocatable: nodeResources, Capacity: nodeResources,
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: testenv.KubeVersion, OSImage: "Talos (" + talosstandin.TalosVersion + ")", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// Create drops status: write it through the status subresource, from
	// the live object (KWOK writes the Node's conditions at the same time:
	// an update from the created object conflicted, and the Node stayed
	// without allocatable resources).
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cur, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.Status.NodeInfo.OSImage == n.Status.NodeInfo.OSImage && equality.Semantic.DeepEqual(cur.Status.Allocatable, nodeResources) {
			return nil
		}
		cur.Status.Allocatable, cur.Status.Capacity, cur.Status.NodeInfo = nodeResources, nodeResources, n.Status.NodeInfo
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// deployCoreDNS creates CoreDNS's Deployment (k8s-app=kube-dns) and
// Service in kube-system, as Talos does at bootstrap; the live control
// plane and KWOK make its pods Running.
func deployCoreDNS(ctx context.Context, cs kubernetes.Interface) error {
	labels := map[string]string{"k8s-app": "kube-dns"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: "kube-system", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "coredns", Image: "registry.k8s.io/coredns/coredns:v1.12.1",
					Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}},
				}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("kube-system").Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
		}},
	}
	if _, err := cs.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// startBareHostApp runs the host-app stand-in for the hostapp node,
// reporting every cluster of the fleet.
func (w *world) startBareHostApp() error {
	var cl []hostappstandin.Cluster
	for _, c := range w.bare.clusters {
		cl = append(cl, hostappstandin.Cluster{ID: c.name, Name: c.name, Status: hostappstandin.StatusOK})
	}
	s, err := hostappstandin.Start(hostappstandin.Options{Clusters: cl, Kube: w.bare.clusters[0].cs})
	if err != nil {
		return fmt.Errorf("start host-app stand-in: %w", err)
	}
	w.bare.hostApp = s
	w.standins = append(w.standins, hostApp{s})
	if err := s.WriteCA(filepath.Join(w.dir, "hostapp-ca.pem")); err != nil {
		return err
	}
	w.addPort(s.URL())
	log("host-app stand-in at %s", s.URL())
	return nil
}

// startBareTailscaleds starts one real tailscaled per node, logged out,
// each in a loopback-only network namespace through `testworld exec`
// (where the world's ports answer), its LocalAPI socket a file under
// DIR/nodes/NAME/tailscaled. Without a namespace (not root) there is no
// tailscaled: TS_SOCKET still names where it would be, and the network
// steps report the socket missing.
func (w *world) startBareTailscaleds(ctx context.Context) error {
	nsErr := probeNetNS()
	why := testenv.Missing(testenv.NeedTailscaled)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, c := range w.bare.clusters {
		for _, n := range c.nodes {
			dir := filepath.Join(w.dir, nodesDir, n.name, "tailscaled")
			n.tsSocket = filepath.Join(dir, "ts.sock")
			if nsErr != nil || why != "" {
				continue
			}
			t, err := testenv.StartTailscaled(ctx, testenv.TailscaledOptions{
				Dir: dir, Wrap: []string{self, "exec", "--dir", w.dir, "--"},
			})
			if err != nil {
				return fmt.Errorf("node %s: %w", n.name, err)
			}
			n.tailscaled = t
			n.tsSocket = t.Socket()
			w.closers = append(w.closers, t.Close)
		}
	}
	switch {
	case nsErr != nil:
		log("no tailscaled: cannot make a network namespace here (%v); run as root for it", nsErr)
	case why != "":
		log("no tailscaled: %s (run `make testenv`)", why)
	default:
		log("tailscaled per node, logged out")
	}
	return nil
}

// fleet is the spec for this world.
func (w *world) fleet() messages.Fleet {
	f := messages.Fleet{APIVersion: messages.FleetAPIVersion, Kind: messages.FleetKind, Metadata: messages.FleetMeta{Name: "testworld"}}
	for _, c := range w.bare.clusters {
		fc := messages.FleetCluster{
			Name: c.name,
			Network: messages.FleetNetwork{
				LoginServer:         w.hs.URL(),
				HeadscaleAPIKeyFrom: messages.SecretRef("file:" + filepath.Join(w.dir, secretsDir, apiKeyFile)),
				User:                "cluster-" + c.name,
				Routes:              c.routes,
			},
			Cluster: messages.FleetKube{
				Provider: "talos",
				Talos: messages.FleetTalos{
					ClusterName: c.name, Endpoint: c.kube.URL(), KubernetesVersion: testenv.KubeVersion,
				},
				Addons: messages.FleetAddons{
					MetalLB: messages.FleetMetalLB{
						Pool: "workspaces", Addresses: []string{"10.0.0.200-10.0.0.250"}, L2Advertisement: "workspaces-l2",
					},
				},
			},
			Application: messages.FleetApplication{
				RethinkDB: messages.FleetRethinkDB{
					Namespace: "default", Service: "rethinkdb", Port: 28015,
					Addr: c.rdb.Addr(), User: rdbstandin.DefaultUser, Databases: []string{bareDatabase},
				},
				Operator: messages.FleetOperator{Namespace: "guildnet-system", Replicas: ptr.To[int32](1)},
			},
		}
		for _, n := range c.nodes {
			fn := messages.FleetNode{Name: n.name, Role: n.role}
			if n.talos != nil {
				fn.TalosEndpoint = n.talos.Endpoint()
			}
			if n.role == messages.RoleRouter {
				fn.Hostname = routerHostname + "-" + c.name
			}
			fc.Nodes = append(fc.Nodes, fn)
		}
		if h := w.bare.hostNode; h != nil && h.cluster == c.name {
			u, _ := url.Parse(w.bare.hostApp.URL())
			fc.Application.HostApp = messages.FleetHostApp{
				ListenLocal: u.Host, Name: "guildnet",
				ConfigPath: filepath.Join(w.dir, nodesDir, h.name, "guildnet", "config.json"),
			}
		}
		f.Clusters = append(f.Clusters, fc)
	}
	return f
}

func (w *world) writeFleet() error {
	b, err := yaml.Marshal(w.fleet())
	if err != nil {
		return fmt.Errorf("fleet spec: %w", err)
	}
	head := fmt.Sprintf("# Fleet spec of the bare test world in %s (written by hack/testworld).\n"+
		"# Secrets are references only: headscaleAPIKeyFrom names a 0600 file.\n"+
		"# controller setup apply -f %s\n", w.dir, filepath.Join(w.dir, fleetFile))
	return os.WriteFile(filepath.Join(w.dir, fleetFile), append([]byte(head), b...), 0o644)
}

// nodeEnv is what one node's agent needs, nothing secret: who it is, where
// its tailscaled and Talos apid are, and its cluster's RethinkDB.
func (w *world) nodeEnv(c *bareCluster, n *bareNode) []envVar {
	env := []envVar{
		{"METAGN_NAME", n.name, "the agent's --name, --cluster and --role"},
		{"METAGN_CLUSTER", n.cluster, ""},
		{"METAGN_ROLE", n.role, ""},
		{"METAGN_TAILNET", "off", "the agent reaches the controller on loopback; tailscaled is what setup logs in"},
		{"TS_SOCKET", n.tsSocket, "this node's tailscaled LocalAPI (logged out until setup)"},
		{"TS_LOGIN_SERVER", w.hs.URL(), ""},
		{"HEADSCALE_URL", w.hs.URL(), ""},
		{"RETHINKDB_ADDR", c.rdb.Addr(), "RethinkDB STAND-IN of cluster " + c.name},
		{"RETHINKDB_USER", rdbstandin.DefaultUser, ""},
		{"METAGN_RDB_DATABASES", bareDatabase, "what the rethinkdb_databases check expects once setup made it (the fleet's databases)"},
		{"METAGN_DNS_NAME", "localhost", "the name dns_resolution resolves: the world has no cluster DNS"},
	}
	if n.role == messages.RoleRouter {
		env = append(env,
			envVar{"TS_ROUTES", strings.Join(c.routes, ","), "the routes this router advertises once setup logged it in (the fleet's network.routes), for the routes check"},
			envVar{"TS_HOSTNAME", routerHostname + "-" + c.name, ""})
	}
	if n.talos != nil {
		env = append(env, envVar{"TALOS_ENDPOINT", n.talos.Endpoint(), "this node's Talos apid STAND-IN (maintenance mode until setup)"})
	}
	if n.role == messages.RoleHostApp {
		env = append(env,
			envVar{"HOSTAPP_URL", w.bare.hostApp.URL(), "GuildNet host-app STAND-IN"},
			envVar{"METAGN_HOSTAPP_CA", filepath.Join(w.dir, "hostapp-ca.pem"), ""})
	}
	return env
}

func (w *world) writeNodeEnvs() error {
	for _, c := range w.bare.clusters {
		for _, n := range c.nodes {
			dir := filepath.Join(w.dir, nodesDir, n.name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			var b strings.Builder
			fmt.Fprintf(&b, "# Node %s of cluster %s, role %s (bare test world %s).\n", n.name, n.cluster, n.role, w.dir)
			fmt.Fprintf(&b, "# set -a; . %s; set +a; agent run --controller URL --token T --state-dir S\n", filepath.Join(dir, "env"))
			for _, v := range w.nodeEnv(c, n) {
				if v.comment != "" {
					fmt.Fprintf(&b, "# %s\n", v.comment)
				}
				fmt.Fprintf(&b, "%s=%s\n", v.name, shellQuote(v.value))
			}
			if err := os.WriteFile(filepath.Join(dir, "env"), []byte(b.String()), 0o644); err != nil {
				return fmt.Errorf("node %s env: %w", n.name, err)
			}
		}
	}
	return nil
}

func writePrivate(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
