package steps

// Kubernetes plumbing of the database and application families: a client
// from the node's kubeconfig, and a set of objects brought to the spec by
// server-side apply under one field manager, planned by a dry-run apply
// compared with the live objects so that an unchanged set writes nothing.
// Names carry an "app" prefix so the cluster family's own helpers cannot
// clash with them.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// appFieldManager is the server-side apply field manager of every object
// setup writes.
const appFieldManager = "metaguildnet"

// Bounds of the Kubernetes side of the application steps.
const (
	appKubeTimeout   = 15 * time.Second // one API request
	appReadyTimeout  = 3 * time.Minute  // a workload becoming ready
	appReadyInterval = 500 * time.Millisecond
)

// AppKubeconfigPath is the kubeconfig the database and application steps
// use: setting KUBECONFIG (first of a path list), else StateDir/kubeconfig
// (what kubeconfig_install left), else ~/.guildnet/kubeconfig. "" when
// none exists.
func AppKubeconfigPath(env *Env) string {
	if v := env.Settings.Get("KUBECONFIG", ""); v != "" {
		return filepath.SplitList(v)[0]
	}
	var cand []string
	if env.StateDir != "" {
		cand = append(cand, filepath.Join(env.StateDir, "kubeconfig"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		cand = append(cand, filepath.Join(home, ".guildnet", "kubeconfig"))
	}
	for _, p := range cand {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// appKubePrereq blocks a step that needs the cluster while the node has
// no kubeconfig.
func appKubePrereq(_ context.Context, env *Env) error {
	if AppKubeconfigPath(env) == "" {
		return Blocked("no kubeconfig on this node (KUBECONFIG unset, no "+filepath.Join(env.StateDir, "kubeconfig")+")",
			"controller setup apply -f FLEET.yaml --layer cluster")
	}
	return nil
}

// appKube builds a dynamic client from AppKubeconfigPath.
func appKube(env *Env) (dynamic.Interface, error) {
	path := AppKubeconfigPath(env)
	if path == "" {
		return nil, appKubePrereq(context.Background(), env)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, Configf("set KUBECONFIG to a valid kubeconfig", "loading kubeconfig %s: %w", path, err)
	}
	cfg.Timeout = appKubeTimeout
	cfg.UserAgent = "metaguildnet-setup"
	cfg.QPS, cfg.Burst = 50, 100
	cfg = rest.CopyConfig(cfg)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client from %s: %w", path, err)
	}
	return dyn, nil
}

// appObject is one object a step keeps in the cluster.
type appObject struct {
	GVR schema.GroupVersionResource
	Obj *unstructured.Unstructured
}

func (o appObject) ref() string {
	if ns := o.Obj.GetNamespace(); ns != "" {
		return o.Obj.GetKind() + " " + ns + "/" + o.Obj.GetName()
	}
	return o.Obj.GetKind() + " " + o.Obj.GetName()
}

func (o appObject) client(dyn dynamic.Interface) dynamic.ResourceInterface {
	if ns := o.Obj.GetNamespace(); ns != "" {
		return dyn.Resource(o.GVR).Namespace(ns)
	}
	return dyn.Resource(o.GVR)
}

// appObjPlan is what applying one object would do.
type appObjPlan struct {
	Obj     appObject
	Action  string   // create, update or unchanged
	Changed []string // field paths that would change (update)
}

// appPlanObjects observes each object and dry-runs its apply: a missing
// object is a create, one whose dry-run result differs from the live
// object an update (with the changed field paths), else unchanged. Nothing
// is written.
func appPlanObjects(ctx context.Context, dyn dynamic.Interface, objs []appObject) ([]appObjPlan, error) {
	out := make([]appObjPlan, 0, len(objs))
	for _, o := range objs {
		rc := o.client(dyn)
		rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
		live, err := rc.Get(rctx, o.Obj.GetName(), metav1.GetOptions{})
		cancel()
		if apierrors.IsNotFound(err) {
			out = append(out, appObjPlan{Obj: o, Action: "create"})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", o.ref(), err)
		}
		rctx, cancel = context.WithTimeout(ctx, appKubeTimeout)
		dry, err := rc.Apply(rctx, o.Obj.GetName(), o.Obj, metav1.ApplyOptions{FieldManager: appFieldManager, DryRun: []string{metav1.DryRunAll}})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("dry-run apply of %s: %w", o.ref(), err)
		}
		changed := appDiff(live.Object, dry.Object)
		if len(changed) == 0 {
			out = append(out, appObjPlan{Obj: o, Action: "unchanged"})
		} else {
			out = append(out, appObjPlan{Obj: o, Action: "update", Changed: changed})
		}
	}
	return out, nil
}

// appIgnored are fields a dry-run answers differently from the live object
// without anything changing.
var appIgnored = map[string]bool{
	"metadata.managedFields": true, "metadata.resourceVersion": true, "metadata.generation": true,
}

// appDiff lists the field paths (two levels deep under spec, data, ...)
// where b differs from a.
func appDiff(a, b map[string]any) []string {
	var out []string
	var walk func(prefix string, x, y map[string]any, depth int)
	walk = func(prefix string, x, y map[string]any, depth int) {
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		for k := range keys {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			if appIgnored[p] || p == "status" {
				continue
			}
			if reflect.DeepEqual(x[k], y[k]) {
				continue
			}
			xm, ok1 := x[k].(map[string]any)
			ym, ok2 := y[k].(map[string]any)
			if ok1 && ok2 && depth < 2 {
				walk(p, xm, ym, depth+1)
				continue
			}
			out = append(out, p)
		}
	}
	walk("", a, b, 0)
	sort.Strings(out)
	return out
}

// appSummary is the one-line diff of a plan and its overall action.
func appSummary(plans []appObjPlan) (action, diff string) {
	var parts []string
	action = "unchanged"
	for _, p := range plans {
		switch p.Action {
		case "create":
			action = "create"
			parts = append(parts, "create "+p.Obj.ref())
		case "update":
			if action == "unchanged" {
				action = "update"
			}
			parts = append(parts, "update "+p.Obj.ref()+" ("+strings.Join(p.Changed, ", ")+")")
		}
	}
	if len(parts) == 0 {
		return action, "no changes"
	}
	return action, strings.Join(parts, "; ")
}

// appApplyObjects applies the planned creates and updates (server-side
// apply, field manager metaguildnet, conflicts reported, not forced) and
// returns the refs of the objects it created.
func appApplyObjects(ctx context.Context, dyn dynamic.Interface, plans []appObjPlan) (created []appRef, err error) {
	for _, p := range plans {
		if p.Action == "unchanged" {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
		_, err := p.Obj.client(dyn).Apply(rctx, p.Obj.Obj.GetName(), p.Obj.Obj, metav1.ApplyOptions{FieldManager: appFieldManager})
		cancel()
		if err != nil {
			return created, fmt.Errorf("applying %s: %w", p.Obj.ref(), err)
		}
		if p.Action == "create" {
			created = append(created, appRef{
				Group: p.Obj.GVR.Group, Version: p.Obj.GVR.Version, Resource: p.Obj.GVR.Resource,
				Namespace: p.Obj.Obj.GetNamespace(), Name: p.Obj.Obj.GetName(),
			})
		}
	}
	return created, nil
}

// appRef names an object this run created (Applied.Undo: no secrets).
type appRef struct {
	Group     string `json:"group,omitempty"`
	Version   string `json:"version"`
	Resource  string `json:"resource"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// appUndoCreated deletes what a run created, last first. Objects already
// gone are fine.
func appUndoCreated(ctx context.Context, dyn dynamic.Interface, refs []appRef) error {
	var errs []error
	for _, r := range slices.Backward(refs) {
		gvr := schema.GroupVersionResource{Group: r.Group, Version: r.Version, Resource: r.Resource}
		var rc dynamic.ResourceInterface = dyn.Resource(gvr)
		if r.Namespace != "" {
			rc = dyn.Resource(gvr).Namespace(r.Namespace)
		}
		rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
		bg := metav1.DeletePropagationBackground
		err := rc.Delete(rctx, r.Name, metav1.DeleteOptions{PropagationPolicy: &bg})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting %s %s/%s: %w", r.Resource, r.Namespace, r.Name, err))
		}
	}
	return errors.Join(errs...)
}

// appWaitReady polls a Deployment or StatefulSet until its controller has
// seen the current generation and every replica is updated and ready
// (available, for a Deployment), or ctx or appReadyTimeout ends.
func appWaitReady(ctx context.Context, dyn dynamic.Interface, o appObject) error {
	ctx, cancel := context.WithTimeout(ctx, appReadyTimeout)
	defer cancel()
	t := time.NewTicker(appReadyInterval)
	defer t.Stop()
	last := "not read yet"
	for {
		rctx, rcancel := context.WithTimeout(ctx, appKubeTimeout)
		live, err := o.client(dyn).Get(rctx, o.Obj.GetName(), metav1.GetOptions{})
		rcancel()
		if err == nil {
			var ok bool
			ok, last = appReady(live)
			if ok {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be ready: %s: %w", o.ref(), last, ctx.Err())
		case <-t.C:
		}
	}
}

// appReady judges a Deployment's or StatefulSet's rollout from its status.
func appReady(u *unstructured.Unstructured) (bool, string) {
	gen := u.GetGeneration()
	observed, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	want, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	if !found {
		want = 1
	}
	ready, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
	updated, _, _ := unstructured.NestedInt64(u.Object, "status", "updatedReplicas")
	avail, _, _ := unstructured.NestedInt64(u.Object, "status", "availableReplicas")
	switch {
	case observed < gen:
		return false, fmt.Sprintf("generation %d not observed yet (%d)", gen, observed)
	case updated < want:
		return false, fmt.Sprintf("%d of %d replicas updated", updated, want)
	case ready < want:
		return false, fmt.Sprintf("%d of %d replicas ready", ready, want)
	case u.GetKind() == "Deployment" && avail < want:
		return false, fmt.Sprintf("%d of %d replicas available", avail, want)
	}
	return true, fmt.Sprintf("%d/%d ready", ready, want)
}

// appU builds an unstructured object from a literal.
func appU(obj map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: obj}
}
