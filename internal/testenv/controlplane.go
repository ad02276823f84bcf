package testenv

import (
	"context"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The live control plane: the real kube-controller-manager and
// kube-scheduler against the world's kube-apiserver, and KWOK playing the
// kubelet of every node, so that a DaemonSet or Deployment applied to the
// world gets pods that are scheduled and go Running (with no containers:
// KWOK only writes status). It is opt-in ([Kube.StartControlPlane]): the
// plain world writes workload status by hand, which real controllers would
// rewrite.

// KWOKVersion is the KWOK built by `make testenv`.
const KWOKVersion = "v0.8.0"

// KubeControllerManagerPath, KubeSchedulerPath and KWOKPath are the binaries
// `make testenv` builds for the live control plane.
func KubeControllerManagerPath() string {
	return filepath.Join(CacheDir(), "k8s-"+KubeVersion, "kube-controller-manager")
}
func KubeSchedulerPath() string {
	return filepath.Join(CacheDir(), "k8s-"+KubeVersion, "kube-scheduler")
}
func KWOKPath() string { return filepath.Join(CacheDir(), "kwok-"+KWOKVersion, "kwok") }

// kwokStages are KWOK's own "fast" stage configs (copied from its module's
// kustomize/stage/{node/fast,node/heartbeat,pod/fast}): nodes become Ready
// and keep beating, pods go Running at once and are deleted when asked.
//
//go:embed kwokstages/*.yaml
var kwokStages embed.FS

// ControlPlane is the running controllers, scheduler and KWOK.
type ControlPlane struct {
	kcm, scheduler, kwok *process
}

// StartControlPlane starts kube-controller-manager, kube-scheduler and
// KWOK against k, each on loopback only with its serving port off. Nodes
// need status.allocatable (cpu, memory, pods) for the scheduler to place
// pods on them; KWOK manages every node. Stop it before k.
func (k *Kube) StartControlPlane(ctx context.Context) (cp *ControlPlane, err error) {
	if why := Missing(NeedControlPlane); why != "" {
		return nil, fmt.Errorf("start control plane: %s (run `make testenv`)", why)
	}
	cp = &ControlPlane{}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	kc := k.KubeconfigPath()
	common := []string{"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"}
	if cp.kcm, err = startProcess("kube-controller-manager", filepath.Join(k.dir, "kube-controller-manager.log"), KubeControllerManagerPath(),
		append(common, "--service-account-private-key-file="+filepath.Join(k.dir, "sa.key"),
			"--use-service-account-credentials=false", "--controllers=*,-serviceaccount-token",
			// No cloud and no node IPAM: pods get their IPs from KWOK.
			"--allocate-node-cidrs=false", "--cluster-cidr=10.244.0.0/16"), nil); err != nil {
		return nil, fmt.Errorf("start kube-controller-manager: %w", err)
	}
	if cp.scheduler, err = startProcess("kube-scheduler", filepath.Join(k.dir, "kube-scheduler.log"), KubeSchedulerPath(), common, nil); err != nil {
		return nil, fmt.Errorf("start kube-scheduler: %w", err)
	}
	stageDir := filepath.Join(k.dir, "kwok-stages")
	if err := os.MkdirAll(stageDir, 0o755); err != nil {
		return nil, fmt.Errorf("kwok stages: %w", err)
	}
	args := []string{"--kubeconfig=" + kc, "--manage-all-nodes=true", "--server-address=127.0.0.1:0",
		"--node-ip=127.0.0.1", "--cidr=10.244.0.0/16"}
	entries, _ := kwokStages.ReadDir("kwokstages")
	for _, e := range entries {
		b, _ := kwokStages.ReadFile("kwokstages/" + e.Name())
		p := filepath.Join(stageDir, e.Name())
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return nil, fmt.Errorf("kwok stage %s: %w", e.Name(), err)
		}
		args = append(args, "--config="+p)
	}
	// KWOK reads its own config dir under HOME: keep it in the world's dir.
	env := []string{"HOME=" + filepath.Join(k.dir, "kwok-home")}
	if cp.kwok, err = startProcess("kwok", filepath.Join(k.dir, "kwok.log"), KWOKPath(), args, env); err != nil {
		return nil, fmt.Errorf("start kwok: %w", err)
	}
	// None of them serves anything to wait on: give them a moment to fail
	// at start (a bad flag exits at once) and report it.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for name, p := range map[string]*process{"kube-controller-manager": cp.kcm, "kube-scheduler": cp.scheduler, "kwok": cp.kwok} {
			if p.exited() {
				return nil, p.failure(fmt.Errorf("%s exited at start", name))
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return cp, nil
}

// Stop ends the three processes. Safe on nil and more than once.
func (cp *ControlPlane) Stop() {
	if cp == nil {
		return
	}
	for _, p := range []*process{cp.kwok, cp.scheduler, cp.kcm} {
		p.stop(3 * time.Second)
	}
}

// ControlPlaneLogs returns the last lines of each process's log, for a
// failing test.
func (k *Kube) ControlPlaneLogs() string {
	var b strings.Builder
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kwok"} {
		fmt.Fprintf(&b, "--- %s\n%s\n", name, tailFile(filepath.Join(k.dir, name+".log"), 15))
	}
	return b.String()
}
