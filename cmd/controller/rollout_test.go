package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

// execute runs the controller CLI in process and returns its exit code,
// stdout and stderr.
func execute(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	root := newRoot()
	root.SetArgs(args)
	var stderr bytes.Buffer
	code := cli.Execute(root, &stderr)
	w.Close()
	os.Stdout = old
	return code, <-done, stderr.String()
}

// A bad spec file or bad flags: exit 2, FILE:LINE or the flag, nothing sent.
func TestRolloutStartRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(bad, []byte("apiVersion: metaguildnet/v1\nkind: Fleet\nclusters:\n  - name: a\n    nodes:\n      - {name: n1, role: boss}\n"), 0o600)
	good := "../../deploy/examples/fleet-2clusters.yaml"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-f", bad}, "fleet.yaml:6"},
		{[]string{"-f", good, "--on-failure", "explode"}, `on_failure: "explode"`},
		{[]string{"-f", good, "--min-healthy", "soon"}, "min_healthy"},
		{[]string{"-f", good, "--waves", "alpha;;beta"}, "waves: wave 2"},
		{[]string{"-f", good, "--max-parallel", "0"}, "--max-parallel"},
	} {
		code, _, stderr := execute(t, append([]string{"rollout", "start", "--data-dir", filepath.Join(dir, "none")}, tt.args...)...)
		if code != cli.ExitUsage || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tt.args, code, stderr, tt.want)
		}
	}
	if code, _, stderr := execute(t, "rollout", "diff", "one", "2"); code != cli.ExitUsage || !strings.Contains(stderr, `REV1: "one"`) {
		t.Errorf("diff: %d %q", code, stderr)
	}
}

// Against a real controller (the built-in steps, no agent): a rollout of
// a spec that changes nothing succeeds at once; --json prints exactly the
// contract's keys; status, list and diff answer; exit codes follow status.
func TestRolloutCLIAgainstController(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := controller.Start(ctx, controller.Options{DataDir: data, Listen: "127.0.0.1:0", HeartbeatInterval: 100 * time.Millisecond, Log: zap.NewNop(), SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	spec := "../../deploy/examples/fleet-2clusters.yaml"
	code, out, stderr := execute(t, "rollout", "start", "--data-dir", data, "-f", spec, "--json")
	if code != 0 {
		t.Fatalf("start: %d %s %s", code, out, stderr)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, ",") != "batches,from_revision,id,nodes,status,to_revision,waves" {
		t.Fatalf("keys %v", keys)
	}
	var r messages.Rollout
	json.Unmarshal([]byte(out), &r)
	if r.Status != "succeeded" || r.ToRevision != 1 || r.FromRevision != 0 || len(r.Waves) != 2 || r.Waves[0].Clusters[0] != "alpha" {
		t.Fatalf("rollout: %s", out)
	}
	var b0 map[string]json.RawMessage
	json.Unmarshal(m["batches"], &[]any{&b0})
	for _, k := range []string{"cluster", "nodes", "status", "started", "finished", "gate"} {
		if _, ok := b0[k]; !ok {
			t.Fatalf("batch without %s: %s", k, m["batches"])
		}
	}
	if code, out, _ := execute(t, "rollout", "status", "--data-dir", data); code != 0 || !strings.Contains(out, "Rollout "+r.ID+": succeeded (revision 0 -> 1)") {
		t.Fatalf("status: %d %s", code, out)
	}
	if code, out, _ := execute(t, "rollout", "list", "--data-dir", data); code != 0 || !strings.Contains(out, r.ID) || !strings.Contains(out, "0 -> 1") {
		t.Fatalf("list: %d %s", code, out)
	}
	if code, out, _ := execute(t, "rollout", "diff", "--data-dir", data, "1", "1"); code != 0 || !strings.Contains(out, "no differences") {
		t.Fatalf("diff: %d %s", code, out)
	}
	if code, _, stderr := execute(t, "rollout", "diff", "--data-dir", data, "1", "7"); code == 0 || !strings.Contains(stderr, "no spec revision 7") {
		t.Fatalf("diff 1 7: %d %s", code, stderr)
	}
	if code, _, stderr := execute(t, "rollout", "pause", "--data-dir", data, r.ID); code == 0 || !strings.Contains(stderr, "has ended") {
		t.Fatalf("pause an ended rollout: %d %s", code, stderr)
	}
}

func TestRolloutLiveLine(t *testing.T) {
	p := messages.RolloutProgress{Status: "running", Wave: 1, Waves: 2, Batch: 2, Batches: 4, Cluster: "alpha", Updating: 2, Healthy: 1, Nodes: 5,
		Gate: "holding", ElapsedMS: 12000, ETAMS: 20000}
	if got := rolloutLine(p); got != "running wave 1/2 batch 2/4 [alpha] updating 2 healthy 1/5 failed 0 gate holding elapsed 12s ETA 20s" {
		t.Fatalf("%q", got)
	}
	if got := rolloutBar(p); got != "[####................]" {
		t.Fatalf("%q", got)
	}
	var b bytes.Buffer
	writeDiff(&b, messages.RolloutDiffReply{From: 1, To: 2, Rows: []messages.RolloutDiffRow{{Cluster: "alpha", Field: "network.routes", From: `["a"]`, To: `["a","b"]`}, {Cluster: "gamma", To: "(added)"}}})
	if !strings.Contains(b.String(), "cluster alpha:\n  ~ network.routes: [\"a\"] -> [\"a\",\"b\"]") || !strings.Contains(b.String(), "cluster gamma:\n  + cluster added") {
		t.Fatalf("%s", b.String())
	}
}
