package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// setupFigures is the setup runner's overhead: a re-apply that changes
// nothing over n simulated nodes (every step planned on every target, each
// layer verified), target < 2 s. The steps are the bench's own (a file per
// node and one per cluster, in the network and cluster layers): the real
// families need the test world's servers, and their own cost is theirs.
type setupFigures struct {
	Agents       int     `json:"agents"`
	FirstApplyMS float64 `json:"first_apply_ms"`
	ReapplyP50MS float64 `json:"reapply_p50_ms"`
	ReapplyMaxMS float64 `json:"reapply_max_ms"`
	PlanP50MS    float64 `json:"plan_p50_ms"`
	Rounds       int     `json:"rounds"`
}

func benchFileStep(dir, name, layer string, scope steps.Scope, after ...string) steps.Step {
	file := func(env *steps.Env) string {
		if scope == steps.ScopeCluster {
			return filepath.Join(dir, env.Cluster, name, "cluster")
		}
		return filepath.Join(dir, env.Cluster, name, env.Node)
	}
	return steps.Step{Name: name, Layer: layer, Scope: scope, After: after, Critical: true,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			if _, err := os.Stat(file(env)); err == nil {
				return steps.Plan{Action: messages.ActionUnchanged}, nil
			}
			return steps.Plan{Action: messages.ActionCreate, Diff: "created"}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			os.MkdirAll(filepath.Dir(file(env)), 0o700)
			return steps.Applied{Action: messages.ActionCreate}, os.WriteFile(file(env), nil, 0o600)
		}}
}

// setupBench runs an in-process controller with the bench's steps and n
// simulated agents.
func setupBench(work string, n, rounds int) (*setupFigures, error) {
	dir := filepath.Join(work, "setup")
	world := filepath.Join(dir, "world")
	reg, err := steps.NewRegistry(
		benchFileStep(world, "net_cluster", messages.LayerNetwork, steps.ScopeCluster),
		benchFileStep(world, "net_node", messages.LayerNetwork, steps.ScopeNode, "net_cluster"),
		benchFileStep(world, "kube_cluster", messages.LayerCluster, steps.ScopeCluster),
		benchFileStep(world, "kube_node", messages.LayerCluster, steps.ScopeNode, "kube_cluster"))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dataDir := filepath.Join(dir, "controller")
	c, err := controller.Start(ctx, controller.Options{DataDir: dataDir, Listen: "127.0.0.1:0", SweepInterval: -1, Steps: reg, Log: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cli, err := ctlclient.Dial(dataDir)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	tok, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		return nil, err
	}
	checks := filepath.Join(dir, "checks.yaml")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(checks, []byte(fmt.Sprintf("checks:\n  - {name: net_done, layer: network, type: file, path: %q}\n  - {name: kube_done, layer: cluster, scope: cluster, type: file, path: %q}\n",
		filepath.Join(world, "alpha", "net_cluster", "cluster"), filepath.Join(world, "alpha", "kube_cluster", "cluster"))), 0o600)
	spec := messages.Fleet{APIVersion: messages.FleetAPIVersion, Kind: messages.FleetKind}
	cl := messages.FleetCluster{Name: "alpha", Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:9", AuthKeyFrom: "env:TS_AUTHKEY"},
		Cluster: messages.FleetKube{Provider: "kubernetes", KubeconfigFrom: "env:KUBECONFIG_DATA"},
		Require: messages.FleetRequire{Layers: []string{messages.LayerNetwork, messages.LayerCluster}, Checks: []string{"net_done", "kube_done"}}}
	actx, stopAgents := context.WithCancel(context.Background())
	defer stopAgents()
	for i := range n {
		name, role := fmt.Sprintf("s%04d", i), messages.RoleWorker
		if i == 0 {
			role = messages.RoleControlPlane
		}
		cl.Nodes = append(cl.Nodes, messages.FleetNode{Name: name, Role: role})
		a, err := agent.New(agent.Config{ControllerURL: c.Info().NATSURL, Token: tok.Token, Name: name, Cluster: "alpha", Role: role,
			StateDir: filepath.Join(dir, "agents", name), Version: "bench", Log: zap.NewNop(), Journal: agent.NewMemJournal(),
			Tasks: tasks.Builtin().With(tasks.StepTask{Steps: reg}), Settings: config.Settings{"METAGN_CUSTOM_CHECKS": checks}})
		if err != nil {
			return nil, err
		}
		go a.Run(actx)
	}
	spec.Clusters = []messages.FleetCluster{cl}
	for {
		st, err := cli.Status(ctx)
		if err == nil && st.Summary.Online == n {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agents online: %w", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	apply := func() (time.Duration, error) {
		start := time.Now()
		rep, err := cli.SetupApply(ctx, messages.SetupRequest{Spec: spec})
		if err != nil {
			return 0, err
		}
		for {
			st, err := cli.SetupStatus(ctx, rep.RunID)
			if err == nil && st.Run.Status != messages.RunRunning {
				if st.Run.Status != messages.RunSucceeded {
					return 0, fmt.Errorf("setup run %s: %s", rep.RunID, st.Run.Status)
				}
				return time.Since(start), nil
			}
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	first, err := apply()
	if err != nil {
		return nil, err
	}
	var re, plans []time.Duration
	for range rounds {
		d, err := apply()
		if err != nil {
			return nil, err
		}
		re = append(re, d)
		start := time.Now()
		if _, err := cli.SetupPlan(ctx, messages.SetupRequest{Spec: spec}); err != nil {
			return nil, err
		}
		plans = append(plans, time.Since(start))
	}
	f := &setupFigures{Agents: n, FirstApplyMS: ms(first), ReapplyP50MS: ms(pct(re, 50)), ReapplyMaxMS: ms(pct(re, 100)), PlanP50MS: ms(pct(plans, 50)), Rounds: rounds}
	log.Printf("setup, %d simulated nodes: first apply %.0f ms; re-apply with nothing to do p50 %.0f ms, max %.0f ms; plan p50 %.0f ms",
		n, f.FirstApplyMS, f.ReapplyP50MS, f.ReapplyMaxMS, f.PlanP50MS)
	return f, nil
}
