package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// BenchmarkRolloutBatchOverhead measures the controller's own work per
// batch (planning, dispatch bookkeeping, gate bookkeeping, the record in
// JetStream after every phase) over simulated nodes: the steps and the
// checks themselves are hooks that answer at once. make bench runs it
// with -benchtime 1x (hack/bench); ROLLOUT_NODES/ROLLOUT_BATCH override
// 1,000 nodes in batches of 50.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func BenchmarkRolloutBatchOverhead(b *testing.B) {
	nodes, batch := envInt("ROLLOUT_NODES", 1000), envInt("ROLLOUT_BATCH", 50)
	noop := steps.Step{Name: "bench_noop", Layer: messages.LayerNetwork, Scope: steps.ScopeNode,
		Plan:  func(context.Context, *steps.Env) (steps.Plan, error) { return steps.Plan{}, nil },
		Apply: func(context.Context, *steps.Env) (steps.Applied, error) { return steps.Applied{}, nil }}
	reg, err := steps.NewRegistry(noop)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	c, err := Start(ctx, Options{DataDir: filepath.Join(b.TempDir(), "data"), Listen: "127.0.0.1:0", HeartbeatInterval: time.Second,
		SweepInterval: -1, Steps: reg, Log: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := c.rollout
	r.online = func(string) bool { return true }
	r.callStep = func(_ context.Context, _ *rolloutRecord, _ messages.FleetCluster, st *steps.Step, _ messages.FleetNode, op string, _ json.RawMessage, _ map[string]string) (messages.StepOutput, int, error) {
		out := messages.StepOutput{V: messages.Version, Step: st.Name, Op: op, Action: messages.ActionUpdate}
		return out, 1, nil
	}
	r.verify = func(_ context.Context, req messages.VerifyRequest) (messages.Report, error) {
		rep := messages.Report{V: messages.Version, OverallStatus: messages.Healthy, Layers: []messages.LayerReport{{Name: messages.LayerNetwork, Status: messages.Healthy}}}
		for i := range nodes {
			rep.Layers[0].Checks = append(rep.Layers[0].Checks, messages.CheckResult{Name: "bench_check", Layer: messages.LayerNetwork, Passed: true,
				Status: messages.CheckPass, Node: fmt.Sprintf("n%04d", i), Cluster: req.Cluster})
		}
		return rep, nil
	}
	spec := messages.Fleet{APIVersion: messages.FleetAPIVersion, Kind: messages.FleetKind,
		Clusters: []messages.FleetCluster{{Name: "big", Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:9", HeadscaleAPIKeyFrom: "env:HS"},
			Cluster: messages.FleetKube{Provider: "kubernetes", KubeconfigFrom: "env:K"}}}}
	for i := range nodes {
		role := messages.RoleWorker
		if i == 0 {
			role = messages.RoleControlPlane
		}
		spec.Clusters[0].Nodes = append(spec.Clusters[0].Nodes, messages.FleetNode{Name: fmt.Sprintf("n%04d", i), Role: role})
	}
	canary := 0
	b.ResetTimer()
	var perBatch, planMS float64
	for i := 0; i < b.N; i++ {
		spec.Clusters[0].Network.Routes = []string{fmt.Sprintf("10.%d.0.0/24", i%200)}
		start := time.Now()
		id, err := r.start(ctx, messages.RolloutStartRequest{V: messages.Version, Spec: spec, MaxParallel: batch, Canary: &canary, MinHealthy: "0s"})
		if err != nil {
			b.Fatal(err)
		}
		for {
			st, err := r.status(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if st.Rollout.Status != messages.RolloutRunning {
				if st.Rollout.Status != messages.RolloutSucceeded {
					b.Fatalf("rollout %s: %s", id, st.Reason)
				}
				// From the record's own timeline: the first batch's start
				// to the last one's end, over the batches.
				bs := st.Rollout.Batches
				first, last := *bs[0].Started, *bs[len(bs)-1].Finished
				perBatch = float64(last.Sub(first).Microseconds()) / 1000 / float64(len(bs))
				planMS = float64(first.Sub(start).Microseconds()) / 1000
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	b.ReportMetric(perBatch, "ms/batch")
	b.ReportMetric(planMS, "plan-ms")
	b.ReportMetric(float64(nodes), "nodes")
	b.ReportMetric(float64(batch), "batch-size")
}
