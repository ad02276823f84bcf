package steps

// Kubernetes plumbing of the database and application families: a client
// from the node's kubeconfig, and a set of objects brought to the spec by
// server-side apply under one field manager, planned by a dry-run apply
// compared with the live objects so that an unchanged set writes nothing.
// Names carry an "app" prefix so the cluster family's own helpers cannot
// clash with them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
)

// appFieldManager is the server-side apply field manager of every object
// setup writes (the one FieldManager).
const appFieldManager = FieldManager

// Bounds of the Kubernetes side of the application steps.
const (
	appKubeTimeout   = kubeCallTimeout // one API request
	appReadyTimeout  = 3 * time.Minute // a workload becoming ready
	appReadyInterval = 500 * time.Millisecond
)

// appKubePrereq and appKube are the shared kubeconfigPrereq and
// dynamicClient (kubeapply.go).
var (
	appKubePrereq = kubeconfigPrereq
	appKube       = dynamicClient
)

// appObject is one object a step keeps in the cluster.
type appObject struct {
	GVR schema.GroupVersionResource
	Obj *unstructured.Unstructured
	// EnsureOnly: the step only makes sure the object exists (a namespace
	// another step may also manage under the same field manager, where a
	// second apply would take the other's fields away).
	EnsureOnly bool
}

func (o appObject) ref() string { return kubeRef(o.Obj) }

func (o appObject) client(dyn dynamic.Interface) dynamic.ResourceInterface {
	return kubeResource(dyn, o.GVR, o.Obj)
}

// appObjPlan is what applying one object would do.
type appObjPlan struct {
	Obj     appObject
	Action  string     // create, update or unchanged
	Changed [][]string // field paths that would change (update)
	// Prev holds the live values at Changed (update): what Undo puts back.
	Prev []appField
}

// appField is one field's value before an update; Absent when the field
// was not there.
type appField struct {
	Path   []string        `json:"path"`
	Value  json.RawMessage `json:"value,omitempty"`
	Absent bool            `json:"absent,omitempty"`
}

// appPlanObjects observes each object and dry-runs its apply: a missing
// object is a create, one whose dry-run result differs from the live
// object an update (with the changed field paths and their live values),
// else unchanged. Nothing is written.
func appPlanObjects(ctx context.Context, dyn dynamic.Interface, objs []appObject) ([]appObjPlan, error) {
	out := make([]appObjPlan, 0, len(objs))
	for _, o := range objs {
		live, dry, err := kubeDryRun(ctx, o.client(dyn), o.Obj, false, o.EnsureOnly)
		if err != nil {
			return nil, err
		}
		if live == nil {
			out = append(out, appObjPlan{Obj: o, Action: "create"})
			continue
		}
		if o.EnsureOnly {
			out = append(out, appObjPlan{Obj: o, Action: "unchanged"})
			continue
		}
		changed := appDiff(live.Object, dry.Object)
		if len(changed) == 0 {
			out = append(out, appObjPlan{Obj: o, Action: "unchanged"})
			continue
		}
		p := appObjPlan{Obj: o, Action: "update", Changed: changed}
		for _, path := range changed {
			v, found, _ := unstructured.NestedFieldNoCopy(live.Object, path...)
			f := appField{Path: path, Absent: !found}
			if found {
				b, err := json.Marshal(v)
				if err != nil {
					return nil, fmt.Errorf("%s: encoding %s: %w", o.ref(), strings.Join(path, "."), err)
				}
				f.Value = b
			}
			p.Prev = append(p.Prev, f)
		}
		out = append(out, p)
	}
	return out, nil
}

// appIgnored are fields a dry-run answers differently from the live object
// without anything changing.
var appIgnored = map[string]bool{
	"metadata.managedFields": true, "metadata.resourceVersion": true, "metadata.generation": true, "status": true,
}

// appDiff lists the field paths (at most three levels deep: spec.replicas,
// metadata.labels.app) where b differs from a.
func appDiff(a, b map[string]any) [][]string {
	var out [][]string
	var walk func(prefix []string, x, y map[string]any)
	walk = func(prefix []string, x, y map[string]any) {
		keys := map[string]bool{}
		for k := range x {
			keys[k] = true
		}
		for k := range y {
			keys[k] = true
		}
		for k := range keys {
			p := append(slices.Clip(prefix), k)
			if appIgnored[strings.Join(p, ".")] || reflect.DeepEqual(x[k], y[k]) {
				continue
			}
			xm, ok1 := x[k].(map[string]any)
			ym, ok2 := y[k].(map[string]any)
			if ok1 && ok2 && len(p) < 3 {
				walk(p, xm, ym)
				continue
			}
			out = append(out, p)
		}
	}
	walk(nil, a, b)
	sort.Slice(out, func(i, j int) bool { return strings.Join(out[i], ".") < strings.Join(out[j], ".") })
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
			var fields []string
			for _, c := range p.Changed {
				fields = append(fields, strings.Join(c, "."))
			}
			parts = append(parts, "update "+p.Obj.ref()+" ("+strings.Join(fields, ", ")+")")
		}
	}
	if len(parts) == 0 {
		return action, "no changes"
	}
	return action, strings.Join(parts, "; ")
}

// appUndo is the Undo record of a kube-object step: the objects it
// created (deleted on undo) and the fields it changed with their previous
// values (put back on undo). None of the objects holds a secret.
type appUndo struct {
	Created []appRef  `json:"created,omitempty"`
	Updated []appPrev `json:"updated,omitempty"`
}

func (u appUndo) empty() bool { return len(u.Created) == 0 && len(u.Updated) == 0 }

// appPrev is one updated object and its fields' previous values.
type appPrev struct {
	appRef
	Fields []appField `json:"fields"`
}

// appRef names an object of a step.
type appRef struct {
	Group     string `json:"group,omitempty"`
	Version   string `json:"version"`
	Resource  string `json:"resource"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func refOf(o appObject) appRef {
	return appRef{Group: o.GVR.Group, Version: o.GVR.Version, Resource: o.GVR.Resource, Namespace: o.Obj.GetNamespace(), Name: o.Obj.GetName()}
}

// appApplyObjects applies the planned creates and updates (server-side
// apply, field manager metaguildnet, conflicts reported, not forced) and
// returns what Undo needs.
func appApplyObjects(ctx context.Context, dyn dynamic.Interface, plans []appObjPlan) (appUndo, error) {
	var u appUndo
	for _, p := range plans {
		if p.Action == "unchanged" {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
		_, err := p.Obj.client(dyn).Apply(rctx, p.Obj.Obj.GetName(), p.Obj.Obj, metav1.ApplyOptions{FieldManager: appFieldManager})
		cancel()
		if err != nil {
			return u, fmt.Errorf("applying %s: %w", p.Obj.ref(), err)
		}
		if p.Action == "create" {
			u.Created = append(u.Created, refOf(p.Obj))
		} else {
			u.Updated = append(u.Updated, appPrev{appRef: refOf(p.Obj), Fields: p.Prev})
		}
	}
	return u, nil
}

// Bounds of an undo record (it comes back from the controller's store).
const (
	maxAppUndoObjects = 32
	maxUndoFields     = 64
	maxUndoPath       = 8
)

// appCheckUndo refuses an undo record that names anything the step does
// not manage: undo deletes and rewrites only the step's own objects.
func appCheckUndo(u appUndo, objs []appObject) error {
	if len(u.Created)+len(u.Updated) > maxAppUndoObjects {
		return fmt.Errorf("undo record names %d objects, more than %d", len(u.Created)+len(u.Updated), maxAppUndoObjects)
	}
	own := map[appRef]bool{}
	for _, o := range objs {
		own[refOf(o)] = true
	}
	for _, r := range u.Created {
		if !own[r] {
			return fmt.Errorf("undo record names %s %s/%s, which this step does not manage", r.Resource, r.Namespace, r.Name)
		}
	}
	for _, p := range u.Updated {
		if !own[p.appRef] {
			return fmt.Errorf("undo record names %s %s/%s, which this step does not manage", p.Resource, p.Namespace, p.Name)
		}
		if len(p.Fields) > maxUndoFields {
			return fmt.Errorf("undo record: %d fields of %s/%s, more than %d", len(p.Fields), p.Namespace, p.Name, maxUndoFields)
		}
		for _, f := range p.Fields {
			if len(f.Path) == 0 || len(f.Path) > maxUndoPath || slices.Contains(f.Path, "") {
				return fmt.Errorf("undo record: bad field path %q of %s/%s", f.Path, p.Namespace, p.Name)
			}
			switch f.Path[0] {
			case "apiVersion", "kind", "status":
				return fmt.Errorf("undo record: field %s of %s/%s cannot be put back", strings.Join(f.Path, "."), p.Namespace, p.Name)
			}
			if f.Path[0] == "metadata" && (len(f.Path) < 2 || f.Path[1] == "name" || f.Path[1] == "namespace") {
				return fmt.Errorf("undo record: field %s of %s/%s cannot be put back", strings.Join(f.Path, "."), p.Namespace, p.Name)
			}
			if !f.Absent && !json.Valid(f.Value) {
				return fmt.Errorf("undo record: value of %s of %s/%s is not JSON", strings.Join(f.Path, "."), p.Namespace, p.Name)
			}
		}
	}
	return nil
}

// decodeAppUndo decodes and checks an undo record against the step's
// objects. A missing record is an empty one.
func decodeAppUndo(raw json.RawMessage, objs []appObject) (appUndo, error) {
	var u appUndo
	if len(raw) == 0 || string(raw) == "null" {
		return u, nil
	}
	if err := json.Unmarshal(raw, &u); err != nil {
		return u, fmt.Errorf("undo record: %w", err)
	}
	return u, appCheckUndo(u, objs)
}

// appUndoObjects puts back what a run changed, last first: updated fields
// get their previous values (the step's object with those fields as they
// were, applied under the same field manager), created objects are
// deleted. Objects already gone are fine.
func appUndoObjects(ctx context.Context, dyn dynamic.Interface, u appUndo, objs []appObject) error {
	var errs []error
	byRef := map[appRef]appObject{}
	for _, o := range objs {
		byRef[refOf(o)] = o
	}
	for _, p := range slices.Backward(u.Updated) {
		o := byRef[p.appRef]
		obj := o.Obj.DeepCopy()
		for _, f := range p.Fields {
			if f.Absent {
				unstructured.RemoveNestedField(obj.Object, f.Path...)
				continue
			}
			var v any
			if err := json.Unmarshal(f.Value, &v); err != nil {
				errs = append(errs, fmt.Errorf("undo %s: %w", o.ref(), err))
				continue
			}
			if err := unstructured.SetNestedField(obj.Object, appJSONToUnstructured(v), f.Path...); err != nil {
				errs = append(errs, fmt.Errorf("undo %s: %s: %w", o.ref(), strings.Join(f.Path, "."), err))
			}
		}
		rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
		_, err := o.client(dyn).Apply(rctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: appFieldManager})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("putting back %s: %w", o.ref(), err))
		}
	}
	if err := appUndoCreated(ctx, dyn, u.Created); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// appJSONToUnstructured turns decoded JSON numbers into int64 where they
// are whole, as unstructured objects hold them.
func appJSONToUnstructured(v any) any {
	switch x := v.(type) {
	case float64:
		if x == float64(int64(x)) {
			return int64(x)
		}
		return x
	case []any:
		for i := range x {
			x[i] = appJSONToUnstructured(x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = appJSONToUnstructured(x[k])
		}
		return x
	}
	return v
}

// appUndoCreated deletes what a run created, last first.
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

// appPlanStep plans a step whose whole job is a set of objects.
func appPlanStep(ctx context.Context, env *Env, build func(*Env) ([]appObject, error)) (Plan, error) {
	objs, err := build(env)
	if err != nil {
		return Plan{}, err
	}
	if p, bare := planOnBareCluster(env, len(objs)); bare {
		return p, nil
	}
	dyn, err := appKube(env)
	if err != nil {
		return Plan{}, err
	}
	plans, err := appPlanObjects(ctx, dyn, objs)
	if err != nil {
		return Plan{}, err
	}
	action, diff := appSummary(plans)
	return Plan{Action: action, Diff: diff}, nil
}

// appApplyStep applies what the plan says (nothing when unchanged) and
// waits until every workload among the objects is ready.
func appApplyStep(ctx context.Context, env *Env, build func(*Env) ([]appObject, error)) (Applied, error) {
	objs, err := build(env)
	if err != nil {
		return Applied{}, err
	}
	dyn, err := appKube(env)
	if err != nil {
		return Applied{}, err
	}
	plans, err := appPlanObjects(ctx, dyn, objs)
	if err != nil {
		return Applied{}, err
	}
	action, diff := appSummary(plans)
	u, err := appApplyObjects(ctx, dyn, plans)
	if err != nil {
		// Put back what this attempt changed, so a retry starts clean.
		if uerr := appUndoObjects(context.WithoutCancel(ctx), dyn, u, objs); uerr != nil {
			err = fmt.Errorf("%w (and undoing: %v)", err, uerr)
		}
		return Applied{}, err
	}
	out := Applied{Action: action, Diff: diff}
	if !u.empty() {
		out.Undo = u
	}
	for _, o := range objs {
		if k := o.Obj.GetKind(); k == "Deployment" || k == "StatefulSet" {
			if err := appWaitReady(ctx, dyn, o); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// appUndoStep returns the Undo of a step built from build.
func appUndoStep(build func(*Env) ([]appObject, error)) func(context.Context, *Env, json.RawMessage) error {
	return func(ctx context.Context, env *Env, raw json.RawMessage) error {
		objs, err := build(env)
		if err != nil {
			return err
		}
		u, err := decodeAppUndo(raw, objs)
		if err != nil || u.empty() {
			return err
		}
		dyn, err := appKube(env)
		if err != nil {
			return err
		}
		return appUndoObjects(ctx, dyn, u, objs)
	}
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
