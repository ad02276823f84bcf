package dashboard

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// The runs page renders setup runs (messages.SetupRun, the setup runner's
// record) with progress and ETA, and rollouts with batches, gates and the
// stop reason; the controller has none of either yet.
func TestRunsRender(t *testing.T) {
	s, err := New(Options{Source: nil})
	if err == nil || s != nil {
		t.Fatal("a dashboard without a source")
	}
	s = &Server{}
	tmpl, err := newTemplates()
	if err != nil {
		t.Fatal(err)
	}
	s.tmpl = tmpl
	runs := []messages.SetupRun{{V: 1, RunID: "run-1", Status: messages.RunRunning, Layers: []messages.SetupLayer{
		{Name: "host", Status: messages.RunSucceeded, Steps: []messages.SetupStep{
			{Name: "packages", Node: "n1", Outcome: "changed", DurationMS: 2000},
			{Name: "packages", Node: "n2", Outcome: "changed", DurationMS: 4000},
		}},
		{Name: "network", Status: messages.RunRunning, Steps: []messages.SetupStep{
			{Name: "tailscale", Node: "n1", Outcome: "failed", DurationMS: 3000, Error: "tailscaled: <refused>"},
			{Name: "tailscale", Node: "n2"},
		}},
	}}, {V: 1, RunID: "run-0", Status: messages.RunSucceeded}}
	views := runViews(runs, false)
	if views[0].Done != 3 || views[0].Total != 4 || views[0].ETA != "about 3s" {
		t.Fatalf("progress %+v", views[0])
	}
	if len(runViews(runs, true)) != 1 {
		t.Fatal("running only")
	}
	rollouts := []Rollout{{ID: "ro-1", Status: "stopped", StartedAt: time.Now(), StopReason: "gate failed: database unhealthy",
		Batches: []RolloutBatch{{Nodes: []string{"n1"}, Status: messages.RunSucceeded, Gate: "healthy"}, {Nodes: []string{"n2", "n3"}, Status: messages.RunFailed, Gate: "database unhealthy"}}}}
	var b bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&b, "runs", page{Data: map[string]any{"Runs": views, "Rollouts": rollouts}}); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, want := range []string{"run-1", `<progress max="4" value="3">`, "about 3s left", "tailscaled: &lt;refused&gt;",
		"ro-1", "gate failed: database unhealthy", "2 node(s) · gate: database unhealthy", "✗ failed"} {
		if !strings.Contains(html, want) {
			t.Errorf("runs page lacks %q:\n%s", want, html)
		}
	}
}
