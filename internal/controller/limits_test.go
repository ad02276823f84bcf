package controller_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// heldVerify is a verify task whose first run holds until released (or its
// deadline): a background sweep stuck on a slow node. Later runs answer at
// once with no checks.
type heldVerify struct {
	once    sync.Once
	held    chan struct{} // closed when the first run is holding
	release chan struct{}
}

func (*heldVerify) Kind() string { return "verify" }

func (h *heldVerify) Run(ctx context.Context, _ *tasks.Env, _ json.RawMessage) (tasks.Output, error) {
	first := false
	h.once.Do(func() { first = true })
	if first {
		close(h.held)
		select {
		case <-h.release:
		case <-ctx.Done():
		}
	}
	return tasks.Output{Outcome: messages.OutcomeOK, Data: &messages.VerifyOutput{V: messages.Version, Checks: []messages.CheckResult{}}}, nil
}

// An operator's verification does not wait behind a background sweep that
// is still waiting for a slow node: it has its own slot.
func TestOperatorVerifyDoesNotWaitForSweep(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = 200 * time.Millisecond })
	h := &heldVerify{held: make(chan struct{}), release: make(chan struct{})}
	defer close(h.release)
	cfg := f.agentCfg("n1", "a", f.token(true, "1h"))
	cfg.Tasks = tasks.Builtin().With(h)
	f.runAgent(cfg)
	f.waitOnline("n1")
	select {
	case <-h.held: // a sweep's task is held; the sweep waits up to its 20 s deadline
	case <-time.After(30 * time.Second):
		t.Fatal("no sweep started")
	}
	// Well under the held sweep's task deadline (messages.DefaultVerifyTimeout).
	ctx, cancel := context.WithTimeout(context.Background(), messages.DefaultVerifyTimeout/2)
	defer cancel()
	start := time.Now()
	rep, err := f.cli.Verify(ctx, messages.VerifyRequest{Node: "n1", Timeout: "5s"})
	if err != nil {
		t.Fatalf("operator verify while a sweep is held: %v (after %v)", err, time.Since(start))
	}
	if len(rep.Nodes) != 1 || rep.Nodes[0].Name != "n1" {
		t.Fatalf("report nodes %+v", rep.Nodes)
	}
}
