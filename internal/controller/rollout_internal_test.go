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
