package checks

// Cluster checks, cluster-scoped, with client-go. Objects are read as
// unstructured through the dynamic client (no typed clientset: it would
// register every API type in the agent), and the client is built when the
// first check asks for it and dropped when the run ends.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guildnet/metaguildnet/internal/config"
)

// DefaultKubeAPIMaxLatency is how quickly /readyz must answer to pass.
const DefaultKubeAPIMaxLatency = 2 * time.Second

// Resources the checks read.
var (
	gvrNodes       = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	gvrPods        = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	gvrServices    = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	gvrDeployments = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	gvrDaemonSets  = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	gvrCRDs        = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	gvrIPPools     = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	gvrL2Ads       = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "l2advertisements"}
	gvrWorkspaces  = schema.GroupVersionResource{Group: "guildnet.io", Version: "v1alpha1", Resource: "workspaces"}
)

// MetalLB objects GuildNet creates (settings METAGN_METALLB_POOL and
// METAGN_METALLB_L2ADVERTISEMENT override them).
const (
	DefaultMetalLBPool            = "workspaces"
	DefaultMetalLBL2Advertisement = "workspaces-l2"
)

// GuildNetCRDs are the CRDs GuildNet installs.
var GuildNetCRDs = []string{"workspaces.guildnet.io", "capabilities.guildnet.io"}

// kubeClient is what the cluster checks talk to the API server with.
type kubeClient struct {
	Source  string // where the configuration came from, for messages
	Host    string
	HTTP    *http.Client // authenticated, for raw paths such as /readyz
	BaseURL string       // the API server's URL, without a trailing slash
	Dyn     dynamic.Interface
}

// kube returns the run's Kubernetes client, building it on first use from
// setting KUBECONFIG (a path list), else ~/.guildnet/kubeconfig, else the
// in-cluster service account.
func kube(cx *CheckEnv) (*kubeClient, error) {
	k, _, err := LazyClient(cx, kubeClientKey, func() (*kubeClient, func(), error) {
		k, err := newKubeClient(cx.Env)
		if err != nil {
			return nil, nil, err
		}
		return k, k.HTTP.CloseIdleConnections, nil
	})
	return k, err
}

const kubeClientKey = "kube.client"

// errNoKubeconfig: no kubeconfig to load and not in a cluster.
var errNoKubeconfig = errors.New("no kubeconfig (KUBECONFIG unset, ~/.guildnet/kubeconfig missing) and not in a cluster")

// KubeconfigPaths returns the kubeconfig files the checks load, by the
// rule above; nil means in-cluster.
func KubeconfigPaths(s config.Settings) []string {
	if v := s.Get("KUBECONFIG", ""); v != "" {
		return filepath.SplitList(v)
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".guildnet", "kubeconfig")
		if _, err := os.Stat(p); err == nil {
			return []string{p}
		}
	}
	return nil
}

func newKubeClient(env *Env) (*kubeClient, error) {
	var cfg *rest.Config
	var source string
	paths := KubeconfigPaths(env.Settings)
	if paths != nil {
		source = "kubeconfig " + strings.Join(paths, string(filepath.ListSeparator))
		rules := &clientcmd.ClientConfigLoadingRules{Precedence: paths}
		overrides := &clientcmd.ConfigOverrides{CurrentContext: env.Settings.Get("METAGN_KUBE_CONTEXT", "")}
		c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", source, err)
		}
		cfg = c
	} else {
		source = "in-cluster service account"
		c, err := rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, errNoKubeconfig
		}
		if err != nil {
			return nil, fmt.Errorf("in-cluster service account: %w", err)
		}
		cfg = c
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "metaguildnet-agent/" + env.Version
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: building the HTTP client: %w", source, err)
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: server URL: %w", source, err)
	}
	dyn, err := dynamic.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("%s: dynamic client: %w", source, err)
	}
	return &kubeClient{
		Source:  source,
		Host:    cfg.Host,
		HTTP:    hc,
		BaseURL: strings.TrimRight(base.String(), "/"),
		Dyn:     dyn,
	}, nil
}

// list lists a resource, naming it in the error.
func (k *kubeClient) list(ctx context.Context, gvr schema.GroupVersionResource, ns, selector string) ([]unstructured.Unstructured, error) {
	l, err := k.Dyn.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("listing %s%s%s: %w", gvr.Resource, inNS(ns), withSelector(selector), err)
	}
	return l.Items, nil
}

// get reads one object; a missing one is reported with errNotFound.
func (k *kubeClient) get(ctx context.Context, gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	o, err := k.Dyn.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		what := gvr.Resource + " " + qualified(ns, name)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%s not found: %w", what, errNotFound)
		}
		return nil, fmt.Errorf("reading %s: %s", what, errText(ctx, err))
	}
	return o, nil
}

var errNotFound = errors.New("not found")

func qualified(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

func inNS(ns string) string {
	if ns == "" {
		return ""
	}
	return " in " + ns
}

func withSelector(sel string) string {
	if sel == "" {
		return ""
	}
	return " (" + sel + ")"
}

// conditionStatus returns the status ("True", "False", "Unknown" or "" when
// absent) and message of a condition in .status.conditions.
func conditionStatus(o map[string]any, condType string) (status, message string) {
	conds, _, _ := unstructured.NestedSlice(o, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		if t, _ := m["type"].(string); t == condType {
			s, _ := m["status"].(string)
			msg, _ := m["message"].(string)
			if msg == "" {
				msg, _ = m["reason"].(string)
			}
			return s, msg
		}
	}
	return "", ""
}

func nestedString(o map[string]any, fields ...string) string {
	s, _, _ := unstructured.NestedString(o, fields...)
	return s
}

func nestedInt(o map[string]any, fields ...string) int64 {
	v, _, _ := unstructured.NestedFieldNoCopy(o, fields...)
	switch n := v.(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	case int:
		return int64(n)
	}
	return 0
}

// kubeChecks need kube_api_ready; a kube client error fails them.
func withKube(run func(ctx context.Context, cx *CheckEnv, k *kubeClient) Result) func(context.Context, *CheckEnv) Result {
	return func(ctx context.Context, cx *CheckEnv) Result {
		k, err := kube(cx)
		if errors.Is(err, errNoKubeconfig) {
			return NotConfigured("KUBECONFIG", "%v", err)
		}
		if err != nil {
			return Fail("Kubernetes client: %v", err)
		}
		return run(ctx, cx, k)
	}
}

// ClusterChecks are the cluster layer's Kubernetes checks (Talos ones in
// [TalosChecks]).
func ClusterChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "kube_api_ready",
			Description: "the API server answers /readyz with ok, within 2 s",
			Timeout:     10 * time.Second,
			Run:         withKube(checkKubeAPIReady),
		},
		{
			Name:        "nodes_ready",
			Description: "every Node is Ready",
			Timeout:     10 * time.Second,
			Run:         withKube(checkNodesReady),
		},
		{
			Name:        "coredns_running",
			Description: "CoreDNS pods (k8s-app=kube-dns in kube-system) are Running and ready",
			Timeout:     10 * time.Second,
			Run:         withKube(checkCoreDNSRunning),
		},
		{
			Name:        "metallb_available",
			Description: "MetalLB's controller Deployment and speaker DaemonSet are available and an IPAddressPool exists",
			Timeout:     10 * time.Second,
			Run:         withKube(checkMetalLBAvailable),
		},
		{
			Name:        "guildnet_crds_established",
			Description: "the CRDs workspaces.guildnet.io and capabilities.guildnet.io are Established",
			Timeout:     10 * time.Second,
			Run:         withKube(checkGuildNetCRDs),
		},
	})
}

func checkKubeAPIReady(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	maxLatency, err := settingMillis(cx, "METAGN_KUBE_API_MAX_MS", DefaultKubeAPIMaxLatency)
	if err != nil {
		return Fail("%v", err)
	}
	url := k.BaseURL + "/readyz"
	resp, err := httpGet(ctx, k.HTTP, url, 16<<10)
	if err != nil {
		return Fail("API server %s (%s) unreachable: %v", k.Host, k.Source, err)
	}
	obs := map[string]any{"url": url, "status": resp.Code, "latency_ms": ms(resp.Latency)}
	thr := map[string]any{"max_latency_ms": maxLatency.Milliseconds()}
	if resp.Code != http.StatusOK {
		return Fail("API server %s /readyz answered %d: %s", k.Host, resp.Code, failedReadyz(resp.Body)).With(obs, thr)
	}
	if resp.Latency >= maxLatency {
		return Warn("API server %s ready but slow: /readyz took %s, limit %s", k.Host, resp.Latency.Round(time.Millisecond), maxLatency).With(obs, thr)
	}
	return Pass("API server %s ready in %s", k.Host, resp.Latency.Round(time.Millisecond)).With(obs, thr)
}

// failedReadyz picks the failed checks ("[-]etcd failed: ...") out of a
// /readyz body, or its first line.
func failedReadyz(body []byte) string {
	var failed []string
	for line := range strings.Lines(string(body)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "[-]"); ok {
			failed = append(failed, rest)
		}
	}
	if len(failed) > 0 {
		return strings.Join(failed, "; ")
	}
	return firstLine(body)
}

func checkNodesReady(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	nodes, err := k.list(ctx, gvrNodes, "", "")
	if err != nil {
		return Fail("%v", err)
	}
	if len(nodes) == 0 {
		return Fail("no Nodes registered with the API server")
	}
	var notReady []string
	for _, n := range nodes {
		if s, msg := conditionStatus(n.Object, "Ready"); s != "True" {
			d := n.GetName()
			if msg != "" {
				d += " (" + msg + ")"
			} else if s == "" {
				d += " (no Ready condition)"
			}
			notReady = append(notReady, d)
		}
	}
	obs := map[string]any{"nodes": len(nodes), "not_ready": len(notReady)}
	if len(notReady) > 0 {
		return Fail("%d of %d nodes NotReady: %s", len(notReady), len(nodes), strings.Join(notReady, ", ")).With(obs, nil)
	}
	return Pass("all %d nodes Ready", len(nodes)).With(obs, nil)
}

// podProblem says why a pod is not Running and ready, or "" when it is.
func podProblem(p *unstructured.Unstructured) string {
	phase := nestedString(p.Object, "status", "phase")
	if phase != "Running" {
		if reason := waitingReason(p.Object); reason != "" {
			return p.GetName() + " " + phase + " (" + reason + ")"
		}
		if phase == "" {
			phase = "without a phase"
		}
		return p.GetName() + " " + phase
	}
	if s, _ := conditionStatus(p.Object, "Ready"); s != "True" {
		if reason := waitingReason(p.Object); reason != "" {
			return p.GetName() + " not ready (" + reason + ")"
		}
		return p.GetName() + " not ready"
	}
	return ""
}

// waitingReason returns the first container's waiting reason
// (CrashLoopBackOff, ImagePullBackOff, ...), if any.
func waitingReason(o map[string]any) string {
	statuses, _, _ := unstructured.NestedSlice(o, "status", "containerStatuses")
	for _, s := range statuses {
		m, ok := s.(map[string]any)
		if !ok {
			continue
		}
		if r := nestedString(m, "state", "waiting", "reason"); r != "" {
			return r
		}
	}
	return ""
}

// podsReady checks that the pods matching selector in ns are Running and
// ready; what names them in messages.
func podsReady(ctx context.Context, k *kubeClient, ns, selector, what string) Result {
	pods, err := k.list(ctx, gvrPods, ns, selector)
	if err != nil {
		return Fail("%v", err)
	}
	if len(pods) == 0 {
		return Fail("no %s pods (%s in %s)", what, selector, ns)
	}
	var bad []string
	for i := range pods {
		if p := podProblem(&pods[i]); p != "" {
			bad = append(bad, p)
		}
	}
	obs := map[string]any{"pods": len(pods), "not_ready": len(bad)}
	if len(bad) > 0 {
		return Fail("%d of %d %s pods not Running and ready: %s", len(bad), len(pods), what, strings.Join(bad, ", ")).With(obs, nil)
	}
	return Pass("%d %s pods Running and ready", len(pods), what).With(obs, nil)
}

func checkCoreDNSRunning(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	return podsReady(ctx, k, "kube-system", "k8s-app=kube-dns", "CoreDNS")
}

// deploymentProblem says why a Deployment is not available, or "".
func deploymentProblem(ctx context.Context, k *kubeClient, ns, name string) string {
	d, err := k.get(ctx, gvrDeployments, ns, name)
	if err != nil {
		return err.Error()
	}
	s, msg := conditionStatus(d.Object, "Available")
	if s == "True" && nestedInt(d.Object, "status", "availableReplicas") > 0 {
		return ""
	}
	desc := fmt.Sprintf("Deployment %s not available (%d of %d replicas available", qualified(ns, name),
		nestedInt(d.Object, "status", "availableReplicas"), nestedInt(d.Object, "spec", "replicas"))
	if msg != "" {
		desc += "; " + msg
	}
	return desc + ")"
}

// daemonSetProblem says why a DaemonSet is not available, or "".
func daemonSetProblem(ctx context.Context, k *kubeClient, ns, name string) string {
	d, err := k.get(ctx, gvrDaemonSets, ns, name)
	if err != nil {
		return err.Error()
	}
	desired := nestedInt(d.Object, "status", "desiredNumberScheduled")
	avail := nestedInt(d.Object, "status", "numberAvailable")
	if desired > 0 && avail >= desired {
		return ""
	}
	return fmt.Sprintf("DaemonSet %s not available (%d of %d pods available)", qualified(ns, name), avail, desired)
}

func checkMetalLBAvailable(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	ns := cx.Setting("METAGN_METALLB_NAMESPACE", "metallb-system")
	poolName := cx.Setting("METAGN_METALLB_POOL", DefaultMetalLBPool)
	l2Name := cx.Setting("METAGN_METALLB_L2ADVERTISEMENT", DefaultMetalLBL2Advertisement)
	var problems []string
	if p := deploymentProblem(ctx, k, ns, "controller"); p != "" {
		problems = append(problems, p)
	}
	if p := daemonSetProblem(ctx, k, ns, "speaker"); p != "" {
		problems = append(problems, p)
	}
	poolNames, p := metalLBNames(ctx, k, gvrIPPools, "IPAddressPool", ns)
	if p == "" && !slices.Contains(poolNames, poolName) {
		p = fmt.Sprintf("IPAddressPool %s missing (pools: %s)", qualified(ns, poolName), orNone(strings.Join(poolNames, ", ")))
	}
	if p != "" {
		problems = append(problems, p)
	}
	l2, err := k.get(ctx, gvrL2Ads, ns, l2Name)
	switch {
	case errors.Is(err, errNotFound):
		problems = append(problems, "L2Advertisement "+qualified(ns, l2Name)+" missing")
	case err != nil:
		problems = append(problems, err.Error())
	default:
		// An L2Advertisement without ipAddressPools announces every pool.
		adv, _, _ := unstructured.NestedStringSlice(l2.Object, "spec", "ipAddressPools")
		if len(adv) > 0 && !slices.Contains(adv, poolName) {
			problems = append(problems, fmt.Sprintf("L2Advertisement %s does not announce pool %s (it announces %s)", qualified(ns, l2Name), poolName, strings.Join(adv, ", ")))
		}
	}
	obs := map[string]any{"ip_address_pools": poolNames}
	thr := map[string]any{"pool": poolName, "l2_advertisement": l2Name}
	if len(problems) > 0 {
		return Fail("MetalLB: %s", strings.Join(problems, "; ")).With(obs, thr)
	}
	return Pass("MetalLB controller and speaker available; pool %s announced by %s; pools: %s", poolName, l2Name, strings.Join(poolNames, ", ")).With(obs, thr)
}

// metalLBNames lists the names of a MetalLB resource in ns, or says why it
// cannot.
func metalLBNames(ctx context.Context, k *kubeClient, gvr schema.GroupVersionResource, kind, ns string) ([]string, string) {
	items, err := k.list(ctx, gvr, ns, "")
	switch {
	case apierrors.IsNotFound(err):
		return nil, kind + " CRD (metallb.io/v1beta1) not installed"
	case err != nil:
		return nil, err.Error()
	}
	names := make([]string, 0, len(items))
	for _, it := range items {
		names = append(names, it.GetName())
	}
	return names, ""
}

func checkGuildNetCRDs(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	var problems, ok []string
	for _, name := range GuildNetCRDs {
		crd, err := k.get(ctx, gvrCRDs, "", name)
		if err != nil {
			if errors.Is(err, errNotFound) {
				problems = append(problems, name+" missing")
			} else {
				problems = append(problems, err.Error())
			}
			continue
		}
		if s, msg := conditionStatus(crd.Object, "Established"); s != "True" {
			problems = append(problems, fmt.Sprintf("%s not Established (%s)", name, orNone(msg)))
			continue
		}
		ok = append(ok, name)
	}
	obs := map[string]any{"established": ok}
	thr := map[string]any{"crds": GuildNetCRDs}
	if len(problems) > 0 {
		return Fail("GuildNet CRDs: %s", strings.Join(problems, "; ")).With(obs, thr)
	}
	return Pass("CRDs established: %s", strings.Join(ok, ", ")).With(obs, thr)
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// nodeAddress returns an address of a node: the first Ready node's
// InternalIP, else its ExternalIP, else any node's.
func nodeAddress(ctx context.Context, k *kubeClient) (node, addr string, err error) {
	nodes, err := k.list(ctx, gvrNodes, "", "")
	if err != nil {
		return "", "", err
	}
	slices.SortStableFunc(nodes, func(a, b unstructured.Unstructured) int {
		ra, _ := conditionStatus(a.Object, "Ready")
		rb, _ := conditionStatus(b.Object, "Ready")
		switch {
		case ra == "True" && rb != "True":
			return -1
		case rb == "True" && ra != "True":
			return 1
		}
		return 0
	})
	for _, want := range []string{"InternalIP", "ExternalIP"} {
		for _, n := range nodes {
			addrs, _, _ := unstructured.NestedSlice(n.Object, "status", "addresses")
			for _, a := range addrs {
				m, ok := a.(map[string]any)
				if !ok {
					continue
				}
				if t, _ := m["type"].(string); t == want {
					if ip, _ := m["address"].(string); ip != "" {
						return n.GetName(), ip, nil
					}
				}
			}
		}
	}
	return "", "", fmt.Errorf("no node has an InternalIP or ExternalIP address")
}
