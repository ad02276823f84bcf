package testenv

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// Names of what SeedGuildNet creates, as GuildNet's code has them
// (shared/GUILDNET.md).
const (
	NamespaceMetalLB        = "metallb-system"
	NamespaceGuildNet       = "guildnet-system"
	CoreDNSLabel            = "k8s-app=kube-dns"
	OperatorName            = "workspace-operator"
	RethinkDBName           = "rethinkdb"
	RethinkDBPod            = "rethinkdb-0"
	MetalLBPool             = "workspaces"
	MetalLBPoolRange        = "10.0.0.200-10.0.0.250"
	MetalLBL2Advertisement  = "workspaces-l2"
	WorkspaceImageDefault   = "ghcr.io/guildnet/workspace-code-server:latest"
	CoreDNSReplicas         = 2
	defaultNodePrefix       = "guildnet-node-"
	fieldManager            = "metaguildnet-testenv"
	establishTimeoutDefault = 30 * time.Second
)

// Resources of the custom resources SeedGuildNet installs.
var (
	WorkspaceGVR       = schema.GroupVersionResource{Group: "guildnet.io", Version: "v1alpha1", Resource: "workspaces"}
	CapabilityGVR      = schema.GroupVersionResource{Group: "guildnet.io", Version: "v1alpha1", Resource: "capabilities"}
	IPAddressPoolGVR   = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	L2AdvertisementGVR = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "l2advertisements"}
	crdGVR             = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// SeedOptions says how many of each thing SeedGuildNet makes.
type SeedOptions struct {
	// Nodes is the number of Nodes (default 1). The first is the control
	// plane. Names are NodeNames(n); addresses are loopback (127.0.1.x).
	Nodes int
	// Workspaces are the sample Workspaces in namespace default, each with
	// status.phase Running and a Deployment and Service of the same name
	// (default: one, "demo").
	Workspaces []string
	// RethinkDBLoadBalancerIP, when set, makes the rethinkdb Service type
	// LoadBalancer with this ingress IP written to its status (use a
	// loopback address, e.g. the stand-in's). Empty: type ClusterIP.
	RethinkDBLoadBalancerIP string
	// Timeout bounds the whole seeding (default 60s).
	Timeout time.Duration
}

// GuildNet is a seeded cluster and its fault knobs. Every knob writes what
// a real controller or kubelet would, through the status subresource.
type GuildNet struct {
	// Clientset and Dynamic are the clients the knobs use; tests may use
	// them too.
	Clientset *kubernetes.Clientset
	Dynamic   dynamic.Interface
	// NodeNames are the seeded Nodes, control plane first.
	NodeNames []string
	// Workspaces are the seeded Workspaces in namespace default.
	Workspaces []string
	opts       SeedOptions
}

// NodeName is the name SeedGuildNet gives the i-th Node (0-based).
func NodeName(i int) string { return fmt.Sprintf("%s%d", defaultNodePrefix, i+1) }

// SeedGuildNet shapes the cluster at cfg like a healthy GuildNet
// deployment: Ready Nodes, Running CoreDNS pods, MetalLB (controller,
// speaker, the pool and L2 advertisement), the GuildNet and MetalLB CRDs
// (Established) with Running Workspaces, RethinkDB (Service, StatefulSet,
// Ready pod) in default and an available guildnet-system/workspace-operator.
// It is meant for a fresh cluster; objects that exist are left as they are.
func SeedGuildNet(ctx context.Context, cfg *rest.Config, opts SeedOptions) (*GuildNet, error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 1
	}
	if opts.Workspaces == nil {
		opts.Workspaces = []string{"demo"}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("seed guildnet: clientset: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("seed guildnet: dynamic client: %w", err)
	}
	g := &GuildNet{Clientset: cs, Dynamic: dyn, Workspaces: opts.Workspaces, opts: opts}
	for i := range opts.Nodes {
		g.NodeNames = append(g.NodeNames, NodeName(i))
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"namespaces", g.seedNamespaces},
		{"CRDs", g.seedCRDs},
		{"nodes", g.seedNodes},
		{"coredns", g.RestoreCoreDNS},
		{"metallb", g.seedMetalLB},
		{"rethinkdb", g.seedRethinkDB},
		{"workspace-operator", g.seedOperator},
		{"workspaces", g.seedWorkspaces},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("seed guildnet: %s: %w", s.name, err)
		}
	}
	return g, nil
}

func (g *GuildNet) seedNamespaces(ctx context.Context) error {
	for _, ns := range []string{NamespaceMetalLB, NamespaceGuildNet} {
		_, err := g.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcreds", Namespace: "default"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)},
	}
	if _, err := g.Clientset.CoreV1().Secrets("default").Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create secret default/regcreds: %w", err)
	}
	return nil
}

// --- nodes -------------------------------------------------------------------

func (g *GuildNet) seedNodes(ctx context.Context) error {
	for i, name := range g.NodeNames {
		labels := map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
		if i == 0 {
			labels["node-role.kubernetes.io/control-plane"] = ""
		}
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := g.Clientset.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		if err := g.updateNodeStatus(ctx, name, func(n *corev1.Node) {
			n.Status.Addresses = []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("127.0.1.%d", i+1)},
				{Type: corev1.NodeHostName, Address: name},
			}
			n.Status.Capacity = corev1.ResourceList{}
			n.Status.NodeInfo = corev1.NodeSystemInfo{
				KubeletVersion: KubeVersion, OSImage: "Talos (v1.13.9)", OperatingSystem: "linux",
				Architecture: "amd64", ContainerRuntimeVersion: "containerd://2.1.0",
			}
			setNodeReadyCondition(n, true)
		}); err != nil {
			return err
		}
	}
	return nil
}

func setNodeReadyCondition(n *corev1.Node, ready bool) {
	now := metav1.Now()
	c := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
	if !ready {
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, "KubeletNotReady", "testenv: node set NotReady"
	}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			if n.Status.Conditions[i].Status == c.Status {
				c.LastTransitionTime = n.Status.Conditions[i].LastTransitionTime
			}
			n.Status.Conditions[i] = c
			return
		}
	}
	n.Status.Conditions = append(n.Status.Conditions, c)
}

func (g *GuildNet) updateNodeStatus(ctx context.Context, name string, mutate func(*corev1.Node)) error {
	return retryConflict(ctx, func() error {
		n, err := g.Clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get node %s: %w", name, err)
		}
		mutate(n)
		if _, err := g.Clientset.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update node %s status: %w", name, err)
		}
		return nil
	})
}

// SetNodeReady sets the Node's Ready condition True or False (the "node
// NotReady" fault knob).
func (g *GuildNet) SetNodeReady(ctx context.Context, name string, ready bool) error {
	return g.updateNodeStatus(ctx, name, func(n *corev1.Node) { setNodeReadyCondition(n, ready) })
}

// --- pods --------------------------------------------------------------------

// runningPod creates (or keeps) a pod bound to node and writes a Running,
// Ready status.
func (g *GuildNet) runningPod(ctx context.Context, ns, name, node, image string, labels map[string]string, ports []corev1.ContainerPort) error {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "main", Image: image, Ports: ports}},
		},
	}
	if _, err := g.Clientset.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create pod %s/%s: %w", ns, name, err)
	}
	return g.setPodReady(ctx, ns, name, true)
}

func (g *GuildNet) setPodReady(ctx context.Context, ns, name string, ready bool) error {
	return retryConflict(ctx, func() error {
		p, err := g.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get pod %s/%s: %w", ns, name, err)
		}
		now := metav1.Now()
		st := corev1.ConditionTrue
		if !ready {
			st = corev1.ConditionFalse
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.HostIP = "127.0.1.1"
		p.Status.PodIP = "127.0.2.1"
		if p.Status.StartTime == nil {
			p.Status.StartTime = &now
		}
		p.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: st, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: st, LastTransitionTime: now},
		}
		var cs []corev1.ContainerStatus
		for _, c := range p.Spec.Containers {
			cs = append(cs, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: ready, Started: ptr.To(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *p.Status.StartTime}},
			})
		}
		p.Status.ContainerStatuses = cs
		if _, err := g.Clientset.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update pod %s/%s status: %w", ns, name, err)
		}
		return nil
	})
}

// --- workloads ---------------------------------------------------------------

func podTemplate(labels map[string]string, image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: image}}},
	}
}

func (g *GuildNet) ensureDeployment(ctx context.Context, ns, name, image string, labels map[string]string, replicas int32) error {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels, image),
		},
	}
	if _, err := g.Clientset.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create deployment %s/%s: %w", ns, name, err)
	}
	return g.SetDeploymentAvailable(ctx, ns, name, true)
}

// SetDeploymentAvailable writes a Deployment status as the deployment
// controller would for all replicas available, or none (Available=False,
// MinimumReplicasUnavailable).
func (g *GuildNet) SetDeploymentAvailable(ctx context.Context, ns, name string, available bool) error {
	return retryConflict(ctx, func() error {
		d, err := g.Clientset.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get deployment %s/%s: %w", ns, name, err)
		}
		want := ptr.Deref(d.Spec.Replicas, 1)
		ready := want
		avail := appsv1.DeploymentCondition{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue,
			Reason: "MinimumReplicasAvailable", Message: "Deployment has minimum availability."}
		if !available {
			ready = 0
			avail.Status, avail.Reason, avail.Message = corev1.ConditionFalse, "MinimumReplicasUnavailable", "Deployment does not have minimum availability."
		}
		now := metav1.Now()
		avail.LastUpdateTime, avail.LastTransitionTime = now, now
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation,
			Replicas:           want,
			UpdatedReplicas:    want,
			ReadyReplicas:      ready,
			AvailableReplicas:  ready,
			// unavailableReplicas only counts those short of available.
			UnavailableReplicas: want - ready,
			Conditions: []appsv1.DeploymentCondition{avail, {
				Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable",
				Message: fmt.Sprintf("ReplicaSet %q has successfully progressed.", name), LastUpdateTime: now, LastTransitionTime: now,
			}},
		}
		if _, err := g.Clientset.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update deployment %s/%s status: %w", ns, name, err)
		}
		return nil
	})
}

// SetOperatorAvailable makes guildnet-system/workspace-operator available
// or not (the "operator down" fault knob).
func (g *GuildNet) SetOperatorAvailable(ctx context.Context, available bool) error {
	return g.SetDeploymentAvailable(ctx, NamespaceGuildNet, OperatorName, available)
}

// --- CoreDNS -------------------------------------------------------------------

func coreDNSLabels() map[string]string { return map[string]string{"k8s-app": "kube-dns"} }

// CoreDNSPodName is the name of the i-th CoreDNS pod.
func CoreDNSPodName(i int) string { return fmt.Sprintf("coredns-6f6b679f8f-%d", i) }

// RestoreCoreDNS (re)creates the coredns Deployment, the kube-dns Service
// and the CoreDNS pods, Running and Ready, and marks the Deployment
// available. It undoes DeleteCoreDNSPods.
func (g *GuildNet) RestoreCoreDNS(ctx context.Context) error {
	const ns = "kube-system"
	if err := g.ensureDeployment(ctx, ns, "coredns", "registry.k8s.io/coredns/coredns:v1.12.1", coreDNSLabels(), CoreDNSReplicas); err != nil {
		return err
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: ns, Labels: coreDNSLabels()},
		Spec: corev1.ServiceSpec{Selector: coreDNSLabels(), Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
		}},
	}
	if _, err := g.Clientset.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service kube-system/kube-dns: %w", err)
	}
	for i := range CoreDNSReplicas {
		node := g.NodeNames[i%len(g.NodeNames)]
		if err := g.runningPod(ctx, ns, CoreDNSPodName(i), node, "registry.k8s.io/coredns/coredns:v1.12.1", coreDNSLabels(),
			[]corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}); err != nil {
			return err
		}
	}
	return nil
}

// DeleteCoreDNSPods removes every k8s-app=kube-dns pod at once (grace 0:
// no kubelet would ever confirm a graceful delete) and marks the coredns
// Deployment unavailable (the "CoreDNS pods gone" fault knob).
func (g *GuildNet) DeleteCoreDNSPods(ctx context.Context) error {
	err := g.Clientset.CoreV1().Pods("kube-system").DeleteCollection(ctx,
		metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{LabelSelector: CoreDNSLabel})
	if err != nil {
		return fmt.Errorf("delete coredns pods: %w", err)
	}
	return g.SetDeploymentAvailable(ctx, "kube-system", "coredns", false)
}

// --- MetalLB -------------------------------------------------------------------

func (g *GuildNet) seedMetalLB(ctx context.Context) error {
	ctrl := map[string]string{"app": "metallb", "component": "controller"}
	if err := g.ensureDeployment(ctx, NamespaceMetalLB, "controller", "quay.io/metallb/controller:v0.13.12", ctrl, 1); err != nil {
		return err
	}
	spk := map[string]string{"app": "metallb", "component": "speaker"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "speaker", Namespace: NamespaceMetalLB, Labels: spk},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: spk},
			Template: podTemplate(spk, "quay.io/metallb/speaker:v0.13.12"),
		},
	}
	if _, err := g.Clientset.AppsV1().DaemonSets(NamespaceMetalLB).Create(ctx, ds, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create daemonset metallb-system/speaker: %w", err)
	}
	if err := g.SetSpeakerAvailable(ctx, true); err != nil {
		return err
	}
	return g.SetMetalLBConfig(ctx, true, true)
}

// SetMetalLBConfig creates or deletes GuildNet's IPAddressPool workspaces
// and its L2Advertisement workspaces-l2, as an operator's kubectl would.
func (g *GuildNet) SetMetalLBConfig(ctx context.Context, pool, l2 bool) error {
	for _, o := range []struct {
		gvr     schema.GroupVersionResource
		u       *unstructured.Unstructured
		present bool
	}{
		{IPAddressPoolGVR, obj("metallb.io/v1beta1", "IPAddressPool", NamespaceMetalLB, MetalLBPool,
			map[string]any{"addresses": []any{MetalLBPoolRange}}), pool},
		{L2AdvertisementGVR, obj("metallb.io/v1beta1", "L2Advertisement", NamespaceMetalLB, MetalLBL2Advertisement,
			map[string]any{"ipAddressPools": []any{MetalLBPool}}), l2},
	} {
		if o.present {
			if err := g.createCR(ctx, o.gvr, o.u); err != nil {
				return err
			}
			continue
		}
		err := g.Dynamic.Resource(o.gvr).Namespace(NamespaceMetalLB).Delete(ctx, o.u.GetName(), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s/%s: %w", o.gvr.Resource, NamespaceMetalLB, o.u.GetName(), err)
		}
	}
	return nil
}

// SetSpeakerAvailable writes the metallb speaker DaemonSet status as
// scheduled and available on every node, or on none.
func (g *GuildNet) SetSpeakerAvailable(ctx context.Context, available bool) error {
	return retryConflict(ctx, func() error {
		ds, err := g.Clientset.AppsV1().DaemonSets(NamespaceMetalLB).Get(ctx, "speaker", metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get daemonset metallb-system/speaker: %w", err)
		}
		n := int32(len(g.NodeNames))
		ok := n
		if !available {
			ok = 0
		}
		ds.Status = appsv1.DaemonSetStatus{
			ObservedGeneration: ds.Generation, DesiredNumberScheduled: n, CurrentNumberScheduled: n,
			UpdatedNumberScheduled: n, NumberReady: ok, NumberAvailable: ok, NumberUnavailable: n - ok,
		}
		if _, err := g.Clientset.AppsV1().DaemonSets(NamespaceMetalLB).UpdateStatus(ctx, ds, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update daemonset metallb-system/speaker status: %w", err)
		}
		return nil
	})
}

// --- RethinkDB -----------------------------------------------------------------

func (g *GuildNet) seedRethinkDB(ctx context.Context) error {
	const ns = "default"
	labels := map[string]string{"app": RethinkDBName}
	ports := []corev1.ServicePort{
		{Name: "client", Port: 28015, TargetPort: intstr.FromInt32(28015), Protocol: corev1.ProtocolTCP},
		{Name: "cluster", Port: 29015, TargetPort: intstr.FromInt32(29015), Protocol: corev1.ProtocolTCP},
		{Name: "admin", Port: 8080, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: RethinkDBName, Namespace: ns, Labels: labels},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: ports, Type: corev1.ServiceTypeClusterIP},
	}
	if g.opts.RethinkDBLoadBalancerIP != "" {
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	}
	if _, err := g.Clientset.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service default/rethinkdb: %w", err)
	}
	if ip := g.opts.RethinkDBLoadBalancerIP; ip != "" {
		if err := retryConflict(ctx, func() error {
			s, err := g.Clientset.CoreV1().Services(ns).Get(ctx, RethinkDBName, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("get service default/rethinkdb: %w", err)
			}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
			_, err = g.Clientset.CoreV1().Services(ns).UpdateStatus(ctx, s, metav1.UpdateOptions{FieldManager: fieldManager})
			if err != nil {
				return fmt.Errorf("update service default/rethinkdb status: %w", err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: RethinkDBName, Namespace: ns, Labels: labels},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](1),
			ServiceName: RethinkDBName,
			Selector:    &metav1.LabelSelector{MatchLabels: labels},
			Template:    podTemplate(labels, "rethinkdb:2.4"),
		},
	}
	if _, err := g.Clientset.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create statefulset default/rethinkdb: %w", err)
	}
	podLabels := map[string]string{"app": RethinkDBName, "statefulset.kubernetes.io/pod-name": RethinkDBPod}
	if err := g.runningPod(ctx, ns, RethinkDBPod, g.NodeNames[0], "rethinkdb:2.4", podLabels, []corev1.ContainerPort{
		{Name: "client", ContainerPort: 28015}, {Name: "cluster", ContainerPort: 29015}, {Name: "admin", ContainerPort: 8080},
	}); err != nil {
		return err
	}
	return g.setStatefulSetReady(ctx, ns, RethinkDBName, true)
}

func (g *GuildNet) setStatefulSetReady(ctx context.Context, ns, name string, ready bool) error {
	return retryConflict(ctx, func() error {
		s, err := g.Clientset.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get statefulset %s/%s: %w", ns, name, err)
		}
		want := ptr.Deref(s.Spec.Replicas, 1)
		ok := want
		if !ready {
			ok = 0
		}
		s.Status = appsv1.StatefulSetStatus{
			ObservedGeneration: s.Generation, Replicas: want, CurrentReplicas: want, UpdatedReplicas: want,
			ReadyReplicas: ok, AvailableReplicas: ok,
		}
		if _, err := g.Clientset.AppsV1().StatefulSets(ns).UpdateStatus(ctx, s, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update statefulset %s/%s status: %w", ns, name, err)
		}
		return nil
	})
}

// SetRethinkPodReady sets pod default/rethinkdb-0 Ready or not (Running
// either way) and the StatefulSet's ready count to match (the "database pod
// not ready" fault knob; the database's own faults are on the stand-in).
func (g *GuildNet) SetRethinkPodReady(ctx context.Context, ready bool) error {
	if err := g.setPodReady(ctx, "default", RethinkDBPod, ready); err != nil {
		return err
	}
	return g.setStatefulSetReady(ctx, "default", RethinkDBName, ready)
}

// --- operator and workspaces ---------------------------------------------------

func (g *GuildNet) seedOperator(ctx context.Context) error {
	labels := map[string]string{"app": OperatorName}
	if err := g.ensureDeployment(ctx, NamespaceGuildNet, OperatorName, "ghcr.io/guildnet/workspace-operator:latest", labels, 1); err != nil {
		return err
	}
	return g.runningPod(ctx, NamespaceGuildNet, OperatorName+"-5d8f7c9b4-0", g.NodeNames[0],
		"ghcr.io/guildnet/workspace-operator:latest", labels, nil)
}

func (g *GuildNet) seedWorkspaces(ctx context.Context) error {
	for _, name := range g.Workspaces {
		if err := g.CreateWorkspace(ctx, "default", name, WorkspaceImageDefault); err != nil {
			return err
		}
	}
	return nil
}

// CreateWorkspace makes a Workspace as the operator would have finished
// it: the Workspace, a Deployment, a Running pod (WorkspacePod) and a
// Service of the same name (label guildnet.io/workspace=<name>, port 8080),
// and status.phase Running.
func (g *GuildNet) CreateWorkspace(ctx context.Context, ns, name, image string) error {
	ws := obj("guildnet.io/v1alpha1", "Workspace", ns, name, map[string]any{
		"image":    image,
		"ports":    []any{map[string]any{"name": "http", "containerPort": int64(8080)}},
		"exposure": map[string]any{"type": "ClusterIP"},
	})
	if err := g.createCR(ctx, WorkspaceGVR, ws); err != nil {
		return err
	}
	if err := g.ensureDeployment(ctx, ns, name, image, workspaceLabels(name), 1); err != nil {
		return err
	}
	if err := g.SetWorkspaceBackends(ctx, ns, name, true, true); err != nil {
		return err
	}
	svc, err := g.Clientset.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get service %s/%s: %w", ns, name, err)
	}
	dns := fmt.Sprintf("%s.%s.svc.cluster.local", name, ns)
	return g.updateWorkspaceStatus(ctx, ns, name, map[string]any{
		"phase":         "Running",
		"readyReplicas": int64(1),
		"serviceDNS":    dns,
		"serviceIP":     svc.Spec.ClusterIP,
		"proxyTarget":   "http://" + dns + ":8080",
	})
}

func workspaceLabels(name string) map[string]string {
	return map[string]string{"guildnet.io/workspace": name}
}

// WorkspacePod is the name of the pod CreateWorkspace runs for a Workspace.
func WorkspacePod(name string) string { return name + "-0" }

// SetWorkspaceBackends creates or deletes a Workspace's Running pod and
// its Service (the "no pod backs the workspace" and "service gone" fault
// knobs; the Workspace's status is left as it is).
func (g *GuildNet) SetWorkspaceBackends(ctx context.Context, ns, name string, pod, service bool) error {
	pods := g.Clientset.CoreV1().Pods(ns)
	if pod {
		ports := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		if err := g.runningPod(ctx, ns, WorkspacePod(name), g.NodeNames[0], WorkspaceImageDefault, workspaceLabels(name), ports); err != nil {
			return err
		}
	} else if err := pods.Delete(ctx, WorkspacePod(name), metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", ns, WorkspacePod(name), err)
	}
	svcs := g.Clientset.CoreV1().Services(ns)
	if !service {
		if err := svcs.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete service %s/%s: %w", ns, name, err)
		}
		return nil
	}
	labels := workspaceLabels(name)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
		}},
	}
	if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	return nil
}

// SetWorkspacePhase writes status.phase (Pending, Running, Failed,
// Terminating) of a Workspace; any phase but Running also sets
// readyReplicas 0 and, for Failed, a lastError.
func (g *GuildNet) SetWorkspacePhase(ctx context.Context, ns, name, phase string) error {
	st := map[string]any{"phase": phase, "readyReplicas": int64(1), "lastError": ""}
	if phase != "Running" {
		st["readyReplicas"] = int64(0)
	}
	if phase == "Failed" {
		st["lastError"] = "testenv: workspace set Failed"
	}
	return g.updateWorkspaceStatus(ctx, ns, name, st)
}

func (g *GuildNet) updateWorkspaceStatus(ctx context.Context, ns, name string, fields map[string]any) error {
	return retryConflict(ctx, func() error {
		ri := g.Dynamic.Resource(WorkspaceGVR).Namespace(ns)
		u, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get workspace %s/%s: %w", ns, name, err)
		}
		st, _, _ := unstructured.NestedMap(u.Object, "status")
		if st == nil {
			st = map[string]any{}
		}
		for k, v := range fields {
			st[k] = v
		}
		if err := unstructured.SetNestedMap(u.Object, st, "status"); err != nil {
			return fmt.Errorf("set workspace %s/%s status: %w", ns, name, err)
		}
		if _, err := ri.UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("update workspace %s/%s status: %w", ns, name, err)
		}
		return nil
	})
}

// --- helpers -------------------------------------------------------------------

func obj(apiVersion, kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": apiVersion, "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
}

// createCR creates a custom resource, retrying while a just-established
// CRD is not yet served (the first call can take ~2 s).
func (g *GuildNet) createCR(ctx context.Context, gvr schema.GroupVersionResource, u *unstructured.Unstructured) error {
	ri := g.Dynamic.Resource(gvr).Namespace(u.GetNamespace())
	return poll(ctx, 100*time.Millisecond, func() (bool, error) {
		_, err := ri.Create(ctx, u, metav1.CreateOptions{FieldManager: fieldManager})
		switch {
		case err == nil, apierrors.IsAlreadyExists(err):
			return true, nil
		case apierrors.IsNotFound(err), apierrors.IsMethodNotSupported(err):
			return false, nil // resource not served yet
		default:
			return false, fmt.Errorf("create %s %s/%s: %w", gvr.Resource, u.GetNamespace(), u.GetName(), err)
		}
	})
}

// retryConflict runs fn again while it fails with a write conflict.
func retryConflict(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil || !apierrors.IsConflict(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// poll calls cond every interval until it reports done, fails, or ctx ends.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up: %w", ctx.Err())
		case <-t.C:
		}
	}
}
