package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// rolloutBench runs the rollout benchmarks of internal/controller once
// each (docs/ROLLOUT.md):
//   - BenchmarkRolloutBatchOverhead: the controller's own work per batch
//     (planning, dispatch and gate bookkeeping, the record in JetStream)
//     over 1,000 simulated nodes in batches of 50, the steps and checks
//     answering at once; target < 50 ms per batch.
//   - BenchmarkRolloutNoop100: a rollout of a no-op change over 100 real
//     agents end to end (real step tasks, a real verification gate after
//     every batch of 10, a canary of 1).
type rolloutBench struct {
	OverheadMSPerBatch float64 `json:"overhead_ms_per_batch"`
	OverheadPlanMS     float64 `json:"overhead_plan_ms"`
	OverheadNodes      int     `json:"overhead_nodes"`
	OverheadBatchSize  int     `json:"overhead_batch_size"`
	Noop100TotalMS     float64 `json:"noop100_total_ms"`
	Noop100MSPerBatch  float64 `json:"noop100_ms_per_batch"`
	Noop100Nodes       int     `json:"noop100_nodes"`
	TargetMSPerBatch   float64 `json:"target_ms_per_batch"`
}

func runRolloutBench() *rolloutBench {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^(BenchmarkRolloutBatchOverhead|BenchmarkRolloutNoop100)$", "-benchtime", "1x", "./internal/controller")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		log.Printf("rollout benchmarks: %v\n%s", err, out)
		return nil
	}
	return parseRolloutBench(out)
}

// parseRolloutBench reads the figures from go test -bench output.
func parseRolloutBench(out []byte) *rolloutBench {
	rb := &rolloutBench{TargetMSPerBatch: 50}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasPrefix(f[0], "BenchmarkRollout") {
			continue
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err == nil {
				m[f[i+1]] = v
			}
		}
		switch {
		case strings.HasPrefix(f[0], "BenchmarkRolloutBatchOverhead"):
			rb.OverheadMSPerBatch, rb.OverheadPlanMS = m["ms/batch"], m["plan-ms"]
			rb.OverheadNodes, rb.OverheadBatchSize = int(m["nodes"]), int(m["batch-size"])
		case strings.HasPrefix(f[0], "BenchmarkRolloutNoop100"):
			rb.Noop100TotalMS, rb.Noop100MSPerBatch, rb.Noop100Nodes = m["total-ms"], m["ms/batch"], int(m["nodes"])
		}
	}
	return rb
}

func (rb *rolloutBench) String() string {
	return fmt.Sprintf("rollout: controller overhead %.1f ms per batch (%d nodes in batches of %d, plan %.0f ms; target < %.0f ms); %d-node no-op rollout end to end %.0f ms (%.0f ms per batch with its gate)",
		rb.OverheadMSPerBatch, rb.OverheadNodes, rb.OverheadBatchSize, rb.OverheadPlanMS, rb.TargetMSPerBatch, rb.Noop100Nodes, rb.Noop100TotalMS, rb.Noop100MSPerBatch)
}
