package crds

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestDefinitions(t *testing.T) {
	want := map[string]bool{"workspaces.guildnet.io": true, "capabilities.guildnet.io": true,
		"ipaddresspools.metallb.io": true, "l2advertisements.metallb.io": true}
	for _, u := range append(GuildNet(), MetalLB()...) {
		if !want[u.GetName()] {
			t.Errorf("unexpected CRD %s", u.GetName())
		}
		delete(want, u.GetName())
		if scope, _, _ := unstructured.NestedString(u.Object, "spec", "scope"); scope != "Namespaced" {
			t.Errorf("%s scope %q", u.GetName(), scope)
		}
	}
	if len(want) > 0 {
		t.Errorf("missing CRDs %v", want)
	}
	// Copies: changing one does not change the next.
	a := GuildNet()[0]
	a.SetName("changed")
	if GuildNet()[0].GetName() == "changed" {
		t.Error("GuildNet() shares its objects")
	}
}

func TestEstablished(t *testing.T) {
	tests := []struct {
		conds []any
		want  bool
	}{
		{nil, false},
		{[]any{map[string]any{"type": "NamesAccepted", "status": "True"}}, false},
		{[]any{map[string]any{"type": "Established", "status": "False"}}, false},
		{[]any{map[string]any{"type": "Established", "status": "True"}}, true},
		{[]any{"not a map"}, false},
	}
	for i, tt := range tests {
		u := &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{"conditions": tt.conds}}}
		if got := Established(u); got != tt.want {
			t.Errorf("case %d: Established = %v, want %v", i, got, tt.want)
		}
	}
}
