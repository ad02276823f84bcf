package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// BenchmarkRolloutNoop100 is a rollout of a no-op change end to end: a
// real controller and ROLLOUT_E2E_NODES (100) real agents in this process,
// a step that only remembers the routes it was given, the real gate (a
// verification of the cluster with a custom check per node) after every
// batch of 10 and a canary of 1, min-healthy 0. make bench runs it with
// -benchtime 1x (hack/bench).
func BenchmarkRolloutNoop100(b *testing.B) {
	n := 100
	if v, err := strconv.Atoi(os.Getenv("ROLLOUT_E2E_NODES")); err == nil && v > 1 {
		n = v
	}
	var mu sync.Mutex
	seen := map[string]string{}
	want := func(env *steps.Env) string { return strings.Join(env.Spec.Network.Routes, ",") }
	reg, err := steps.NewRegistry(steps.Step{Name: "noop_routes", Layer: messages.LayerNetwork, Scope: steps.ScopeNode,
		Plan: func(_ context.Context, env *steps.Env) (steps.Plan, error) {
			mu.Lock()
			defer mu.Unlock()
			if seen[env.Node] == want(env) {
				return steps.Plan{Action: messages.ActionUnchanged}, nil
			}
			return steps.Plan{Action: messages.ActionUpdate}, nil
		},
		Apply: func(_ context.Context, env *steps.Env) (steps.Applied, error) {
			mu.Lock()
			defer mu.Unlock()
			seen[env.Node] = want(env)
			return steps.Applied{Action: messages.ActionUpdate}, nil
		}})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ctx := context.Background()
	c, err := controller.Start(ctx, controller.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0",
		HeartbeatInterval: time.Second, SweepInterval: -1, Steps: reg, Log: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cli, err := ctlclient.Dial(filepath.Join(dir, "controller"))
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	tokRep, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		b.Fatal(err)
	}
	checks := filepath.Join(dir, "checks.yaml")
	os.WriteFile(checks, []byte(fmt.Sprintf("checks:\n  - {name: bench_marker, layer: network, type: file, path: %q}\n", checks)), 0o600)
	spec := messages.Fleet{APIVersion: messages.FleetAPIVersion, Kind: messages.FleetKind,
		Clusters: []messages.FleetCluster{{Name: "big", Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:9", HeadscaleAPIKeyFrom: "env:HS"},
			Cluster: messages.FleetKube{Provider: "kubernetes", KubeconfigFrom: "env:K"},
			Require: messages.FleetRequire{Layers: []string{"network"}, Checks: []string{"bench_marker"}}}}}
	var names []string
	for i := range n {
		name := fmt.Sprintf("b%03d", i)
		role := messages.RoleWorker
		if i == 0 {
			role = messages.RoleControlPlane
		}
		names = append(names, name)
		spec.Clusters[0].Nodes = append(spec.Clusters[0].Nodes, messages.FleetNode{Name: name, Role: role})
		a, err := agent.New(agent.Config{ControllerURL: c.Info().NATSURL, Token: tokRep.Token, Name: name, Cluster: "big", Role: role,
			StateDir: filepath.Join(dir, "agents", name), Version: "bench", Log: zap.NewNop(),
			Tasks: tasks.Builtin().With(tasks.StepTask{Steps: reg}), Settings: config.Settings{"METAGN_CUSTOM_CHECKS": checks}})
		if err != nil {
			b.Fatal(err)
		}
		actx, acancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { a.Run(actx); close(done) }()
		defer func() { acancel(); <-done }()
	}
	poll.Until(b, 60*time.Second, "agents online", func() bool {
		st, err := cli.Status(ctx)
		return err == nil && st.Summary.Online == n
	})
	canary := 1
	b.ResetTimer()
	var total, perBatch float64
	for i := 0; i < b.N; i++ {
		spec.Clusters[0].Network.Routes = []string{fmt.Sprintf("10.%d.0.0/24", i%200)}
		start := time.Now()
		rep, err := cli.RolloutStart(ctx, messages.RolloutStartRequest{Spec: spec, MaxParallel: 10, Canary: &canary, MinHealthy: "0s"})
		if err != nil {
			b.Fatal(err)
		}
		for {
			st, err := cli.RolloutStatus(ctx, rep.ID)
			if err != nil {
				b.Fatal(err)
			}
			if st.Rollout.Status != messages.RolloutRunning {
				if st.Rollout.Status != messages.RolloutSucceeded {
					b.Fatalf("rollout: %s", st.Reason)
				}
				total = float64(time.Since(start).Milliseconds())
				bs := st.Rollout.Batches
				perBatch = float64(bs[len(bs)-1].Finished.Sub(*bs[0].Started).Milliseconds()) / float64(len(bs))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	mu.Lock()
	for _, name := range names {
		if seen[name] != spec.Clusters[0].Network.Routes[0] {
			b.Fatalf("%s not rolled out", name)
		}
	}
	mu.Unlock()
	b.ReportMetric(total, "total-ms")
	b.ReportMetric(perBatch, "ms/batch")
	b.ReportMetric(float64(n), "nodes")
}
