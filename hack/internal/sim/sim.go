// Package sim runs the benchmarks' simulated agents: the real agent task
// loop, in process, with an in-memory journal and no logs (hack/bench,
// hack/dashbench).
package sim

import (
	"context"
	"log"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/tasks"
)

// Start enrolls and runs one simulated agent of cluster (label sim=true,
// state under work/sim/NAME) until the returned cancel is called; an
// agent that fails ends the benchmark.
func Start(url, token, name, cluster, work string) context.CancelFunc {
	a, err := agent.New(agent.Config{
		ControllerURL: url, Token: token, Name: name, Cluster: cluster, Labels: map[string]string{"sim": "true"},
		StateDir: filepath.Join(work, "sim", name), Version: "bench", Tasks: tasks.Builtin(),
		Log: zap.NewNop(), Journal: agent.NewMemJournal(),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if err := a.Run(ctx); err != nil && ctx.Err() == nil {
			log.Fatalf("%s: %v", name, err)
		}
	}()
	return cancel
}

// WaitOnline polls the controller every `every` until at least n nodes
// are online, and ends the benchmark if they are not within `within`.
func WaitOnline(cli *ctlclient.Client, n int, within, every time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		st, err := cli.Status(context.Background())
		if err == nil && st.Summary.Online >= n {
			return
		}
		time.Sleep(every)
	}
	log.Fatalf("fewer than %d nodes online after %v", n, within)
}
