package e2e

// Rollouts end to end (#11): the bare world with 2 clusters set up first
// with `controller setup apply`, then changed fleet specs rolled out with
// the real CLI `controller rollout start -f FLEET.yaml --json ...` against
// a real controller process and one real agent process per node.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/guildnet/metaguildnet/messages"
)

// rolloutSpec writes the world's fleet spec changed by edit to NAME.yaml.
func (bw *bareWorld) rolloutSpec(w *world, name string, edit func(*messages.Fleet)) string {
	t := bw.t
	t.Helper()
	b, err := os.ReadFile(bw.fleet)
	if err != nil {
		t.Fatal(err)
	}
	var f messages.Fleet
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("fleet.yaml: %v", err)
	}
	edit(&f)
	out, err := yaml.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(w.dir, name+".yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// rollout runs `controller rollout ARGS --data-dir D` and decodes the
// JSON it prints.
func (w *world) rollout(outputs *[]string, args ...string) (messages.Rollout, int, string) {
	w.t.Helper()
	out, code := cli(w.t, append(append([]string{"rollout"}, args...), "--data-dir", w.data)...)
	*outputs = append(*outputs, out)
	var ro messages.Rollout
	if strings.HasPrefix(strings.TrimSpace(out), "{") {
		if err := json.Unmarshal([]byte(out), &ro); err != nil {
			w.t.Fatalf("rollout %v JSON: %v\n%s", args, err, out)
		}
	}
	return ro, code, out
}

func rolloutSummary(ro messages.Rollout) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollout %s %s (%d -> %d)\n", ro.ID, ro.Status, ro.FromRevision, ro.ToRevision)
	for i, wv := range ro.Waves {
		fmt.Fprintf(&b, "  wave %d %v %s\n", i+1, wv.Clusters, wv.Status)
	}
	for i, bt := range ro.Batches {
		fmt.Fprintf(&b, "  batch %d %s %v %s gate %s %v %v..%v\n", i+1, bt.Cluster, bt.Nodes, bt.Status, bt.Gate.Status, bt.Gate.ChecksFailed, bt.Started, bt.Finished)
	}
	for _, n := range ro.Nodes {
		fmt.Fprintf(&b, "  node %s/%s %s\n", n.Cluster, n.Name, n.Status)
	}
	return b.String()
}

// talosApplied is each Talos node's count of applied configs.
func (bw *bareWorld) talosApplied() map[string]int {
	m := map[string]int{}
	for _, n := range bw.talos() {
		m[n.Node] = n.AppliedConfigs
	}
	return m
}

// verifyHealthy runs `controller verify` for each cluster on the setup
// layers and fails unless it is healthy.
func (w *world) verifyHealthy(outputs *[]string, what string) {
	w.t.Helper()
	for _, c := range []string{"alpha", "beta"} {
		vout, vcode := cli(w.t, "verify", "--data-dir", w.data, "--cluster", c, "--layer", "network,cluster,database", "--json")
		*outputs = append(*outputs, vout)
		if vcode != 0 || !strings.Contains(vout, `"status": "healthy"`) && !strings.Contains(vout, `"status":"healthy"`) {
			w.t.Errorf("verify %s %s: exit %d\n%s", c, what, vcode, tailString(vout, 3000))
		}
	}
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

const goodPatch = "machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n"

// TestRolloutBareWorldTwoClusters: bare world with 2 clusters, set up,
// then a good change (a Talos config patch) rolled out in batches of 2
// with a canary, a bad change (the login server on a closed port) that
// fails on the canary and is rolled back, and a change the node refuses
// (an invalid Talos patch) that is counted and rolled back.
func TestRolloutBareWorldTwoClusters(t *testing.T) {
	bw := startBareWorld(t, 2)
	w := newWorld(t)
	agents := bw.startAgents(w, w.token())
	var outputs []string

	out, code := w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	if run := decodeRun(t, out); code != 0 || run.Status != messages.RunSucceeded {
		t.Fatalf("setup apply: exit %d\n%s", code, runSummary(run))
	}
	talos0 := bw.talosApplied()
	if len(talos0) == 0 {
		t.Fatal("no Talos nodes in the world")
	}

	// 1. A good change across both clusters.
	good := bw.rolloutSpec(w, "fleet-good", func(f *messages.Fleet) {
		for i := range f.Clusters {
			f.Clusters[i].Cluster.Talos.ConfigPatches = []string{goodPatch}
		}
	})
	start := time.Now()
	ro, code, raw := w.rollout(&outputs, "start", "-f", good, "--json", "--max-parallel", "2", "--canary", "1",
		"--min-healthy", "1s", "--healthy-deadline", "60s", "--step-timeout", "60s")
	t.Logf("good change (Talos patch) on 2 clusters: %s, exit %d, in %v, %d batches", ro.Status, code, time.Since(start).Round(time.Millisecond), len(ro.Batches))
	if code != 0 || ro.Status != messages.RolloutSucceeded {
		st, _ := cli(t, "rollout", "status", ro.ID, "--data-dir", w.data)
		t.Fatalf("good rollout: exit %d\n%s\n%s\n%s", code, rolloutSummary(ro), st, raw)
	}
	for _, n := range ro.Nodes {
		if n.Status != messages.RolloutNodeHealthy {
			t.Errorf("node %s/%s: %s, want healthy", n.Cluster, n.Name, n.Status)
		}
	}
	for node, c := range bw.talosApplied() {
		if c != talos0[node]+1 {
			t.Errorf("Talos node %s: %d configs applied, want %d (the patch exactly once)", node, c, talos0[node]+1)
		}
	}
	checkBatches(t, ro, 2)
	w.verifyHealthy(&outputs, "after the good rollout")
	diff, dcode := cli(t, "rollout", "diff", fmt.Sprint(ro.FromRevision), fmt.Sprint(ro.ToRevision), "--data-dir", w.data)
	outputs = append(outputs, diff)
	if dcode != 0 || !strings.Contains(diff, "configPatches") || !strings.Contains(diff, "alpha") || !strings.Contains(diff, "beta") {
		t.Errorf("rollout diff %d %d: exit %d\n%s", ro.FromRevision, ro.ToRevision, dcode, diff)
	}
	if ro.FromRevision != 1 || ro.ToRevision != 2 {
		t.Errorf("revisions %d -> %d, want 1 -> 2 (setup's spec, then this one)", ro.FromRevision, ro.ToRevision)
	}

	// 2. A bad change: the login server on a closed port.
	hsBefore := fmt.Sprint(bw.headscaleNodes())
	talos1 := bw.talosApplied()
	port := closedPort(t)
	bad := bw.rolloutSpec(w, "fleet-bad-login", func(f *messages.Fleet) {
		for i := range f.Clusters {
			f.Clusters[i].Cluster.Talos.ConfigPatches = []string{goodPatch}
			f.Clusters[i].Network.LoginServer = "http://127.0.0.1:" + strconv.Itoa(port)
		}
	})
	start = time.Now()
	ro, code, raw = w.rollout(&outputs, "start", "-f", bad, "--json", "--max-parallel", "2", "--canary", "1",
		"--min-healthy", "1s", "--healthy-deadline", "20s", "--step-timeout", "20s")
	t.Logf("bad change (login server on a closed port): %s, exit %d, in %v", ro.Status, code, time.Since(start).Round(time.Millisecond))
	st, _ := cli(t, "rollout", "status", ro.ID, "--data-dir", w.data)
	outputs = append(outputs, st)
	if code != 1 || ro.Status != messages.RolloutRolledBack || len(ro.Batches) == 0 {
		t.Fatalf("bad rollout: exit %d\n%s\n%s\n%s", code, rolloutSummary(ro), st, raw)
	}
	canary := ro.Batches[0]
	if len(canary.Nodes) != 1 || canary.Status != messages.BatchRolledBack && canary.Status != messages.BatchFailed {
		t.Errorf("canary batch: %+v", canary)
	}
	for i, b := range ro.Batches[1:] {
		if b.Status != messages.BatchPending || b.Started != nil {
			t.Errorf("batch %d after the failed canary: %s started %v", i+2, b.Status, b.Started)
		}
	}
	for _, n := range ro.Nodes {
		if n.Name != canary.Nodes[0] && n.Status != messages.RolloutNodePending {
			t.Errorf("node %s after the failed canary: %s, want pending (untouched)", n.Name, n.Status)
		}
	}
	if !strings.Contains(st, "reason") || !strings.Contains(st, canary.Nodes[0]) || !strings.Contains(st, strconv.Itoa(port)) && !strings.Contains(st, "login") {
		t.Errorf("rollout status does not name the cause:\n%s", st)
	}
	if got := fmt.Sprint(bw.headscaleNodes()); got != hsBefore {
		t.Errorf("Headscale nodes changed by the failed rollout:\n%s\n->\n%s", hsBefore, got)
	}
	for node, c := range bw.talosApplied() {
		if c != talos1[node] {
			t.Errorf("Talos node %s: %d configs applied after the failed rollout, want %d", node, c, talos1[node])
		}
	}
	w.verifyHealthy(&outputs, "after the bad rollout was rolled back")
	t.Logf("bad change: canary %v %s, cause:\n%s", canary.Nodes, canary.Status, tailString(st, 1500))

	// 3. A change the node refuses: an invalid Talos patch.
	talos2 := bw.talosApplied()
	refused := bw.rolloutSpec(w, "fleet-refused", func(f *messages.Fleet) {
		for i := range f.Clusters {
			f.Clusters[i].Cluster.Talos.ConfigPatches = []string{goodPatch,
				"machine:\n  kubelet:\n    nodeIP:\n      validSubnets: [\"not-a-cidr\"]\n"}
		}
	})
	ro, code, raw = w.rollout(&outputs, "start", "-f", refused, "--json", "--max-parallel", "2", "--canary", "1",
		"--min-healthy", "1s", "--healthy-deadline", "20s", "--step-timeout", "20s")
	st, _ = cli(t, "rollout", "status", ro.ID, "--data-dir", w.data)
	outputs = append(outputs, st)
	if code != 1 || ro.Status != messages.RolloutRolledBack || len(ro.Batches) == 0 {
		t.Fatalf("refused rollout: exit %d\n%s\n%s\n%s", code, rolloutSummary(ro), st, raw)
	}
	if !strings.Contains(st, "not-a-cidr") {
		t.Errorf("rollout status does not name the refused patch:\n%s", st)
	}
	for node, c := range bw.talosApplied() {
		if c != talos2[node] {
			t.Errorf("Talos node %s: %d configs applied after the refused rollout, want %d", node, c, talos2[node])
		}
	}
	w.verifyHealthy(&outputs, "after the refused rollout")
	t.Logf("refused change: %s; canary %v %s", ro.Status, ro.Batches[0].Nodes, ro.Batches[0].Status)

	secrets := bw.secrets(w)
	texts := map[string]string{"controller log": w.ctl.log.String()}
	for name, p := range agents {
		texts["agent "+name+" log"] = p.log.String()
	}
	for i, o := range outputs {
		texts[fmt.Sprintf("CLI output #%d", i)] = o
	}
	w.ctl.kill()
	scanSecrets(t, secrets, w.data, texts)
}

// checkBatches: no batch over maxParallel nodes, batches of one cluster
// one after the other, the first batch a canary of 1, waves in order.
func checkBatches(t *testing.T, ro messages.Rollout, maxParallel int) {
	t.Helper()
	if len(ro.Batches) == 0 || len(ro.Batches[0].Nodes) != 1 {
		t.Errorf("no canary batch of 1 first:\n%s", rolloutSummary(ro))
	}
	waveOf := map[string]int{}
	for i, wv := range ro.Waves {
		for _, c := range wv.Clusters {
			waveOf[c] = i
		}
	}
	var prev *messages.RolloutBatch
	for i := range ro.Batches {
		b := &ro.Batches[i]
		if len(b.Nodes) > maxParallel {
			t.Errorf("batch %d updates %d nodes at once: %v", i+1, len(b.Nodes), b.Nodes)
		}
		if b.Started == nil || b.Finished == nil {
			t.Errorf("batch %d has no start or finish: %+v", i+1, b)
			continue
		}
		if prev != nil && prev.Finished != nil {
			if b.Started.Before(*prev.Finished) {
				t.Errorf("batch %d (%s) started %v before batch %d (%s) finished %v", i+1, b.Cluster, b.Started, i, prev.Cluster, prev.Finished)
			}
			if waveOf[b.Cluster] < waveOf[prev.Cluster] {
				t.Errorf("batch %d of wave %d after a batch of wave %d", i+1, waveOf[b.Cluster]+1, waveOf[prev.Cluster]+1)
			}
		}
		prev = b
	}
}
