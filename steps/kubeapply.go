package steps

// Kubernetes plumbing shared by every step family that keeps objects in a
// cluster (add-ons in addons.go; database and application in appkube.go):
// which kubeconfig a node uses, the prerequisite that blocks a step
// without one, the dynamic client, an object's client and name, and the
// plan primitive: read the live object and ask the server what a
// server-side apply under the one field manager would make of it (dry
// run), so that an apply with nothing to do writes nothing.
//
// One owner per object: every family applies under FieldManager, so two
// steps must not apply different field sets of the same object (the
// second apply would take the first's fields away). guildnet-system is
// owned by k8s_namespaces; workspace_operator only ensures it exists
// (appObject.EnsureOnly).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guildnet/metaguildnet/messages"
)

// kubeCallTimeout bounds one API call of a step.
const kubeCallTimeout = 30 * time.Second

// kubeconfigPath is the kubeconfig a step uses on a node: the KUBECONFIG
// setting (first of a path list), else StateDir/kubeconfig (what
// kubeconfig_install left), else ~/.guildnet/kubeconfig. "" when none
// exists.
func kubeconfigPath(env *Env) string {
	if v := env.Settings.Get("KUBECONFIG", ""); v != "" {
		return filepath.SplitList(v)[0]
	}
	cands := []string{}
	if env.StateDir != "" {
		cands = append(cands, filepath.Join(env.StateDir, stateKubeconfigFile))
	}
	if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, ".guildnet", "kubeconfig"))
	}
	for _, p := range cands {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// AppKubeconfigPath is kubeconfigPath, exported for callers outside the
// package.
func AppKubeconfigPath(env *Env) string { return kubeconfigPath(env) }

// kubeconfigPrereq blocks a step that needs the cluster while the node
// has no kubeconfig, with the command that installs one; except that with
// provider talos the cluster layer's own kubeconfig_install writes it, so
// a plan of a bare cluster says what it will create instead of blocked
// (and an apply that still finds none is blocked by dynamicClient with the
// same command).
func kubeconfigPrereq(_ context.Context, env *Env) error {
	if kubeconfigPath(env) != "" || env.Spec.Cluster.Provider == "talos" {
		return nil
	}
	return kubeconfigBlocked(env)
}

func kubeconfigBlocked(env *Env) error {
	return Blocked(fmt.Sprintf("node %s has no kubeconfig (KUBECONFIG unset, none in the state dir or ~/.guildnet)", env.Node),
		fmt.Sprintf("controller setup apply -f FLEET.yaml --cluster %s --layer cluster (kubeconfig_install), or export KUBECONFIG=PATH for the agent", env.Spec.Name))
}

// dynamicClient is a dynamic client from kubeconfigPath.
func dynamicClient(env *Env) (dynamic.Interface, error) {
	p := kubeconfigPath(env)
	if p == "" {
		return nil, kubeconfigBlocked(env)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", p)
	if err != nil {
		return nil, Configf("set KUBECONFIG to a valid kubeconfig", "loading kubeconfig %s: %w", p, err)
	}
	cfg.Timeout = kubeCallTimeout
	cfg.UserAgent = "metaguildnet-setup"
	cfg.QPS, cfg.Burst = 50, 100
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client from %s: %w", p, err)
	}
	return dyn, nil
}

// kubeResource is the client of u's resource (namespaced when u is).
func kubeResource(dyn dynamic.Interface, gvr schema.GroupVersionResource, u *unstructured.Unstructured) dynamic.ResourceInterface {
	if ns := u.GetNamespace(); ns != "" {
		return dyn.Resource(gvr).Namespace(ns)
	}
	return dyn.Resource(gvr)
}

// kubeRef names u in plans and errors: "Kind ns/name" or "Kind name".
func kubeRef(u *unstructured.Unstructured) string {
	if ns := u.GetNamespace(); ns != "" {
		return u.GetKind() + " " + ns + "/" + u.GetName()
	}
	return u.GetKind() + " " + u.GetName()
}

// kubeDryRun reads the live object u names and, when there is one, what
// a server-side apply of u under FieldManager would make of it (dry run;
// force takes fields from other managers). live is nil when the object
// does not exist (a create). dry is nil when onlyGet is set. Nothing is
// written.
func kubeDryRun(ctx context.Context, rc dynamic.ResourceInterface, u *unstructured.Unstructured, force, onlyGet bool) (live, dry *unstructured.Unstructured, err error) {
	gctx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
	live, err = rc.Get(gctx, u.GetName(), metav1.GetOptions{})
	cancel()
	if apierrors.IsNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", kubeRef(u), err)
	}
	if onlyGet {
		return live, nil, nil
	}
	actx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
	defer cancel()
	dry, err = rc.Apply(actx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager, Force: force, DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return nil, nil, fmt.Errorf("server-side dry-run apply of %s: %w", kubeRef(u), err)
	}
	return live, dry, nil
}

// planOnBareCluster is the plan of n objects on a cluster whose kubeconfig
// is not installed yet (bare true): everything is still to be made.
func planOnBareCluster(env *Env, n int) (p Plan, bare bool) {
	if kubeconfigPath(env) != "" {
		return Plan{}, false
	}
	return Plan{Action: messages.ActionCreate, Diff: fmt.Sprintf("create %d object(s) once the cluster's kubeconfig is installed", n)}, true
}
