package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

// TestSetupChildController is not a test: TestSetupResumeAfterKill9 runs
// the test binary with it as a controller process of its own (with the
// test step registry), so that it can be killed with SIGKILL.
func TestSetupChildController(t *testing.T) {
	world := childWorld("MGN_SETUP_CHILD")
	if world == "" {
		return // run as a child only
	}
	w := &setupWorld{dir: world}
	serveAsChild(t, "MGN_SETUP_CHILD", controller.Options{HeartbeatInterval: 100 * time.Millisecond, SweepInterval: -1,
		Steps: w.registry(t), SetupBackoff: 20 * time.Millisecond, SetupVerifySettle: -1, Log: zap.NewNop()})
}

func TestSetupResumeAfterKill9(t *testing.T) {
	dir := t.TempDir()
	w := &setupWorld{dir: filepath.Join(dir, "world")}
	os.MkdirAll(w.path("knobs"), 0o700)
	reg := w.registry(t)
	dataDir := filepath.Join(dir, "controller")
	child := newChildController(t, "TestSetupChildController", "MGN_SETUP_CHILD", w.dir, dataDir)
	cli := child.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct{ name, role string }{{"n1", "controlplane"}, {"n2", "worker"}} {
		checks := filepath.Join(dir, n.name+"-checks.yaml")
		os.WriteFile(checks, []byte("checks:\n  - {name: net_marker, layer: network, type: file, path: \""+w.path("alpha", "net", n.name)+"\"}\n"+
			"  - {name: kube_marker, layer: cluster, scope: cluster, type: file, path: \""+w.path("alpha", "kube", "cluster")+"\"}\n"), 0o600)
		child.runStepAgent(dir, tok.Token, n.name, "alpha", n.role, reg, checks)
	}
	poll.Until(t, 15*time.Second, "agents online", func() bool {
		st, err := cli.Status(ctx)
		return err == nil && st.Summary.Online == 2
	})
	spec := (&setupFleet{}).specFor(t)
	w.setKnob(t, "block_kube_b", "")
	rep, err := cli.SetupApply(ctx, messages.SetupRequest{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "kube_b started on both nodes", func() bool {
		return w.count("start:kube_b@n1") == 1 && w.count("start:kube_b@n2") == 1
	})
	cli = child.killAndRestart(cli, func() { w.clearKnob("block_kube_b") }, "kube_b applied on both nodes", func() bool {
		return w.count("apply:kube_b@n1") == 1 && w.count("apply:kube_b@n2") == 1
	})
	defer cli.Close()
	var run messages.SetupRun
	poll.Until(t, 60*time.Second, "resumed run finished", func() bool {
		st, err := cli.SetupStatus(ctx, rep.RunID)
		run = st.Run
		return err == nil && run.Status != messages.RunRunning
	})
	if run.Status != messages.RunSucceeded {
		var names []string
		if st, err := cli.Status(ctx); err == nil {
			for _, n := range st.Nodes {
				names = append(names, n.Name+"="+n.State)
			}
		}
		t.Fatalf("resumed run (nodes after the restart: %v): %s", names, dump(run))
	}
	for _, l := range w.lines() {
		if strings.HasPrefix(l, "apply:") && w.count(l) != 1 {
			t.Fatalf("%s done %d times: %v", l, w.count(l), w.lines())
		}
	}
	if kb := stepRows(layerOf(run, "cluster"), "kube_b"); kb["n1"].Outcome != "unchanged" || kb["n2"].Outcome != "unchanged" {
		t.Fatalf("kube_b after resume: %+v", kb)
	}
	child.stop()
}
