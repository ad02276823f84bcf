package controller_test

import (
	"context"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

// A diagnosis goes over the wire in the typed payloads (DiagnoseArgs,
// DiagnoseOutput) and is stored as a versioned messages.DiagnoseResult
// with each node's sections.
func TestDiagnoseStoresTypedResult(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = -1 })
	tok := f.token(true, "1h")
	f.runAgent(f.agentCfg("n1", "a", tok))
	f.waitOnline("n1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := f.cli.Diagnose(ctx, messages.DiagnoseRequest{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Validate(); err != nil {
		t.Fatalf("stored diagnosis does not validate: %v", err)
	}
	if res.Report == nil || len(res.Sections["n1"]) == 0 {
		t.Fatalf("diagnosis without report or sections: %+v", res)
	}
	for _, s := range res.Sections["n1"] {
		if s.Name == "" {
			t.Fatalf("section without a name: %+v", s)
		}
	}
}
