package controller_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// TestSetupChildController is not a test: TestSetupResumeAfterKill9 runs
// the test binary with it as a controller process of its own (with the
// test step registry), so that it can be killed with SIGKILL.
func TestSetupChildController(t *testing.T) {
	world := os.Getenv("MGN_SETUP_CHILD_WORLD")
	if world == "" {
		return // run as a child only
	}
	w := &setupWorld{dir: world}
	c, err := controller.Start(context.Background(), controller.Options{DataDir: os.Getenv("MGN_SETUP_CHILD_DATA"),
		Listen: os.Getenv("MGN_SETUP_CHILD_LISTEN"), HeartbeatInterval: 100 * time.Millisecond, SweepInterval: -1,
		Steps: w.registry(t), SetupBackoff: 20 * time.Millisecond, SetupVerifySettle: -1, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
}

func TestSetupResumeAfterKill9(t *testing.T) {
	dir := t.TempDir()
	w := &setupWorld{dir: filepath.Join(dir, "world")}
	os.MkdirAll(w.path("knobs"), 0o700)
	reg := w.registry(t)
	dataDir := filepath.Join(dir, "controller")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	var child *exec.Cmd
	startChild := func() *ctlclient.Client {
		t.Helper()
		child = exec.Command(os.Args[0], "-test.run", "^TestSetupChildController$", "-test.count=1")
		child.Env = append(os.Environ(), "MGN_SETUP_CHILD_WORLD="+w.dir, "MGN_SETUP_CHILD_DATA="+dataDir, "MGN_SETUP_CHILD_LISTEN="+listen)
		child.Stdout, child.Stderr = os.Stderr, os.Stderr
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		var cli *ctlclient.Client
		poll.Until(t, 30*time.Second, "controller process serving", func() bool {
			c, err := ctlclient.Dial(dataDir)
			if err != nil {
				return false
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := c.Status(ctx); err != nil {
				c.Close()
				return false
			}
			cli = c
			return true
		})
		return cli
	}
	kill := func() {
		child.Process.Kill() // SIGKILL: nothing is flushed
		child.Wait()
	}
	t.Cleanup(func() {
		if child != nil && child.ProcessState == nil {
			kill()
		}
	})
	cli := startChild()
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
		runAgent(t, agent.Config{ControllerURL: "nats://" + listen, Token: tok.Token, Name: n.name, Cluster: "alpha", Role: n.role,
			StateDir: filepath.Join(dir, "agents", n.name), Version: "test",
			Log:   zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(n.name),
			Tasks: tasks.Builtin().With(tasks.StepTask{Steps: reg}), Settings: config.Settings{"METAGN_CUSTOM_CHECKS": checks}})
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
	cli.Close()
	kill()
	w.clearKnob("block_kube_b")
	poll.Until(t, 20*time.Second, "kube_b applied on both nodes", func() bool {
		return w.count("apply:kube_b@n1") == 1 && w.count("apply:kube_b@n2") == 1
	})
	cli = startChild()
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
	child.Process.Signal(os.Interrupt)
	child.Wait()
}
