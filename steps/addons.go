package steps

// The cluster family, add-ons: Kubernetes objects applied with server-side
// apply under one field manager, planned with a server-side dry run so an
// apply with nothing to do writes nothing, waited on until they work
// (CRDs Established, Deployments and DaemonSets available), undone by
// deleting what the run created and restoring what it updated.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"

	"github.com/guildnet/metaguildnet/internal/crds"
	"github.com/guildnet/metaguildnet/messages"
)

// Names and defaults of the add-ons, in one place.
const (
	// FieldManager owns every field setup applies.
	FieldManager = "metaguildnet"

	NamespaceGuildNet       = "guildnet-system"
	NamespaceMetalLB        = "metallb-system"
	DefaultMetalLBPool      = "workspaces"
	DefaultMetalLBAddresses = "10.0.0.200-10.0.0.250"
	DefaultMetalLBL2        = "workspaces-l2"
	MetalLBControllerImage  = "quay.io/metallb/controller:v0.13.12"
	MetalLBSpeakerImage     = "quay.io/metallb/speaker:v0.13.12"

	// addonWait bounds the wait for add-ons to work after an apply.
	addonWait = 3 * time.Minute
)

var (
	gvrNamespace  = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	gvrDeployment = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	gvrDaemonSet  = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	gvrIPPool     = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	gvrL2Ad       = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "l2advertisements"}
)

func addonSteps() []Step {
	return []Step{
		addonStep("k8s_namespaces", "the spec's namespaces and guildnet-system exist",
			"kubeconfig_install", namespaceObjects, nil),
		addonStep("guildnet_crds", "the GuildNet CRDs (workspaces.guildnet.io, capabilities.guildnet.io) are Established",
			"kubeconfig_install", guildnetCRDObjects, waitCRDs),
		addonStep("metallb", "MetalLB runs (controller Deployment, speaker DaemonSet) with pool workspaces and L2Advertisement workspaces-l2",
			"k8s_namespaces", metalLBObjects, waitMetalLB),
	}
}

// addonStep is a critical cluster step, once the cluster's kubeconfig is
// installed, that applies objects, waits for them with wait (nil: no
// wait) and undoes by deleting what it created and restoring what it
// updated.
func addonStep(name, description, after string, objects objectsFunc, wait waitFunc) Step {
	return Step{
		Name: name, Layer: messages.LayerCluster, Scope: ScopeCluster,
		Description: description,
		After:       []string{after},
		Critical:    true,
		Prereqs:     kubeconfigPrereq,
		Plan:        addonPlan(objects),
		Apply:       addonApply(objects, wait),
		Undo:        addonUndo,
	}
}

// --- the objects ---

// kobj is one object a step applies.
type kobj struct {
	gvr schema.GroupVersionResource
	u   *unstructured.Unstructured
}

func (o kobj) ri(dyn dynamic.Interface) dynamic.ResourceInterface {
	return kubeResource(dyn, o.gvr, o.u)
}

func (o kobj) String() string { return kubeRef(o.u) }

func managedLabels() map[string]any {
	return map[string]any{"app.kubernetes.io/managed-by": FieldManager}
}

func newObj(apiVersion, kind, ns, name string, labels map[string]any, spec map[string]any) *unstructured.Unstructured {
	meta := map[string]any{"name": name}
	if ns != "" {
		meta["namespace"] = ns
	}
	if labels != nil {
		meta["labels"] = labels
	}
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": meta}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

func namespaceObj(name string) kobj {
	return kobj{gvrNamespace, newObj("v1", "Namespace", "", name, managedLabels(), nil)}
}

func namespaceObjects(env *Env) ([]kobj, string) {
	names := []string{NamespaceGuildNet}
	for _, n := range env.Spec.Cluster.Addons.Namespaces {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	out := make([]kobj, 0, len(names))
	for _, n := range names {
		out = append(out, namespaceObj(n))
	}
	return out, ""
}

func guildnetCRDObjects(env *Env) ([]kobj, string) {
	if c := env.Spec.Cluster.Addons.CRDs; c != nil && !*c {
		return nil, "GuildNet CRDs disabled in the spec (cluster.addons.crds: false)"
	}
	var out []kobj
	for _, u := range crds.GuildNet() {
		out = append(out, kobj{crds.GVR, u})
	}
	return out, ""
}

func metalLBObjects(env *Env) ([]kobj, string) {
	m := env.Spec.Cluster.Addons.MetalLB
	if m.Enabled != nil && !*m.Enabled {
		return nil, "MetalLB disabled in the spec (cluster.addons.metallb.enabled: false)"
	}
	pool, l2 := m.Pool, m.L2Advertisement
	if pool == "" {
		pool = DefaultMetalLBPool
	}
	if l2 == "" {
		l2 = DefaultMetalLBL2
	}
	addrs := []any{}
	for _, a := range m.Addresses {
		addrs = append(addrs, a)
	}
	if len(addrs) == 0 {
		addrs = []any{DefaultMetalLBAddresses}
	}
	out := []kobj{namespaceObj(NamespaceMetalLB)}
	for _, u := range crds.MetalLB() {
		out = append(out, kobj{crds.GVR, u})
	}
	ctrl := map[string]any{"app": "metallb", "component": "controller"}
	spk := map[string]any{"app": "metallb", "component": "speaker"}
	tolerations := []any{
		map[string]any{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
	}
	out = append(out,
		kobj{gvrDeployment, newObj("apps/v1", "Deployment", NamespaceMetalLB, "controller", ctrl, map[string]any{
			"replicas": int64(1),
			"selector": map[string]any{"matchLabels": ctrl},
			"template": podTemplate(ctrl, "controller", MetalLBControllerImage, nil),
		})},
		kobj{gvrDaemonSet, newObj("apps/v1", "DaemonSet", NamespaceMetalLB, "speaker", spk, map[string]any{
			"selector": map[string]any{"matchLabels": spk},
			"template": podTemplate(spk, "speaker", MetalLBSpeakerImage, tolerations),
		})},
		kobj{gvrIPPool, newObj("metallb.io/v1beta1", "IPAddressPool", NamespaceMetalLB, pool, managedLabels(),
			map[string]any{"addresses": addrs})},
		kobj{gvrL2Ad, newObj("metallb.io/v1beta1", "L2Advertisement", NamespaceMetalLB, l2, managedLabels(),
			map[string]any{"ipAddressPools": []any{pool}})},
	)
	return out, ""
}

func podTemplate(labels map[string]any, name, image string, tolerations []any) map[string]any {
	spec := map[string]any{"containers": []any{map[string]any{"name": name, "image": image}}}
	if tolerations != nil {
		spec["tolerations"] = tolerations
	}
	return map[string]any{"metadata": map[string]any{"labels": labels}, "spec": spec}
}

// --- plan and apply ---

// objPlan is what applying one object would do.
type objPlan struct {
	o      kobj
	action string
	prev   *unstructured.Unstructured // the object before an update
}

// stripped is u without what the server and the controllers alone set
// (status moves on its own between two reads), to compare content.
func stripped(u *unstructured.Unstructured) map[string]any {
	c := u.DeepCopy()
	for _, f := range []string{"managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"} {
		unstructured.RemoveNestedField(c.Object, "metadata", f)
	}
	unstructured.RemoveNestedField(c.Object, "status")
	return c.Object
}

// planObject asks the server what a server-side apply of o would give
// (dry run) and compares it with what is there.
func planObject(ctx context.Context, dyn dynamic.Interface, o kobj) (objPlan, error) {
	cur, dry, err := kubeDryRun(ctx, o.ri(dyn), o.u, true, false)
	if err != nil {
		return objPlan{}, err
	}
	if cur == nil {
		return objPlan{o: o, action: messages.ActionCreate}, nil
	}
	if equality.Semantic.DeepEqual(stripped(cur), stripped(dry)) {
		return objPlan{o: o, action: messages.ActionUnchanged}, nil
	}
	return objPlan{o: o, action: messages.ActionUpdate, prev: cur}, nil
}

func planObjects(ctx context.Context, dyn dynamic.Interface, objs []kobj) ([]objPlan, error) {
	out := make([]objPlan, 0, len(objs))
	for _, o := range objs {
		p, err := planObject(ctx, dyn, o)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// summary is the one-line diff and overall action of object plans.
func summary(ps []objPlan) Plan {
	var create, update []string
	for _, p := range ps {
		switch p.action {
		case messages.ActionCreate:
			create = append(create, p.o.String())
		case messages.ActionUpdate:
			update = append(update, p.o.String())
		}
	}
	var parts []string
	if len(create) > 0 {
		parts = append(parts, "create "+strings.Join(create, ", "))
	}
	if len(update) > 0 {
		parts = append(parts, "update "+strings.Join(update, ", "))
	}
	switch {
	case len(update) > 0:
		return Plan{Action: messages.ActionUpdate, Diff: strings.Join(parts, "; ")}
	case len(create) > 0:
		return Plan{Action: messages.ActionCreate, Diff: strings.Join(parts, "; ")}
	}
	return Plan{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("%d object(s) as applied", len(ps))}
}

type objectsFunc func(env *Env) ([]kobj, string)

func addonPlan(objects objectsFunc) func(ctx context.Context, env *Env) (Plan, error) {
	return func(ctx context.Context, env *Env) (Plan, error) {
		objs, off := objects(env)
		if off != "" {
			return Plan{Action: messages.ActionUnchanged, Diff: off}, nil
		}
		if p, bare := planOnBareCluster(env, len(objs)); bare {
			return p, nil
		}
		dyn, err := dynamicClient(env)
		if err != nil {
			return Plan{}, err
		}
		ps, err := planObjects(ctx, dyn, objs)
		if err != nil {
			return Plan{}, err
		}
		return summary(ps), nil
	}
}

// addonUndoData is what Undo needs: per object, created (delete it) or
// the previous content (restore it).
type addonUndoData struct {
	Objects []undoObject `json:"objects"`
}

type undoObject struct {
	Group     string         `json:"group,omitempty"`
	Version   string         `json:"version"`
	Resource  string         `json:"resource"`
	Namespace string         `json:"namespace,omitempty"`
	Name      string         `json:"name"`
	Created   bool           `json:"created,omitempty"`
	Previous  map[string]any `json:"previous,omitempty"`
}

// applyObject server-side applies o under FieldManager.
func applyObject(ctx context.Context, dyn dynamic.Interface, o kobj) error {
	ctx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
	defer cancel()
	if _, err := o.ri(dyn).Apply(ctx, o.u.GetName(), o.u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("server-side apply of %s: %w", o, err)
	}
	return nil
}

type waitFunc func(ctx context.Context, dyn dynamic.Interface, objs []kobj) error

func addonApply(objects objectsFunc, wait waitFunc) func(ctx context.Context, env *Env) (Applied, error) {
	return func(ctx context.Context, env *Env) (Applied, error) {
		objs, off := objects(env)
		if off != "" {
			return Applied{Action: messages.ActionUnchanged, Diff: off}, nil
		}
		dyn, err := dynamicClient(env)
		if err != nil {
			return Applied{}, err
		}
		ps, err := planObjects(ctx, dyn, objs)
		if err != nil {
			return Applied{}, err
		}
		p := summary(ps)
		var undo addonUndoData
		for _, op := range ps {
			if op.action == messages.ActionUnchanged {
				continue
			}
			if op.o.gvr.Group == "metallb.io" {
				// Custom resources need their CRDs served first.
				if err := waitCRDs(ctx, dyn, objs); err != nil {
					return Applied{Undo: undoOrNil(undo)}, err
				}
			}
			if err := applyObject(ctx, dyn, op.o); err != nil {
				return Applied{Undo: undoOrNil(undo)}, err
			}
			u := undoObject{Group: op.o.gvr.Group, Version: op.o.gvr.Version, Resource: op.o.gvr.Resource,
				Namespace: op.o.u.GetNamespace(), Name: op.o.u.GetName(), Created: op.action == messages.ActionCreate}
			if op.prev != nil {
				u.Previous = stripped(op.prev)
			}
			undo.Objects = append(undo.Objects, u)
		}
		if wait != nil {
			wctx, cancel := context.WithTimeout(ctx, addonWait)
			defer cancel()
			if err := wait(wctx, dyn, objs); err != nil {
				return Applied{Undo: undoOrNil(undo)}, err
			}
		}
		return Applied{Action: p.Action, Diff: p.Diff, Undo: undoOrNil(undo)}, nil
	}
}

func undoOrNil(u addonUndoData) any {
	if len(u.Objects) == 0 {
		return nil
	}
	return u
}

// addonUndo deletes what the apply created and restores what it updated,
// in reverse order.
func addonUndo(ctx context.Context, env *Env, raw json.RawMessage) error {
	u, err := parseAddonUndo(raw)
	if err != nil || len(u.Objects) == 0 {
		return err
	}
	dyn, err := dynamicClient(env)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(u.Objects) - 1; i >= 0; i-- {
		o := u.Objects[i]
		gvr := schema.GroupVersionResource{Group: o.Group, Version: o.Version, Resource: o.Resource}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if o.Namespace != "" {
			ri = dyn.Resource(gvr).Namespace(o.Namespace)
		}
		cctx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
		if o.Created {
			// Only what setup applied: the Undo data comes back from the
			// controller, and a deletion is not to be taken on its word.
			cur, err := ri.Get(cctx, o.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				cancel()
				continue
			}
			if err != nil || !appliedBySetup(cur) {
				errs = append(errs, fmt.Errorf("undo: %s %s: not deleted (not applied by %s): %v", o.Resource, o.Name, FieldManager, err))
				cancel()
				continue
			}
			bg := metav1.DeletePropagationBackground
			if err := ri.Delete(cctx, o.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("undo: delete %s %s: %w", o.Resource, o.Name, err))
			}
			cancel()
			continue
		}
		if o.Previous == nil {
			cancel()
			continue
		}
		if err := restore(cctx, ri, o); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	return errors.Join(errs...)
}

// maxUndoObjects bounds the Undo data of an add-on step.
const maxUndoObjects = 64

// undoGVRs are the only resources add-on Undo touches.
var undoGVRs = []schema.GroupVersionResource{gvrNamespace, crds.GVR, gvrDeployment, gvrDaemonSet, gvrIPPool, gvrL2Ad}

// parseAddonUndo decodes and checks an add-on step's Undo data: known
// resources only, names valid, bounded.
func parseAddonUndo(raw json.RawMessage) (addonUndoData, error) {
	var u addonUndoData
	if len(raw) == 0 || string(raw) == "null" {
		return u, nil
	}
	if err := strictJSON(raw, &u); err != nil {
		return addonUndoData{}, fmt.Errorf("undo data: %w", err)
	}
	if len(u.Objects) > maxUndoObjects {
		return addonUndoData{}, fmt.Errorf("undo data: %d objects, at most %d", len(u.Objects), maxUndoObjects)
	}
	for i, o := range u.Objects {
		gvr := schema.GroupVersionResource{Group: o.Group, Version: o.Version, Resource: o.Resource}
		if !slices.Contains(undoGVRs, gvr) {
			return addonUndoData{}, fmt.Errorf("undo data: objects[%d]: resource %s is not one setup applies", i, gvr)
		}
		if errs := validation.IsDNS1123Subdomain(o.Name); len(errs) > 0 {
			return addonUndoData{}, fmt.Errorf("undo data: objects[%d]: name %q: %s", i, o.Name, strings.Join(errs, "; "))
		}
		if o.Namespace != "" {
			if errs := validation.IsDNS1123Label(o.Namespace); len(errs) > 0 {
				return addonUndoData{}, fmt.Errorf("undo data: objects[%d]: namespace %q: %s", i, o.Namespace, strings.Join(errs, "; "))
			}
		}
		if o.Created == (o.Previous != nil) {
			return addonUndoData{}, fmt.Errorf("undo data: objects[%d]: want either created or previous", i)
		}
		if o.Previous != nil {
			prev := unstructured.Unstructured{Object: o.Previous}
			if prev.GetName() != o.Name || prev.GetNamespace() != o.Namespace {
				return addonUndoData{}, fmt.Errorf("undo data: objects[%d]: previous content is of %s/%s, not %s/%s", i, prev.GetNamespace(), prev.GetName(), o.Namespace, o.Name)
			}
		}
	}
	return u, nil
}

// appliedBySetup reports whether FieldManager manages fields of u.
func appliedBySetup(u *unstructured.Unstructured) bool {
	for _, mf := range u.GetManagedFields() {
		if mf.Manager == FieldManager {
			return true
		}
	}
	return false
}

// restore puts an object's previous content back (an update with the
// current resourceVersion).
func restore(ctx context.Context, ri dynamic.ResourceInterface, o undoObject) error {
	cur, err := ri.Get(ctx, o.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		prev := &unstructured.Unstructured{Object: o.Previous}
		if _, err := ri.Create(ctx, prev, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
			return fmt.Errorf("undo: recreate %s %s: %w", o.Resource, o.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("undo: get %s %s: %w", o.Resource, o.Name, err)
	}
	prev := &unstructured.Unstructured{Object: o.Previous}
	prev.SetResourceVersion(cur.GetResourceVersion())
	if _, err := ri.Update(ctx, prev, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("undo: restore %s %s: %w", o.Resource, o.Name, err)
	}
	return nil
}

// --- waits ---

func pollUntil(ctx context.Context, what string, cond func(ctx context.Context) (bool, string, error)) error {
	var last string
	for {
		ok, why, err := cond(ctx)
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if ok {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitCRDs waits until every CRD among objs is Established.
func waitCRDs(ctx context.Context, dyn dynamic.Interface, objs []kobj) error {
	for _, o := range objs {
		if o.gvr != crds.GVR {
			continue
		}
		name := o.u.GetName()
		if err := pollUntil(ctx, "CRD "+name+" Established", func(ctx context.Context) (bool, string, error) {
			u, err := dyn.Resource(crds.GVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), err
			}
			return crds.Established(u), "not Established", nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// waitMetalLB waits for the CRDs, then the controller Deployment and the
// speaker DaemonSet to be available.
func waitMetalLB(ctx context.Context, dyn dynamic.Interface, objs []kobj) error {
	if err := waitCRDs(ctx, dyn, objs); err != nil {
		return err
	}
	for _, o := range objs {
		switch o.gvr {
		case gvrDeployment:
			if err := pollUntil(ctx, o.String()+" available", func(ctx context.Context) (bool, string, error) {
				u, err := o.ri(dyn).Get(ctx, o.u.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, err.Error(), err
				}
				return deploymentAvailable(u)
			}); err != nil {
				return err
			}
		case gvrDaemonSet:
			if err := pollUntil(ctx, o.String()+" available", func(ctx context.Context) (bool, string, error) {
				u, err := o.ri(dyn).Get(ctx, o.u.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, err.Error(), err
				}
				return daemonSetAvailable(u)
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

func num(u *unstructured.Unstructured, path ...string) int64 {
	v, _, _ := unstructured.NestedInt64(u.Object, path...)
	return v
}

func deploymentAvailable(u *unstructured.Unstructured) (bool, string, error) {
	want, ok, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	if !ok {
		want = 1
	}
	gen, obs := u.GetGeneration(), num(u, "status", "observedGeneration")
	avail, updated := num(u, "status", "availableReplicas"), num(u, "status", "updatedReplicas")
	why := fmt.Sprintf("%d/%d available, %d updated, generation %d observed %d", avail, want, updated, gen, obs)
	return obs >= gen && avail >= want && updated >= want, why, nil
}

func daemonSetAvailable(u *unstructured.Unstructured) (bool, string, error) {
	gen, obs := u.GetGeneration(), num(u, "status", "observedGeneration")
	desired := num(u, "status", "desiredNumberScheduled")
	avail, updated := num(u, "status", "numberAvailable"), num(u, "status", "updatedNumberScheduled")
	why := fmt.Sprintf("%d/%d available, %d updated, generation %d observed %d", avail, desired, updated, gen, obs)
	return obs >= gen && desired > 0 && avail == desired && updated == desired, why, nil
}
