package testenv

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// clientFromKubeconfig builds a clientset the way an agent would: from the
// kubeconfig file, not the in-memory config.
func clientFromKubeconfig(t *testing.T, k *Kube) *kubernetes.Clientset {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.KubeconfigPath())
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", k.KubeconfigPath(), err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return cs
}

func TestKubeComesUp(t *testing.T) {
	k, _ := needWorld(t)
	ctx := testCtx(t, 30*time.Second)
	cs := clientFromKubeconfig(t, k)
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != KubeVersion {
		t.Errorf("server version = %q, want %q", v.GitVersion, KubeVersion)
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(raw) != "ok" {
		t.Errorf("/readyz = %q, %v", raw, err)
	}
	t.Logf("kube-apiserver %s ready in %v (seeded in %v)", v.GitVersion, k.ReadyIn, shared.SeededIn)
}

func TestSeededWorld(t *testing.T) {
	k, g := needWorld(t)
	ctx := testCtx(t, 30*time.Second)
	cs := clientFromKubeconfig(t, k)

	t.Run("nodes Ready", func(t *testing.T) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != seededNodes {
			t.Fatalf("nodes = %d, want %d", len(nodes.Items), seededNodes)
		}
		for _, n := range nodes.Items {
			if !nodeReady(&n) {
				t.Errorf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
			}
		}
	})
	t.Run("CoreDNS Running", func(t *testing.T) {
		pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: CoreDNSLabel})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != CoreDNSReplicas {
			t.Fatalf("coredns pods = %d, want %d", len(pods.Items), CoreDNSReplicas)
		}
		for _, p := range pods.Items {
			if !podReady(&p) || p.Spec.NodeName == "" {
				t.Errorf("pod %s: phase %s node %q ready %v", p.Name, p.Status.Phase, p.Spec.NodeName, podReady(&p))
			}
		}
	})
	t.Run("MetalLB", func(t *testing.T) {
		d, err := cs.AppsV1().Deployments(NamespaceMetalLB).Get(ctx, "controller", metav1.GetOptions{})
		if err != nil || d.Status.AvailableReplicas != 1 {
			t.Errorf("metallb controller: %v available=%d", err, d.Status.AvailableReplicas)
		}
		ds, err := cs.AppsV1().DaemonSets(NamespaceMetalLB).Get(ctx, "speaker", metav1.GetOptions{})
		if err != nil || ds.Status.NumberAvailable != seededNodes {
			t.Errorf("metallb speaker: %v available=%d", err, ds.Status.NumberAvailable)
		}
		pool, err := g.Dynamic.Resource(IPAddressPoolGVR).Namespace(NamespaceMetalLB).Get(ctx, MetalLBPool, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		addrs, _, _ := unstructured.NestedStringSlice(pool.Object, "spec", "addresses")
		if len(addrs) != 1 || addrs[0] != MetalLBPoolRange {
			t.Errorf("pool addresses = %v", addrs)
		}
		if _, err := g.Dynamic.Resource(L2AdvertisementGVR).Namespace(NamespaceMetalLB).Get(ctx, MetalLBL2Advertisement, metav1.GetOptions{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("CRDs Established", func(t *testing.T) {
		for _, c := range worldCRDs() {
			u, err := g.Dynamic.Resource(crdGVR).Get(ctx, c.GetName(), metav1.GetOptions{})
			if err != nil || !crdEstablished(u) {
				t.Errorf("CRD %s: %v established=%v", c.GetName(), err, err == nil && crdEstablished(u))
			}
		}
	})
	t.Run("Workspaces Running", func(t *testing.T) {
		list, err := g.Dynamic.Resource(WorkspaceGVR).Namespace("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != len(g.Workspaces) {
			t.Fatalf("workspaces = %d, want %d", len(list.Items), len(g.Workspaces))
		}
		for _, w := range list.Items {
			phase, _, _ := unstructured.NestedString(w.Object, "status", "phase")
			if phase != "Running" {
				t.Errorf("workspace %s phase %q", w.GetName(), phase)
			}
			svc, err := cs.CoreV1().Services("default").Get(ctx, w.GetName(), metav1.GetOptions{})
			if err != nil || svc.Labels["guildnet.io/workspace"] != w.GetName() {
				t.Errorf("workspace %s service: %v", w.GetName(), err)
			}
		}
	})
	t.Run("Workspace spec.image required", func(t *testing.T) {
		bad := obj("guildnet.io/v1alpha1", "Workspace", "default", "no-image", map[string]any{})
		if _, err := g.Dynamic.Resource(WorkspaceGVR).Namespace("default").Create(ctx, bad, metav1.CreateOptions{}); err == nil {
			t.Error("a Workspace without spec.image was accepted")
		}
	})
	t.Run("RethinkDB", func(t *testing.T) {
		svc, err := cs.CoreV1().Services("default").Get(ctx, RethinkDBName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.Labels["app"] != "rethinkdb" || svc.Spec.Ports[0].Name != "client" || svc.Spec.Ports[0].Port != 28015 {
			t.Errorf("rethinkdb service: labels %v ports %v", svc.Labels, svc.Spec.Ports)
		}
		p, err := cs.CoreV1().Pods("default").Get(ctx, RethinkDBPod, metav1.GetOptions{})
		if err != nil || !podReady(p) {
			t.Errorf("rethinkdb pod: %v ready=%v", err, err == nil && podReady(p))
		}
		sts, err := cs.AppsV1().StatefulSets("default").Get(ctx, RethinkDBName, metav1.GetOptions{})
		if err != nil || sts.Status.ReadyReplicas != 1 {
			t.Errorf("rethinkdb statefulset: %v", err)
		}
	})
	t.Run("workspace-operator available", func(t *testing.T) {
		d, err := cs.AppsV1().Deployments(NamespaceGuildNet).List(ctx, metav1.ListOptions{LabelSelector: "app=workspace-operator"})
		if err != nil || len(d.Items) != 1 || d.Items[0].Status.AvailableReplicas != 1 {
			t.Errorf("operator: %v %+v", err, d)
		}
	})
}

// TestFaultKnobs applies each Kubernetes fault, checks what client-go then
// sees, undoes it and checks the world is healthy again.
func TestFaultKnobs(t *testing.T) {
	k, g := needWorld(t)
	cs := clientFromKubeconfig(t, k)
	node := NodeName(1)
	operatorAvailable := func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(NamespaceGuildNet).Get(ctx, OperatorName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range d.Status.Conditions {
			if c.Type == "Available" {
				return c.Status == corev1.ConditionTrue && d.Status.AvailableReplicas == 1, nil
			}
		}
		return false, nil
	}
	tests := []struct {
		name    string
		fault   func(context.Context) error
		restore func(context.Context) error
		// healthy reports whether the part the knob touches looks healthy.
		healthy func(context.Context) (bool, error)
	}{
		{
			name:    "node NotReady",
			fault:   func(ctx context.Context) error { return g.SetNodeReady(ctx, node, false) },
			restore: func(ctx context.Context) error { return g.SetNodeReady(ctx, node, true) },
			healthy: func(ctx context.Context) (bool, error) {
				n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
				return err == nil && nodeReady(n), err
			},
		},
		{
			name:    "CoreDNS pods gone",
			fault:   g.DeleteCoreDNSPods,
			restore: g.RestoreCoreDNS,
			healthy: func(ctx context.Context) (bool, error) {
				pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: CoreDNSLabel})
				if err != nil {
					return false, err
				}
				ready := 0
				for _, p := range pods.Items {
					if podReady(&p) {
						ready++
					}
				}
				return ready == CoreDNSReplicas, nil
			},
		},
		{
			name:    "operator unavailable",
			fault:   func(ctx context.Context) error { return g.SetOperatorAvailable(ctx, false) },
			restore: func(ctx context.Context) error { return g.SetOperatorAvailable(ctx, true) },
			healthy: operatorAvailable,
		},
		{
			name:    "workspace Failed",
			fault:   func(ctx context.Context) error { return g.SetWorkspacePhase(ctx, "default", "demo", "Failed") },
			restore: func(ctx context.Context) error { return g.SetWorkspacePhase(ctx, "default", "demo", "Running") },
			healthy: func(ctx context.Context) (bool, error) {
				w, err := g.Dynamic.Resource(WorkspaceGVR).Namespace("default").Get(ctx, "demo", metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				phase, _, _ := unstructured.NestedString(w.Object, "status", "phase")
				return phase == "Running", nil
			},
		},
		{
			name:    "rethinkdb pod not ready",
			fault:   func(ctx context.Context) error { return g.SetRethinkPodReady(ctx, false) },
			restore: func(ctx context.Context) error { return g.SetRethinkPodReady(ctx, true) },
			healthy: func(ctx context.Context) (bool, error) {
				p, err := cs.CoreV1().Pods("default").Get(ctx, RethinkDBPod, metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				s, err := cs.AppsV1().StatefulSets("default").Get(ctx, RethinkDBName, metav1.GetOptions{})
				return err == nil && podReady(p) && s.Status.ReadyReplicas == 1, err
			},
		},
		{
			name:    "metallb speaker unavailable",
			fault:   func(ctx context.Context) error { return g.SetSpeakerAvailable(ctx, false) },
			restore: func(ctx context.Context) error { return g.SetSpeakerAvailable(ctx, true) },
			healthy: func(ctx context.Context) (bool, error) {
				ds, err := cs.AppsV1().DaemonSets(NamespaceMetalLB).Get(ctx, "speaker", metav1.GetOptions{})
				return err == nil && ds.Status.NumberAvailable == ds.Status.DesiredNumberScheduled, err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t, 30*time.Second)
			check := func(want bool) {
				t.Helper()
				got, err := tt.healthy(ctx)
				if err != nil && want {
					t.Fatalf("check: %v", err)
				}
				if got != want {
					t.Fatalf("healthy = %v, want %v", got, want)
				}
			}
			check(true)
			if err := tt.fault(ctx); err != nil {
				t.Fatalf("fault: %v", err)
			}
			t.Cleanup(func() { _ = tt.restore(context.Background()) })
			check(false)
			if err := tt.restore(ctx); err != nil {
				t.Fatalf("restore: %v", err)
			}
			check(true)
		})
	}
}

func TestKubeStopRemovesEverything(t *testing.T) {
	Require(t, NeedKube)
	ctx := testCtx(t, 2*time.Minute)
	k, err := StartKube(ctx, KubeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir, url := k.Dir(), k.URL()
	k.Stop()
	k.Stop() // idempotent
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir %s still there after Stop: %v", dir, err)
	}
	c := &http.Client{Timeout: time.Second}
	if resp, err := c.Get(url + "/readyz"); err == nil {
		resp.Body.Close()
		t.Errorf("API server still answers at %s after Stop", url)
	}
}

// TestKubeStartFailureSaysWhy: a server that will not start is reported
// with the tail of its own log.
func TestKubeStartFailureSaysWhy(t *testing.T) {
	Require(t, NeedKube)
	ctx := testCtx(t, time.Minute)
	dir := t.TempDir()
	k, err := StartKube(ctx, KubeOptions{ServiceCIDR: "not-a-cidr", Dir: filepath.Join(dir, "kube")})
	if err == nil {
		k.Stop()
		t.Fatal("kube-apiserver started with a bad --service-cluster-ip-range")
	}
	for _, want := range []string{"start kube-apiserver", "exited", "kube-apiserver.log", "not a valid cidr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// The etcd it had started is gone too.
	if b, err := os.ReadFile(filepath.Join(dir, "kube", "etcd.log")); err == nil {
		if out, _ := exec.Command("pgrep", "-f", filepath.Join(dir, "kube", "etcd")).Output(); len(out) > 0 {
			t.Errorf("etcd still running after a failed start: pids %s (log %d bytes)", out, len(b))
		}
	}
}
