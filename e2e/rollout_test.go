package e2e

// Rollouts end to end (#11): the bare world with 2 clusters set up first
// with `controller setup apply`, then changed fleet specs rolled out with
// the real CLI `controller rollout start -f FLEET.yaml --json ...` against
// a real controller process and one real agent process per node.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
	"tailscale.com/client/local"

	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
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

// tsPrefs is each node's tailscaled prefs that a login or its rollback
// would change (control URL, advertised routes, hostname, want running).
func (bw *bareWorld) tsPrefs() map[string]string {
	t := bw.t
	t.Helper()
	out := map[string]string{}
	for name, env := range bw.nodes {
		sock := env["TS_SOCKET"]
		if sock == "" {
			continue
		}
		lc := &local.Client{Socket: sock, UseSocketOnly: true}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := lc.GetPrefs(ctx)
		cancel()
		if err != nil {
			t.Fatalf("tailscaled prefs of %s: %v", name, err)
		}
		out[name] = fmt.Sprintf("control %s routes %v hostname %q running %t", p.ControlURL, p.AdvertiseRoutes, p.Hostname, p.WantRunning)
	}
	if len(out) == 0 {
		t.Fatal("no node has a TS_SOCKET")
	}
	return out
}

func closedPort(t *testing.T) int {
	t.Helper()
	return freeport.Get(t, 1)[0] // below the ephemeral range: no outgoing connection opens it either
}

const goodPatch = "machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n"

// TestRolloutBareWorldTwoClusters: bare world with 2 clusters, set up,
// then a good change (a Talos config patch) rolled out in batches of 2
// with a canary, a bad change (the login server on a closed port) that
// fails on the canary and is rolled back, and a change the node refuses
// (an invalid Talos patch) that is counted and rolled back.
func TestRolloutBareWorldTwoClusters(t *testing.T) {
	bw, w, agents := startBareFleet(t, 2)
	var outputs []string

	bw.setUp(w, &outputs)
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

	// 1b. Another good change: an extra advertised route on each cluster
	// (one of its own: a route two routers advertise is primary on one
	// only, and the other's routes_active step waits for it in vain).
	extraRoute := func(i int) string { return fmt.Sprintf("10.99.%d.0/24", i) }
	withRoute := func(f *messages.Fleet) {
		for i := range f.Clusters {
			f.Clusters[i].Cluster.Talos.ConfigPatches = []string{goodPatch}
			f.Clusters[i].Network.Routes = append(f.Clusters[i].Network.Routes, extraRoute(i))
		}
	}
	routed := bw.rolloutSpec(w, "fleet-route", withRoute)
	start = time.Now()
	ro, code, raw = w.rollout(&outputs, "start", "-f", routed, "--json", "--max-parallel", "2", "--canary", "1",
		"--min-healthy", "1s", "--healthy-deadline", "60s", "--step-timeout", "60s")
	t.Logf("good change (an extra route) on 2 clusters: %s, exit %d, in %v, %d batches", ro.Status, code, time.Since(start).Round(time.Millisecond), len(ro.Batches))
	if code != 0 || ro.Status != messages.RolloutSucceeded {
		st, _ := cli(t, "rollout", "status", ro.ID, "--data-dir", w.data)
		t.Fatalf("route rollout: exit %d\n%s\n%s\n%s", code, rolloutSummary(ro), st, raw)
	}
	checkBatches(t, ro, 2)
	routers := 0
	for name, p := range bw.tsPrefs() {
		if strings.Contains(name, "-r") {
			routers++
			if !strings.Contains(p, "10.99.") {
				t.Errorf("router %s does not advertise its 10.99.N.0/24 after the rollout: %s", name, p)
			}
		}
	}
	approved := 0
	for _, n := range bw.headscaleNodes() {
		if slices.Contains(n.Approved, extraRoute(0)) || slices.Contains(n.Approved, extraRoute(1)) {
			approved++
		}
	}
	if routers != 2 || approved != 2 {
		t.Errorf("10.99.N.0/24 advertised by %d routers, approved on %d Headscale nodes, want 2 and 2", routers, approved)
	}
	w.verifyHealthy(&outputs, "after the route rollout")
	diff, _ = cli(t, "rollout", "diff", fmt.Sprint(ro.FromRevision), fmt.Sprint(ro.ToRevision), "--data-dir", w.data)
	if !strings.Contains(diff, "network.routes") || !strings.Contains(diff, extraRoute(0)) || !strings.Contains(diff, extraRoute(1)) {
		t.Errorf("rollout diff %d %d does not show the route:\n%s", ro.FromRevision, ro.ToRevision, diff)
	}

	// 2. A bad change: the login server on a closed port.
	hsBefore := fmt.Sprint(bw.headscaleNodes())
	prefsBefore := bw.tsPrefs()
	talos1 := bw.talosApplied()
	port := closedPort(t)
	bad := bw.rolloutSpec(w, "fleet-bad-login", func(f *messages.Fleet) {
		withRoute(f)
		for i := range f.Clusters {
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
	var why struct {
		Reason    string                      `json:"reason"`
		Diagnoses []messages.RolloutDiagnosis `json:"diagnoses"`
	}
	if err := json.Unmarshal([]byte(raw), &why); err != nil || !strings.Contains(why.Reason, canary.Nodes[0]) ||
		len(why.Diagnoses) == 0 || why.Diagnoses[0].Node != canary.Nodes[0] || why.Diagnoses[0].Failure == "" {
		t.Errorf("rollout --json does not say why it stopped (%v): reason %q, diagnoses %+v", err, why.Reason, why.Diagnoses)
	} else if rc := why.Diagnoses[0].RootCause; strings.Contains(strings.ToLower(rc), "kubelet") {
		// The bare world has no kubelet: true, but no cause of a failed
		// tailnet login (a network change).
		t.Errorf("the canary's root cause %q is a cluster-layer finding, which cannot explain a network change", rc)
	}
	if got := fmt.Sprint(bw.headscaleNodes()); got != hsBefore {
		t.Errorf("Headscale nodes changed by the failed rollout:\n%s\n->\n%s", hsBefore, got)
	}
	prefsAfter := bw.tsPrefs()
	for node, p := range prefsBefore {
		// The canary was rolled back: its prefs are as before too.
		if prefsAfter[node] != p {
			t.Errorf("tailscaled prefs of %s changed by the failed rollout: %s -> %s", node, p, prefsAfter[node])
		}
	}
	t.Logf("tailscaled prefs of %d nodes as before the failed rollout (the canary's restored)", len(prefsBefore))
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
		withRoute(f)
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
	if !strings.Contains(st, "not-a-cidr") || !strings.Contains(st, "1 node(s) failed, budget --max-failed 0") {
		t.Errorf("rollout status does not name the refused patch:\n%s", st)
	}
	for node, c := range bw.talosApplied() {
		if c != talos2[node] {
			t.Errorf("Talos node %s: %d configs applied after the refused rollout, want %d", node, c, talos2[node])
		}
	}
	w.verifyHealthy(&outputs, "after the refused rollout")
	t.Logf("refused change: %s; canary %v %s", ro.Status, ro.Batches[0].Nodes, ro.Batches[0].Status)

	bw.scanWorldSecrets(w, agents, outputs, nil)
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

// sysctlPatch is a valid Talos patch whose value v makes each a new spec.
func sysctlPatch(v int) string {
	return fmt.Sprintf("machine:\n  sysctls:\n    net.core.somaxconn: \"%d\"\n", v)
}

// rolloutWhen polls `rollout status ID --json` until cond holds.
func (w *world) rolloutWhen(outputs *[]string, id, what string, d time.Duration, cond func(messages.Rollout) bool) messages.Rollout {
	w.t.Helper()
	var ro messages.Rollout
	poll.Until(w.t, d, what, func() bool {
		ro, _, _ = w.rollout(outputs, "status", id, "--json")
		return ro.ID == id && cond(ro)
	})
	return ro
}

func startedBatches(ro messages.Rollout) int {
	n := 0
	for _, b := range ro.Batches {
		if b.Started != nil {
			n++
		}
	}
	return n
}

// TestRolloutBareWorldControl, on its own bare world with 2 clusters set
// up: pause then resume; a second rollout while one holds the nodes is
// refused naming it; abort mid-batch; kill -9 of the controller
// mid-batch, restarted on the same data dir, finishes with every Talos
// node's config applied exactly once.
func TestRolloutBareWorldControl(t *testing.T) {
	bw, w, agents := startBareFleet(t, 2)
	var outputs []string
	bw.setUp(w, &outputs)
	spec := func(name string, v int) string {
		return bw.rolloutSpec(w, name, func(f *messages.Fleet) {
			for i := range f.Clusters {
				f.Clusters[i].Cluster.Talos.ConfigPatches = []string{sysctlPatch(v)}
			}
		})
	}
	detach := func(file, minHealthy string) string {
		t.Helper()
		out, code := cli(t, "rollout", "start", "-f", file, "--detach", "--max-parallel", "2", "--canary", "1",
			"--min-healthy", minHealthy, "--healthy-deadline", "60s", "--step-timeout", "60s", "--data-dir", w.data)
		outputs = append(outputs, out)
		// "rollout ID started: ..."
		f := strings.Fields(out)
		id := ""
		if len(f) > 1 && f[0] == "rollout" {
			id = f[1]
		}
		if code != 0 || !strings.HasPrefix(id, "r") {
			t.Fatalf("rollout start --detach: exit %d, %q", code, out)
		}
		return id
	}
	ctl := func(verb, id string) {
		t.Helper()
		out, code := cli(t, "rollout", verb, id, "--data-dir", w.data)
		outputs = append(outputs, out)
		if code != 0 {
			t.Fatalf("rollout %s %s: exit %d\n%s", verb, id, code, out)
		}
	}

	// Pause then resume; a second rollout meanwhile is refused naming it.
	talos0 := bw.talosApplied()
	id := detach(spec("fleet-pause", 1001), "2s")
	w.rolloutWhen(&outputs, id, "the canary batch started", time.Minute, func(ro messages.Rollout) bool { return startedBatches(ro) >= 1 })
	ctl("pause", id)
	ro := w.rolloutWhen(&outputs, id, "paused", time.Minute, func(ro messages.Rollout) bool { return ro.Status == messages.RolloutPaused })
	startedAtPause := startedBatches(ro)
	if startedAtPause == len(ro.Batches) {
		t.Fatalf("paused only after the last batch:\n%s", rolloutSummary(ro))
	}
	for _, b := range ro.Batches[:startedAtPause] {
		if b.Status != messages.BatchHealthy {
			t.Errorf("paused with a batch %s, want the running one gated first:\n%s", b.Status, rolloutSummary(ro))
		}
	}
	stdout, stderr := cliStderr(t, "rollout", "start", "-f", spec("fleet-overlap", 1002), "--detach", "--data-dir", w.data)
	outputs = append(outputs, stdout, stderr)
	if !strings.Contains(stderr+stdout, id) {
		t.Errorf("a second rollout while %s is paused: not refused naming it: %q %q", id, stdout, stderr)
	}
	if ro2, _, _ := w.rollout(&outputs, "status", id, "--json"); startedBatches(ro2) != startedAtPause || ro2.Status != messages.RolloutPaused {
		t.Errorf("the paused rollout moved on:\n%s", rolloutSummary(ro2))
	}
	ctl("resume", id)
	ro = w.rolloutWhen(&outputs, id, "resumed and done", 3*time.Minute, func(ro messages.Rollout) bool {
		return ro.Status != messages.RolloutRunning && ro.Status != messages.RolloutPaused
	})
	if ro.Status != messages.RolloutSucceeded {
		t.Fatalf("resumed rollout:\n%s", rolloutSummary(ro))
	}
	checkBatches(t, ro, 2)
	for node, c := range bw.talosApplied() {
		if c != talos0[node]+1 {
			t.Errorf("after pause/resume, Talos node %s: %d configs applied, want %d", node, c, talos0[node]+1)
		}
	}
	t.Logf("pause after batch %d of %d, overlapping start refused (%s), resume: %s", startedAtPause, len(ro.Batches), strings.TrimSpace(stderr), ro.Status)

	// Abort mid-batch.
	talosA := bw.talosApplied()
	id = detach(spec("fleet-abort", 1003), "4s")
	w.rolloutWhen(&outputs, id, "batch 2 under way", 2*time.Minute, func(ro messages.Rollout) bool {
		return len(ro.Batches) > 2 && ro.Batches[1].Started != nil && ro.Batches[1].Finished == nil
	})
	ctl("abort", id)
	ro = w.rolloutWhen(&outputs, id, "aborted", 2*time.Minute, func(ro messages.Rollout) bool {
		return ro.Status != messages.RolloutRunning
	})
	if ro.Status != messages.RolloutAborted || ro.Batches[0].Status != messages.BatchHealthy ||
		(ro.Batches[1].Status != messages.BatchAborted && ro.Batches[1].Status != messages.BatchRolledBack) {
		t.Errorf("aborted mid-batch 2:\n%s", rolloutSummary(ro))
	}
	for i, b := range ro.Batches[2:] {
		if b.Started != nil {
			t.Errorf("batch %d started after the abort:\n%s", i+3, rolloutSummary(ro))
		}
	}
	// Batch 1 keeps the change, batch 2 was rolled back (applied, then the
	// previous revision applied again), the rest untouched.
	gotA := bw.talosApplied()
	for i, b := range ro.Batches {
		for _, n := range b.Nodes {
			c, ok := gotA[n]
			if !ok {
				continue // not a Talos node
			}
			want := []int{talosA[n]}
			switch {
			case i == 0:
				want = []int{talosA[n] + 1}
			case i == 1:
				want = []int{talosA[n], talosA[n] + 2}
			}
			if !slices.Contains(want, c) {
				t.Errorf("after the abort, Talos node %s of batch %d: %d configs applied, want one of %v", n, i+1, c, want)
			}
		}
	}
	w.verifyHealthy(&outputs, "after the abort")
	t.Logf("abort mid-batch 2: %s, batch 2 %s", ro.Status, ro.Batches[1].Status)

	// kill -9 of the controller mid-batch, restarted on the same data dir.
	talos1 := bw.talosApplied()
	id = detach(spec("fleet-kill", 1004), "3s")
	w.rolloutWhen(&outputs, id, "batch 2 under way", 2*time.Minute, func(ro messages.Rollout) bool {
		return len(ro.Batches) > 2 && ro.Batches[1].Started != nil && ro.Batches[1].Finished == nil
	})
	w.ctl.kill()
	killedLog := w.ctl.log.String()
	w.startController()
	ro = w.rolloutWhen(&outputs, id, "resumed after kill -9 and done", 3*time.Minute, func(ro messages.Rollout) bool {
		return ro.Status != messages.RolloutRunning
	})
	if ro.Status != messages.RolloutSucceeded {
		st, _ := cli(t, "rollout", "status", id, "--data-dir", w.data)
		t.Fatalf("rollout after kill -9:\n%s\n%s", rolloutSummary(ro), st)
	}
	checkBatches(t, ro, 2)
	for node, c := range bw.talosApplied() {
		// The aborted batch's nodes were applied and rolled back (+2); every
		// node exactly once more for this rollout.
		if c != talos1[node]+1 {
			t.Errorf("after kill -9 and restart, Talos node %s: %d configs applied, want %d (exactly once)", node, c, talos1[node]+1)
		}
	}
	w.verifyHealthy(&outputs, "after the rollout resumed from kill -9")
	t.Logf("kill -9 mid-batch 2, restarted: %s, every Talos node applied exactly once", ro.Status)

	bw.scanWorldSecrets(w, agents, outputs, map[string]string{"killed controller log": killedLog})
}
