package testenv

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// crdSpec is the little that differs between the CRDs the world installs.
type crdSpec struct {
	group, version, kind, plural, singular string
	shortNames                             []string
	schema                                 map[string]any
	printerColumns                         []any
}

func preserve() map[string]any {
	return map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
}

func str() map[string]any { return map[string]any{"type": "string"} }

// workspaceSchema follows GuildNet's Workspace type: spec.image required;
// status.phase one of Pending, Running, Failed, Terminating.
func workspaceSchema() map[string]any {
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			"spec": map[string]any{
				"type":     "object",
				"required": []any{"image"},
				"properties": map[string]any{
					"image": str(),
					"env":   map[string]any{"type": "array", "items": preserve()},
					"ports": map[string]any{"type": "array", "items": preserve()},
					"exposure": map[string]any{"type": "object", "properties": map[string]any{
						"type": map[string]any{"type": "string", "enum": []any{"ClusterIP", "LoadBalancer", "Ingress"}},
					}},
				},
				"x-kubernetes-preserve-unknown-fields": true,
			},
			"status": map[string]any{
				"type": "object",
				"properties": map[string]any{
					"phase":         map[string]any{"type": "string", "enum": []any{"Pending", "Running", "Failed", "Terminating"}},
					"readyReplicas": map[string]any{"type": "integer"},
					"serviceDNS":    str(),
					"serviceIP":     str(),
					"proxyTarget":   str(),
					"lastError":     str(),
				},
				"x-kubernetes-preserve-unknown-fields": true,
			},
		},
	}
}

func openSchema() map[string]any {
	return map[string]any{"type": "object", "properties": map[string]any{
		"spec": preserve(), "status": preserve(),
	}}
}

var worldCRDs = []crdSpec{
	{group: "guildnet.io", version: "v1alpha1", kind: "Workspace", plural: "workspaces", singular: "workspace",
		shortNames: []string{"ws"}, schema: workspaceSchema(), printerColumns: []any{
			map[string]any{"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
			map[string]any{"name": "Image", "type": "string", "jsonPath": ".spec.image"},
		}},
	{group: "guildnet.io", version: "v1alpha1", kind: "Capability", plural: "capabilities", singular: "capability",
		schema: openSchema()},
	{group: "metallb.io", version: "v1beta1", kind: "IPAddressPool", plural: "ipaddresspools", singular: "ipaddresspool",
		schema: openSchema()},
	{group: "metallb.io", version: "v1beta1", kind: "L2Advertisement", plural: "l2advertisements", singular: "l2advertisement",
		schema: openSchema()},
}

func (c crdSpec) object() *unstructured.Unstructured {
	names := map[string]any{"kind": c.kind, "listKind": c.kind + "List", "plural": c.plural, "singular": c.singular}
	if len(c.shortNames) > 0 {
		var sn []any
		for _, s := range c.shortNames {
			sn = append(sn, s)
		}
		names["shortNames"] = sn
	}
	version := map[string]any{
		"name": c.version, "served": true, "storage": true,
		"schema":       map[string]any{"openAPIV3Schema": c.schema},
		"subresources": map[string]any{"status": map[string]any{}},
	}
	if c.printerColumns != nil {
		version["additionalPrinterColumns"] = c.printerColumns
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": c.plural + "." + c.group},
		"spec": map[string]any{
			"group": c.group, "scope": "Namespaced", "names": names,
			"versions": []any{version},
		},
	}}
}

// seedCRDs installs the GuildNet and MetalLB CRDs and waits until each is
// Established.
func (g *GuildNet) seedCRDs(ctx context.Context) error {
	ri := g.Dynamic.Resource(crdGVR)
	for _, c := range worldCRDs {
		if _, err := ri.Create(ctx, c.object(), metav1.CreateOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s.%s: %w", c.plural, c.group, err)
		}
	}
	for _, c := range worldCRDs {
		name := c.plural + "." + c.group
		if err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
			u, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("get CRD %s: %w", name, err)
			}
			return crdEstablished(u), nil
		}); err != nil {
			return fmt.Errorf("wait for CRD %s Established: %w", name, err)
		}
	}
	return nil
}

func crdEstablished(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && strings.EqualFold(fmt.Sprint(m["status"]), "True") {
			return true
		}
	}
	return false
}
