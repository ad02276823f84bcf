package controller

import (
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

// A record that would not fit a KV value loses its oldest step rows, and
// one that cannot fit even without them is refused with what to change.
func TestRolloutRecordFitsAValue(t *testing.T) {
	r := &rolloutRunner{c: &Controller{opts: Options{MaxMessageBytes: 8192}}}
	rec := &rolloutRecord{ID: "r1", Status: messages.RolloutRunning}
	for i := range 200 {
		rec.Steps = append(rec.Steps, messages.RolloutStep{Batch: i, Step: "route_file", Node: "n1", Op: "apply", Outcome: "applied"})
	}
	b, err := r.encode(rec)
	if err != nil || len(b) > 8192 || len(rec.Steps) == 0 || rec.Steps[len(rec.Steps)-1].Batch != 199 || len(rec.Steps) == 200 {
		t.Fatalf("%d bytes, %d rows, %v", len(b), len(rec.Steps), err)
	}
	for range 200 {
		rec.Nodes = append(rec.Nodes, messages.RolloutNode{Name: strings.Repeat("n", 60), Cluster: "alpha", Status: "pending"})
	}
	if _, err := r.encode(rec); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("too large: %v", err)
	}
}

func TestSpecDiffRows(t *testing.T) {
	a := messages.Fleet{Clusters: []messages.FleetCluster{{Name: "alpha", Nodes: []messages.FleetNode{{Name: "n1", Role: "controlplane"}}}, {Name: "old"}}}
	b := messages.Fleet{Clusters: []messages.FleetCluster{{Name: "alpha", Nodes: []messages.FleetNode{{Name: "n1", Role: "controlplane"}, {Name: "n2", Role: "worker"}},
		Network: messages.FleetNetwork{Routes: []string{"10.1.0.0/24"}}}, {Name: "new"}}}
	var got []string
	for _, r := range specDiff(a, b) {
		got = append(got, r.Cluster+"|"+r.Field+"|"+r.From+"|"+r.To)
	}
	want := []string{`alpha|network.routes||["10.1.0.0/24"]`, `alpha|nodes[n2].role||"worker"`, `old||(present)|`, `new|||(added)`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s", strings.Join(got, "\n"))
	}
}

// A failed step's root cause is a finding that can explain it: in its
// layer first, then below it, then the host's critical ones; never a
// layer above it, never a host warning.
func TestBestRootCause(t *testing.T) {
	f := func(title, layer, sev string, nodes ...string) messages.Finding {
		return messages.Finding{Title: title, Layer: layer, Severity: sev, Nodes: nodes}
	}
	findings := []messages.Finding{
		f("kubelet down", messages.LayerCluster, "critical", "n1"),
		f("CPU saturated", messages.LayerHost, "warning", "n1"),
		f("disk full", messages.LayerHost, "critical", "n1"),
		f("headscale down", messages.LayerNetwork, "warning", "n2"),
		f("route missing", messages.LayerNetwork, "critical", "n1"),
	}
	pick := func(fs []messages.Finding, touched ...string) string {
		if p := bestRootCause(fs, "n1", touched); p != nil {
			return p.Title
		}
		return ""
	}
	for _, tt := range []struct {
		fs      []messages.Finding
		touched []string
		want    string
	}{
		{findings, []string{messages.LayerNetwork}, "route missing"},
		{findings[:4], []string{messages.LayerNetwork}, "headscale down"}, // this layer, another node, before the host
		{findings[:3], []string{messages.LayerNetwork}, "disk full"},
		{findings[:2], []string{messages.LayerNetwork}, ""}, // a cluster fault and a host warning explain no login
		{findings[:2], []string{messages.LayerApplication}, "kubelet down"},
		{nil, []string{messages.LayerNetwork}, ""},
	} {
		if got := pick(tt.fs, tt.touched...); got != tt.want {
			t.Errorf("%d findings, touched %v: %q, want %q", len(tt.fs), tt.touched, got, tt.want)
		}
	}
}
