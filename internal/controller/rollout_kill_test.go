package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

func rolloutRegistry(t *testing.T, w rolloutWorld) *steps.Registry {
	reg, err := steps.NewRegistry(w.noteStep(), w.routesStep())
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestRolloutChildController is not a test: TestRolloutResumeAfterKill9
// runs the test binary with it as a controller process of its own (with
// the rollout test steps), so that it can be killed with SIGKILL.
func TestRolloutChildController(t *testing.T) {
	world := childWorld("MGN_ROLLOUT_CHILD")
	if world == "" {
		return // run as a child only
	}
	w := rolloutWorld{&setupWorld{dir: world}}
	serveAsChild(t, "MGN_ROLLOUT_CHILD", controller.Options{HeartbeatInterval: 100 * time.Millisecond, SweepInterval: -1,
		Steps: rolloutRegistry(t, w), SetupBackoff: 20 * time.Millisecond, Log: zap.NewNop()})
}

// kill -9 of a controller process mid-batch, restart on the same data
// dir: the rollout finishes, the batch in flight re-planned (not applied
// again) and gated, every node applied exactly once.
func TestRolloutResumeAfterKill9(t *testing.T) {
	dir := t.TempDir()
	w := rolloutWorld{&setupWorld{dir: filepath.Join(dir, "world")}}
	os.MkdirAll(w.path("knobs"), 0o700)
	reg := rolloutRegistry(t, w)
	dataDir := filepath.Join(dir, "controller")
	child := newChildController(t, "TestRolloutChildController", "MGN_ROLLOUT_CHILD", w.dir, dataDir)
	cli := child.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range rolloutNodes {
		checks := filepath.Join(dir, n.name+"-checks.yaml")
		os.WriteFile(checks, []byte("checks:\n  - {name: health_marker, layer: network, type: file, path: \""+w.path(n.cluster, "health", n.name)+"\"}\n"), 0o600)
		child.runStepAgent(dir, tok.Token, n.name, n.cluster, n.role, reg, checks)
	}
	poll.Until(t, 15*time.Second, "agents online", func() bool {
		st, err := cli.Status(ctx)
		return err == nil && st.Summary.Online == len(rolloutNodes)
	})
	specs := &rolloutFleet{}
	srep, err := cli.SetupApply(ctx, messages.SetupRequest{Spec: specs.spec(t, "10.0.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "setup finished", func() bool {
		st, err := cli.SetupStatus(ctx, srep.RunID)
		return err == nil && st.Run.Status == messages.RunSucceeded
	})
	w.setKnob(t, "block_route_file", "")
	rep, err := cli.RolloutStart(ctx, messages.RolloutStartRequest{Spec: specs.spec(t, "10.0.0.0/24,10.9.0.0/24"), MaxParallel: 2,
		Canary: ptr(0), MinHealthy: "300ms", HealthyDeadline: "5s"})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the first batch updating", func() bool {
		return w.count("start:route_file@n1") == 2 && w.count("start:route_file@n2") == 2
	})
	cli = child.killAndRestart(cli, func() { w.clearKnob("block_route_file") }, "the batch applied on the nodes", func() bool {
		return w.count("apply:route_file@n1=10.0.0.0/24,10.9.0.0/24") == 1 && w.count("apply:route_file@n2=10.0.0.0/24,10.9.0.0/24") == 1
	})
	defer cli.Close()
	var st messages.RolloutStatusReply
	poll.Until(t, 60*time.Second, "resumed rollout finished", func() bool {
		st, err = cli.RolloutStatus(ctx, rep.ID)
		return err == nil && st.Rollout.Status != messages.RolloutRunning
	})
	if st.Rollout.Status != messages.RolloutSucceeded || st.Rollout.Batches[0].Gate.Status != messages.GatePassed {
		t.Fatalf("resumed rollout: %s", rdump(st))
	}
	for _, n := range rolloutNodes {
		if c := w.count("apply:route_file@" + n.name + "=10.0.0.0/24,10.9.0.0/24"); c != 1 {
			t.Fatalf("%s applied %d times: %v", n.name, c, w.lines())
		}
		if c := w.count("start:route_file@" + n.name); c != 2 {
			t.Fatalf("%s started %d times (setup once, rollout once): %v", n.name, c, w.lines())
		}
	}
	child.stop()
}
