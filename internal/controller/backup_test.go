package controller_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

// Backup, wipe, restore: the restored controller has the same registry
// (claims included), the same tokens, tasks and reports, and the agents
// come back with their existing keys.
func TestBackupRestore(t *testing.T) {
	f := newFleet(t, func(o *controller.Options) { o.SweepInterval = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok := f.token(true, "1h")
	agents := []*testAgent{f.runAgent(f.agentCfg("n1", "a", tok)), f.runAgent(f.agentCfg("n2", "b", tok))}
	f.waitOnline("n1", "n2")
	role := "worker"
	if _, err := f.cli.NodesSet(ctx, messages.NodesSetRequest{Name: "n2", Role: &role, Labels: map[string]string{"tier": "prod"}}); err != nil {
		t.Fatal(err)
	}
	task := f.run(messages.RunRequest{Target: "all", Kind: "ping"})
	if _, err := f.cli.Verify(ctx, messages.VerifyRequest{Layers: []string{"host"}, Timeout: "10s"}); err != nil {
		t.Fatal(err)
	}
	before, err := f.cli.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lastBefore, err := f.cli.LastReport(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	st, err := controller.Backup(ctx, f.cli.Conn(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Streams < 5 || st.By["KV_mgn_nodes"] != 2 || st.By[messages.ResultsStream] == 0 {
		t.Fatalf("backup: %+v", st)
	}
	if strings.Contains(buf.String(), strings.Split(tok, ".")[0]) {
		t.Fatal("the backup holds a join token in clear")
	}

	for _, a := range agents {
		a.stop()
	}
	f.stop()
	if err := os.RemoveAll(f.opts.DataDir); err != nil {
		t.Fatal(err)
	}
	if _, err := controller.Restore(ctx, bytes.NewReader(buf.Bytes()), f.opts.DataDir); err != nil {
		t.Fatal(err)
	}
	// Restoring over a controller's state is refused.
	if _, err := controller.Restore(ctx, bytes.NewReader(buf.Bytes()), f.opts.DataDir); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Fatalf("restore over existing state: %v", err)
	}
	f.start()

	after, err := f.cli.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Nodes) != len(before.Nodes) {
		t.Fatalf("restored %d nodes, had %d", len(after.Nodes), len(before.Nodes))
	}
	for i, n := range after.Nodes {
		b := before.Nodes[i]
		if n.Name != b.Name || n.Cluster != b.Cluster || n.Role != b.Role || n.Labels["tier"] != b.Labels["tier"] || !n.EnrolledAt.Equal(b.EnrolledAt) {
			t.Errorf("node %s restored as %+v, was %+v", b.Name, n, b)
		}
	}
	lastAfter, err := f.cli.LastReport(ctx)
	if err != nil || !lastAfter.Timestamp.Equal(lastBefore.Timestamp) || lastAfter.OverallStatus != lastBefore.OverallStatus {
		t.Fatalf("report --last after restore: %+v %v (was %+v)", lastAfter.Timestamp, err, lastBefore.Timestamp)
	}
	rep, err := f.cli.Report(ctx, task.TaskID, 0)
	if err != nil || !rep.Done || len(rep.Results) != 2 {
		t.Fatalf("task %s after restore: %+v %v", task.TaskID, rep, err)
	}
	// The token still works (stored hashed, restored as it was), and the
	// agents reconnect with the keys in their state dirs, no token.
	for _, name := range []string{"n1", "n2"} {
		cfg := f.agentCfg(name, "", "")
		f.runAgent(cfg)
	}
	f.waitOnline("n1", "n2")
	f.runAgent(f.agentCfg("n3", "a", tok))
	f.waitOnline("n3")
	if got := f.run(messages.RunRequest{Target: "tier=prod", Kind: "ping"}); len(got.Results) != 1 || got.Results[0].Node != "n2" {
		t.Fatalf("claims after restore: %+v", got.Results)
	}
}
