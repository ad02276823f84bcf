// Package crds holds the CustomResourceDefinitions GuildNet's clusters
// carry, as objects ready for the API server: the GuildNet CRDs
// (workspaces.guildnet.io, capabilities.guildnet.io, group guildnet.io,
// v1alpha1, namespaced) and the two MetalLB CRDs GuildNet configures
// (ipaddresspools.metallb.io, l2advertisements.metallb.io, v1beta1) with
// minimal schemas. The setup steps apply them (steps/addons.go) and the
// test world seeds them (internal/testenv), from this one definition.
package crds

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GVR is the CustomResourceDefinition resource.
var GVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// spec is the little that differs between the CRDs.
type spec struct {
	group, version, kind, plural, singular string
	shortNames                             []string
	schema                                 map[string]any
	printerColumns                         []any
}

func preserve() map[string]any {
	return map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
}

func str() map[string]any { return map[string]any{"type": "string"} }

func strList() map[string]any { return map[string]any{"type": "array", "items": str()} }

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

// ipAddressPoolSchema is MetalLB's IPAddressPool, minimal: addresses
// (CIDRs or from-to ranges) required, the rest kept.
func ipAddressPoolSchema() map[string]any {
	return map[string]any{"type": "object", "properties": map[string]any{
		"spec": map[string]any{
			"type": "object", "required": []any{"addresses"},
			"properties": map[string]any{
				"addresses":  strList(),
				"autoAssign": map[string]any{"type": "boolean"},
			},
			"x-kubernetes-preserve-unknown-fields": true,
		},
		"status": preserve(),
	}}
}

// l2AdvertisementSchema is MetalLB's L2Advertisement, minimal.
func l2AdvertisementSchema() map[string]any {
	return map[string]any{"type": "object", "properties": map[string]any{
		"spec": map[string]any{
			"type": "object",
			"properties": map[string]any{
				"ipAddressPools": strList(),
			},
			"x-kubernetes-preserve-unknown-fields": true,
		},
		"status": preserve(),
	}}
}

var guildnet = []spec{
	{group: "guildnet.io", version: "v1alpha1", kind: "Workspace", plural: "workspaces", singular: "workspace",
		shortNames: []string{"ws"}, schema: workspaceSchema(), printerColumns: []any{
			map[string]any{"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
			map[string]any{"name": "Image", "type": "string", "jsonPath": ".spec.image"},
		}},
	{group: "guildnet.io", version: "v1alpha1", kind: "Capability", plural: "capabilities", singular: "capability",
		schema: openSchema()},
}

var metallb = []spec{
	{group: "metallb.io", version: "v1beta1", kind: "IPAddressPool", plural: "ipaddresspools", singular: "ipaddresspool",
		schema: ipAddressPoolSchema()},
	{group: "metallb.io", version: "v1beta1", kind: "L2Advertisement", plural: "l2advertisements", singular: "l2advertisement",
		schema: l2AdvertisementSchema()},
}

func (c spec) object() *unstructured.Unstructured {
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

func objects(specs []spec) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.object())
	}
	return out
}

// GuildNet returns new copies of the GuildNet CRDs.
func GuildNet() []*unstructured.Unstructured { return objects(guildnet) }

// MetalLB returns new copies of the MetalLB CRDs GuildNet configures.
func MetalLB() []*unstructured.Unstructured { return objects(metallb) }

// Established reports whether a CRD's Established condition is True.
func Established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && strings.EqualFold(fmt.Sprint(m["status"]), "True") {
			return true
		}
	}
	return false
}
