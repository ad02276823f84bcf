package kubernetes_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
)

// With a live control plane (the real kube-controller-manager and
// kube-scheduler, KWOK as the nodes' kubelet) the agent's DaemonSet, as
// shipped, gets one pod per node, and each is scheduled and Running: the
// manifest is one a cluster runs, not only one the API server accepts.
func TestDaemonSetRunsOnEveryNode(t *testing.T) {
	testenv.Require(t, testenv.NeedKube, testenv.NeedControlPlane)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	k, err := testenv.StartKube(ctx, testenv.KubeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	cp, err := k.StartControlPlane(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	cs, err := kubernetes.NewForConfig(k.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	const nodes = 3
	for i := range nodes {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", i),
			Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": fmt.Sprintf("node-%d", i)}}}
		n.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"),
			corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
		n.Status.Capacity = n.Status.Allocatable
		if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	applyManifests(t, k.RESTConfig(), filepath.Join("agent-daemonset.yaml"))
	defer func() {
		if t.Failed() {
			t.Log(k.ControlPlaneLogs())
		}
	}()
	poll.Until(t, 2*time.Minute, "the agent running on every node", func() bool {
		pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=metaguildnet-agent"})
		if err != nil {
			return false
		}
		on := map[string]bool{}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" {
				on[p.Spec.NodeName] = true
			}
		}
		return len(on) == nodes
	})
	ds, err := cs.AppsV1().DaemonSets(namespace).Get(ctx, "metaguildnet-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, time.Minute, "the DaemonSet reports every pod ready", func() bool {
		ds, err = cs.AppsV1().DaemonSets(namespace).Get(ctx, "metaguildnet-agent", metav1.GetOptions{})
		return err == nil && ds.Status.DesiredNumberScheduled == nodes && ds.Status.NumberReady == nodes
	})
}
