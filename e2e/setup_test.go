package e2e

// Setup end to end (#10): a bare test world (hack/testworld --bare: real
// kube-apiservers with a live control plane, Headscale, a real tailscaled
// per node in its own loopback-only namespace, Talos/RethinkDB/host-app
// stand-ins), a real controller process and one real agent process per
// node started from DIR/nodes/NAME/env, driven only through the
// `controller setup` CLI.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// bareWorld is a `testworld up --bare` world.
type bareWorld struct {
	t     *testing.T
	dir   string
	env   map[string]string // DIR/env
	fleet string
	nodes map[string]map[string]string // DIR/nodes/NAME/env
	key   string                       // the Headscale API key (a secret)
}

func startBareWorld(t *testing.T, clusters int) *bareWorld {
	t.Helper()
	testenv.Require(t, testenv.NeedKube, testenv.NeedControlPlane, testenv.NeedHeadscale, testenv.NeedTailscaled)
	if os.Geteuid() != 0 {
		// The world puts each tailscaled in its own loopback-only network
		// namespace; the test itself runs on the host, as agents do.
		testenv.Skip(t, "the bare world's tailscaleds need root for their network namespaces")
	}
	bw := &bareWorld{t: t, dir: filepath.Join(t.TempDir(), "world"), nodes: map[string]map[string]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, filepath.Join(binDir, "testworld"), "up", "--dir", bw.dir, "--bare", "--clusters", fmt.Sprint(clusters))
	out, err := up.CombinedOutput()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(bw.dir, "testworld.log"))
			t.Logf("--- testworld.log (last 6 KiB):\n%s", tailString(string(b), 6<<10))
		}
		down := exec.Command(filepath.Join(binDir, "testworld"), "down", "--dir", bw.dir)
		if b, err := down.CombinedOutput(); err != nil {
			t.Logf("testworld down: %v\n%s", err, b)
		}
	})
	if err != nil {
		t.Fatalf("testworld up --bare: %v\n%s", err, out)
	}
	bw.env = readEnvFile(t, filepath.Join(bw.dir, "env"))
	bw.fleet = filepath.Join(bw.dir, "fleet.yaml")
	ents, err := os.ReadDir(filepath.Join(bw.dir, "nodes"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		bw.nodes[e.Name()] = readEnvFile(t, filepath.Join(bw.dir, "nodes", e.Name(), "env"))
	}
	b, err := os.ReadFile(filepath.Join(bw.dir, "secrets", "headscale-api-key"))
	if err != nil {
		t.Fatal(err)
	}
	bw.key = strings.TrimSpace(string(b))
	return bw
}

// readEnvFile reads NAME='value' lines as the world writes them.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(strings.TrimPrefix(sc.Text(), "export "))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2 {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, `'`)
		}
		out[k] = v
	}
	return out
}

// startBareFleet starts a bare world of clusters, a controller process
// and one agent process per node of the world, enrolled with it.
func startBareFleet(t *testing.T, clusters int) (*bareWorld, *world, map[string]*proc) {
	t.Helper()
	bw := startBareWorld(t, clusters)
	w := newWorld(t)
	return bw, w, bw.startAgents(w, w.token())
}

// setUp applies the world's fleet spec with `setup apply` and fails the
// test unless the run succeeded.
func (bw *bareWorld) setUp(w *world, outputs *[]string) {
	w.t.Helper()
	out, code := w.setup(outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	if run := decodeRun(w.t, out); code != 0 || run.Status != messages.RunSucceeded {
		w.t.Fatalf("setup apply: exit %d\n%s", code, runSummary(run))
	}
}

// startAgents runs one agent process per node of the world, each with its
// node's env file as its environment (as `set -a; . env; set +a` would).
func (bw *bareWorld) startAgents(w *world, token string) map[string]*proc {
	t := bw.t
	t.Helper()
	file := filepath.Join(w.dir, "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ps := map[string]*proc{}
	for name, env := range bw.nodes {
		var extra []string
		for k, v := range env {
			extra = append(extra, k+"="+v)
		}
		ps[name] = startEnv(t, extra, "agent", "run", "--controller", w.url, "--token-file", file,
			"--state-dir", filepath.Join(w.dir, "agents", name))
	}
	poll.Until(t, 60*time.Second, "every agent online", func() bool {
		return w.status().Summary["online"] == len(bw.nodes)
	})
	return ps
}

// startEnv is start with extra environment.
func startEnv(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(append(os.Environ(), "METAGN_LOG_FORMAT=console"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, log: buf}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s %s log (last 4 KiB):\n%s", bin, strings.Join(args, " "), tailString(buf.String(), 4096))
		}
	})
	return p
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// setupCLI runs `controller setup ...` and keeps its output for the
// secrets scan.
func (w *world) setup(outputs *[]string, args ...string) (string, int) {
	w.t.Helper()
	out, code := cli(w.t, append(append([]string{"setup"}, args...), "--data-dir", w.data)...)
	*outputs = append(*outputs, out)
	return out, code
}

func decodeRun(t *testing.T, out string) messages.SetupRun {
	t.Helper()
	var run messages.SetupRun
	if err := json.Unmarshal([]byte(out), &run); err != nil {
		t.Fatalf("setup JSON: %v\n%s", err, out)
	}
	// Nothing twice: one row per step and node in a run.
	seen := map[string]bool{}
	for _, l := range run.Layers {
		for _, s := range l.Steps {
			k := s.Cluster + "/" + s.Name + "@" + s.Node
			if seen[k] && s.Outcome != "undone" && s.Outcome != "undo_failed" {
				t.Errorf("run %s has two rows for %s\n%s", run.RunID, k, runSummary(run))
			}
			seen[k] = true
		}
	}
	return run
}

func runSummary(run messages.SetupRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s %s\n", run.RunID, run.Status)
	for _, l := range run.Layers {
		fmt.Fprintf(&b, "  %s %s %s\n", l.Name, l.Status, l.Verification)
		for _, s := range l.Steps {
			if s.Action != messages.ActionUnchanged || s.Error != "" {
				fmt.Fprintf(&b, "    %s %s %s %s/%s attempts %d %s\n", s.Cluster, s.Name, s.Node, s.Action, s.Outcome, s.Attempts, s.Error)
			}
		}
	}
	return b.String()
}

// changedSteps are "cluster/step" of a plan's rows that are not unchanged.
func changedSteps(t *testing.T, out string) []string {
	t.Helper()
	var p messages.SetupPlanReply
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan JSON: %v\n%s", err, out)
	}
	var ch []string
	for _, row := range p.Rows {
		if row.Action != messages.ActionUnchanged {
			ch = append(ch, row.Cluster+"/"+row.Step+" "+row.Action)
		}
	}
	sort.Strings(ch)
	return slices.Compact(ch)
}

// --- what the world holds, to show an apply wrote nothing ---

func (bw *bareWorld) kube(cluster string) dynamic.Interface {
	bw.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", bw.env["KUBECONFIG_"+strings.ToUpper(cluster)])
	if err != nil {
		bw.t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		bw.t.Fatal(err)
	}
	return dyn
}

var (
	gvrPool = schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	// the objects setup keeps in a cluster
	setupObjects = []struct {
		gvr      schema.GroupVersionResource
		ns, name string
	}{
		{schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", "guildnet-system"},
		{schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", "metallb-system"},
		{schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, "", "workspaces.guildnet.io"},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "metallb-system", "controller"},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, "metallb-system", "speaker"},
		{gvrPool, "metallb-system", "workspaces"},
		{schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "l2advertisements"}, "metallb-system", "workspaces-l2"},
		{schema.GroupVersionResource{Version: "v1", Resource: "services"}, "default", "rethinkdb"},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}, "default", "rethinkdb"},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "guildnet-system", "workspace-operator"},
	}
)

// written is a fingerprint of what setup wrote: per object its
// generation and the time of metaguildnet's last apply (controllers move
// resourceVersions of workloads through status, setup does not), the
// resourceVersion of objects no controller writes, each Headscale node's
// id, each Talos node's count of applied configs, each cluster's
// RethinkDB databases.
func (bw *bareWorld) written(clusters ...string) map[string]string {
	t := bw.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fp := map[string]string{}
	for _, c := range clusters {
		dyn := bw.kube(c)
		for _, o := range setupObjects {
			var u *unstructured.Unstructured
			var err error
			if o.ns != "" {
				u, err = dyn.Resource(o.gvr).Namespace(o.ns).Get(ctx, o.name, metav1.GetOptions{})
			} else {
				u, err = dyn.Resource(o.gvr).Get(ctx, o.name, metav1.GetOptions{})
			}
			key := c + " " + o.gvr.Resource + " " + o.ns + "/" + o.name
			if err != nil {
				fp[key] = "error: " + err.Error()
				continue
			}
			var applied []string
			for _, mf := range u.GetManagedFields() {
				if mf.Manager == "metaguildnet" && mf.Time != nil {
					applied = append(applied, string(mf.Operation)+"@"+mf.Time.UTC().Format(time.RFC3339))
				}
			}
			v := fmt.Sprintf("uid %s gen %d applied %v", u.GetUID(), u.GetGeneration(), applied)
			switch o.gvr.Resource {
			case "namespaces", "ipaddresspools", "l2advertisements", "services":
				v += " rv " + u.GetResourceVersion()
			}
			fp[key] = v
		}
		s, err := r.Connect(r.ConnectOpts{Address: bw.env["RETHINKDB_ADDR_"+strings.ToUpper(c)], Username: "admin", Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var dbs []string
		cur, err := r.DBList().Run(s)
		if err == nil {
			err = cur.All(&dbs)
		}
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(dbs)
		fp[c+" rethinkdb databases"] = strings.Join(dbs, ",")
	}
	for _, n := range bw.headscaleNodes() {
		fp["headscale node "+n.Name] = fmt.Sprintf("id %v user %v approved %v", n.ID, n.User, n.Approved)
	}
	for _, n := range bw.talos() {
		fp["talos "+n.Node] = fmt.Sprintf("%s applied %d bootstrapped %t", n.State, n.AppliedConfigs, n.Bootstrapped)
	}
	return fp
}

type hsNode struct {
	ID       any
	Name     string
	User     string
	Approved []string
}

func (bw *bareWorld) headscale(method, path string, body any, out any) {
	t := bw.t
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, bw.env["HEADSCALE_URL"]+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bw.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 {
		t.Fatalf("headscale %s %s: %s", method, path, resp.Status) // no body: it could echo the key
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

func (bw *bareWorld) headscaleNodes() []hsNode {
	var out struct {
		Nodes []struct {
			ID             any      `json:"id"`
			Name           string   `json:"name"`
			GivenName      string   `json:"givenName"`
			ApprovedRoutes []string `json:"approvedRoutes"`
			User           struct {
				Name string `json:"name"`
			} `json:"user"`
		} `json:"nodes"`
	}
	bw.headscale(http.MethodGet, "/api/v1/node", nil, &out)
	var ns []hsNode
	for _, n := range out.Nodes {
		ns = append(ns, hsNode{ID: n.ID, Name: n.GivenName, User: n.User.Name, Approved: n.ApprovedRoutes})
	}
	return ns
}

type talosStat struct {
	Node           string `json:"node"`
	Cluster        string `json:"cluster"`
	State          string `json:"state"`
	AppliedConfigs int    `json:"applied_configs"`
	Bootstrapped   bool   `json:"bootstrapped"`
}

func (bw *bareWorld) talos() []talosStat {
	t := bw.t
	t.Helper()
	resp, err := http.Get(bw.env["TESTWORLD_CONTROL"] + "/talos")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []talosStat
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (bw *bareWorld) talosRefusing(node string, on bool) {
	t := bw.t
	t.Helper()
	u := fmt.Sprintf("%s/talos/refusing?on=%t&node=%s", bw.env["TESTWORLD_CONTROL"], on, node)
	resp, err := http.Post(u, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("talos refusing knob: %s", resp.Status)
	}
}

func diffMaps(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, fmt.Sprintf("%s: %q -> %q", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("%s: new %q", k, v))
		}
	}
	sort.Strings(d)
	return d
}

// secrets are the values that must never leave where they live: the
// Headscale API key, the pre-auth keys setup made, the kubeconfigs'
// and talosconfigs' keys and tokens the controller keeps.
func (bw *bareWorld) secrets(w *world) []string {
	t := bw.t
	t.Helper()
	out := []string{bw.key}
	var keys struct {
		PreAuthKeys []struct {
			Key string `json:"key"`
		} `json:"preAuthKeys"`
	}
	bw.headscale(http.MethodGet, "/api/v1/preauthkey", nil, &keys)
	for _, k := range keys.PreAuthKeys {
		if len(k.Key) >= 16 {
			out = append(out, k.Key)
		}
	}
	filepath.WalkDir(filepath.Join(w.data, "secrets"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		for line := range strings.Lines(string(b)) {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			v = strings.Trim(strings.TrimSpace(v), `"`)
			if ok && len(v) >= 24 && (strings.Contains(k, "key") || strings.Contains(k, "token") || strings.Contains(k, "secret")) &&
				!strings.Contains(k, "certificate") && !strings.HasPrefix(k, "ca") {
				out = append(out, v)
			}
		}
		return nil
	})
	if len(out) < 3 {
		t.Fatalf("secrets to look for: only %d found (API key, pre-auth keys, kubeconfig/talosconfig keys)", len(out))
	}
	return out
}

// scanWorldSecrets kills the controller process (it writes nothing more
// while scanned), then scans its log, the agents' logs, every CLI output,
// the extra texts and its data dir for the world's secrets; it returns how
// many secrets and texts it scanned.
func (bw *bareWorld) scanWorldSecrets(w *world, agents map[string]*proc, outputs []string, extra map[string]string) (secrets, texts int) {
	w.t.Helper()
	secretList := bw.secrets(w)
	textMap := map[string]string{"controller log": w.ctl.log.String()}
	maps.Copy(textMap, extra)
	for name, p := range agents {
		textMap["agent "+name+" log"] = p.log.String()
	}
	for i, o := range outputs {
		textMap[fmt.Sprintf("CLI output #%d", i)] = o
	}
	w.ctl.kill()
	scanSecrets(w.t, secretList, w.data, textMap)
	return len(secretList), len(textMap)
}

// scanSecrets fails if a secret is in any CLI output, process log, or file
// of the controller's data dir but its secrets dir (JetStream's store:
// KV buckets, streams, reports).
func scanSecrets(t *testing.T, secrets []string, dataDir string, texts map[string]string) {
	t.Helper()
	for where, s := range texts {
		for i, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("secret #%d is in %s", i, where)
			}
		}
	}
	files := 0
	filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "secrets" {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		files++
		for i, sec := range secrets {
			if bytes.Contains(b, []byte(sec)) {
				t.Errorf("secret #%d is in %s", i, p)
			}
		}
		return nil
	})
	if files == 0 {
		t.Errorf("no file scanned in %s", dataDir)
	}
}

// TestSetupBareWorldTwoClusters: bare world with 2 clusters -> setup
// apply -> verify healthy on every layer of both clusters -> a second
// apply changes nothing -> three things broken -> plan shows exactly
// those -> apply repairs them; an invalid spec is refused with FILE:LINE
// before anything; no secret anywhere it must not be.
func TestSetupBareWorldTwoClusters(t *testing.T) {
	bw, w, agents := startBareFleet(t, 2)
	var outputs []string

	// An invalid spec: FILE:LINE, nothing applied, no run.
	bad := filepath.Join(w.dir, "bad.yaml")
	b, _ := os.ReadFile(bw.fleet)
	os.WriteFile(bad, bytes.Replace(b, []byte("role: worker"), []byte("role: boss"), 1), 0o600)
	out, code := w.setup(&outputs, "apply", "-f", bad, "--yes", "--json")
	_, errOut := cliStderr(t, "setup", "apply", "-f", bad, "--yes", "--data-dir", w.data)
	if code == 0 || !strings.Contains(errOut, bad+":") || !strings.Contains(errOut, "role") {
		t.Fatalf("invalid spec: exit %d, stderr %q, stdout %q", code, errOut, out)
	}
	if out, _ := w.setup(&outputs, "status", "--json"); strings.Contains(out, "run_id") {
		t.Fatalf("a run exists after an invalid spec: %s", out)
	}
	if len(bw.headscaleNodes()) != 0 {
		t.Fatal("Headscale has nodes after an invalid spec")
	}

	// Plan on bare: every step of every node to be made, none blocked.
	out, code = w.setup(&outputs, "plan", "-f", bw.fleet, "--json")
	var plan messages.SetupPlanReply
	if err := json.Unmarshal([]byte(out), &plan); err != nil || code != 0 || len(plan.Rows) == 0 {
		t.Fatalf("plan on bare: exit %d, %v\n%s", code, err, out)
	}
	for _, row := range plan.Rows {
		if row.Action != messages.ActionCreate && row.Action != messages.ActionUpdate {
			t.Errorf("plan on bare: %s/%s on %s: %s %s%s", row.Cluster, row.Step, row.Node, row.Action, row.Blocked, row.Error)
		}
	}
	t.Logf("plan on bare: %d rows, all create or update", len(plan.Rows))

	// Apply on bare: succeeded, every layer verified.
	start := time.Now()
	out, code = w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	run := decodeRun(t, out)
	t.Logf("setup of 2 bare clusters (7 nodes): %s in %v", run.Status, time.Since(start).Round(time.Millisecond))
	if code != 0 || run.Status != messages.RunSucceeded || len(run.Layers) != 4 {
		for _, c := range []string{"alpha", "beta"} {
			vout, _ := cli(t, "verify", "--data-dir", w.data, "--cluster", c, "--layer", "network,cluster,database,application")
			t.Logf("verify %s after the failed apply:\n%s", c, tailString(vout, 4000))
		}
		t.Fatalf("apply: exit %d\n%s", code, runSummary(run))
	}
	for _, l := range run.Layers {
		if l.Status != "verified" || !strings.Contains(string(l.Verification), `"alpha"`) || !strings.Contains(string(l.Verification), `"beta"`) {
			t.Errorf("layer %s: %s %s", l.Name, l.Status, l.Verification)
		}
	}
	// verify, as an operator would: healthy on every setup layer of both.
	for _, c := range []string{"alpha", "beta"} {
		vout, vcode := cli(t, "verify", "--data-dir", w.data, "--cluster", c, "--layer", "network,cluster,database", "--json")
		outputs = append(outputs, vout)
		if vcode != 0 || !strings.Contains(vout, `"status": "healthy"`) && !strings.Contains(vout, `"status":"healthy"`) {
			t.Errorf("verify %s: exit %d\n%s", c, vcode, tailString(vout, 3000))
		}
	}

	// A second apply: every step unchanged, nothing written.
	before := bw.written("alpha", "beta")
	out, code = w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	again := decodeRun(t, out)
	if code != 0 || again.Status != messages.RunSucceeded {
		t.Fatalf("second apply: exit %d\n%s", code, runSummary(again))
	}
	steps := 0
	for _, l := range again.Layers {
		for _, s := range l.Steps {
			steps++
			if s.Action != messages.ActionUnchanged {
				t.Errorf("second apply: %s on %s/%s: %s/%s", s.Name, s.Cluster, s.Node, s.Action, s.Outcome)
			}
		}
	}
	if d := diffMaps(before, bw.written("alpha", "beta")); len(d) > 0 {
		t.Fatalf("the second apply wrote:\n%s", strings.Join(d, "\n"))
	}
	t.Logf("second apply: %d steps unchanged, %d fingerprints (resourceVersions/applies, Headscale node ids, Talos config counts, databases) identical", steps, len(before))

	// Break three things: the MetalLB pool of alpha, beta's database, the
	// approval of alpha's router.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bw.kube("alpha").Resource(gvrPool).Namespace("metallb-system").Delete(ctx, "workspaces", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := r.Connect(r.ConnectOpts{Address: bw.env["RETHINKDB_ADDR_BETA"], Username: "admin", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.DBDrop("org_demo__main").RunWrite(s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var routerID any
	for _, n := range bw.headscaleNodes() {
		if n.Name == "guildnet-router-alpha" {
			routerID = n.ID
		}
	}
	if routerID == nil {
		t.Fatal("no Headscale node guildnet-router-alpha")
	}
	bw.headscale(http.MethodPost, fmt.Sprintf("/api/v1/node/%v/approve_routes", routerID), map[string]any{"routes": []string{}}, nil)

	out, _ = w.setup(&outputs, "plan", "-f", bw.fleet, "--json")
	got := changedSteps(t, out)
	want := []string{"alpha/metallb create", "alpha/routes_approved update", "beta/rethinkdb_databases create"} // the pool is created again
	extra := slices.DeleteFunc(slices.Clone(got), func(s string) bool {
		return slices.Contains(want, s) || strings.HasPrefix(s, "alpha/routes_active ") // the router's status follows the approval
	})
	for _, wnt := range want {
		if !slices.Contains(got, wnt) {
			extra = append(extra, "missing: "+wnt)
		}
	}
	if len(extra) > 0 {
		t.Fatalf("plan after breaking three things: %v\nwant %v (and alpha/routes_active)", got, want)
	}
	t.Logf("plan after breaking the pool, a database and a route approval: %v", got)
	out, code = w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	fix := decodeRun(t, out)
	if code != 0 || fix.Status != messages.RunSucceeded {
		t.Fatalf("repair: exit %d\n%s", code, runSummary(fix))
	}
	if out, _ := w.setup(&outputs, "plan", "-f", bw.fleet, "--json"); len(changedSteps(t, out)) != 0 {
		t.Fatalf("plan after the repair: %v", changedSteps(t, out))
	}

	// Secrets: never in CLI output, logs, the JetStream store or reports.
	secrets, texts := bw.scanWorldSecrets(w, agents, outputs, nil)
	t.Logf("secrets scan: %d secrets, %d texts, controller data dir", secrets, texts)
}

// cliStderr runs a controller command and returns stdout and stderr.
func cliStderr(t *testing.T, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "controller"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	_ = cmd.Run()
	return out.String(), errb.String()
}

// setupStatus is the newest run, read through the CLI.
func (w *world) setupStatus(outputs *[]string) (messages.SetupRun, bool) {
	out, code := cli(w.t, "setup", "status", "--json", "--data-dir", w.data)
	*outputs = append(*outputs, out)
	if code != 0 && code != 1 {
		return messages.SetupRun{}, false
	}
	var run messages.SetupRun
	if json.Unmarshal([]byte(out), &run) != nil || run.RunID == "" {
		return messages.SetupRun{}, false
	}
	return run, true
}

func stepRows(run messages.SetupRun, name string) []messages.SetupStep {
	var out []messages.SetupStep
	for _, l := range run.Layers {
		for _, s := range l.Steps {
			if s.Name == name {
				out = append(out, s)
			}
		}
	}
	return out
}

// TestSetupBareWorldKilledAndRefused, on a separately started one-cluster
// bare world: kill -9 of the controller in the middle of the network
// layer -> restarted on the same data dir, the run resumes and finishes,
// nothing done twice (one Headscale node per machine); then the Talos
// apid of one node refusing (the world's fault knob) -> attempts and
// backoff in the run, the cluster layer rolled back and reported, the
// network layer left verified; the knob off -> apply succeeds without
// applying any Talos config a second time.
func TestSetupBareWorldKilledAndRefused(t *testing.T) {
	bw, w, agents := startBareFleet(t, 1)
	var outputs []string

	// kill -9 mid-apply.
	apply := exec.Command(filepath.Join(binDir, "controller"), "setup", "apply", "-f", bw.fleet, "--layer", "network", "--yes", "--json", "--data-dir", w.data)
	applyOut := &syncBuffer{}
	apply.Stdout, apply.Stderr = applyOut, applyOut
	if err := apply.Start(); err != nil {
		t.Fatal(err)
	}
	var runID string
	poll.Until(t, 60*time.Second, "the network layer under way (headscale_user applied, logins running)", func() bool {
		run, ok := w.setupStatus(&outputs)
		if !ok || run.Status != "running" {
			return false
		}
		for _, s := range stepRows(run, "headscale_user") {
			if s.Outcome == "applied" {
				runID = run.RunID
				return true
			}
		}
		return false
	})
	w.ctl.kill()
	t.Logf("controller killed (-9) during run %s", runID)
	killedLog := w.ctl.log.String()
	w.startController() // same data dir, same address
	var run messages.SetupRun
	poll.Until(t, 3*time.Minute, "the resumed run finished", func() bool {
		var ok bool
		run, ok = w.setupStatus(&outputs)
		return ok && run.RunID == runID && run.Status != "running"
	})
	// The apply CLI that lost its controller follows the run again once it
	// is back, or is stopped here.
	cliDone := make(chan error, 1)
	go func() { cliDone <- apply.Wait() }()
	select {
	case err := <-cliDone:
		t.Logf("the apply CLI that lost its controller ended: %v", err)
	case <-time.After(15 * time.Second):
		t.Logf("the apply CLI that lost its controller was still waiting 15 s after the run finished; stopped")
		apply.Process.Kill()
		<-cliDone
	}
	outputs = append(outputs, applyOut.String())
	if run.Status != messages.RunSucceeded {
		t.Fatalf("resumed run: %s", runSummary(run))
	}
	seen := map[string]int{}
	for _, n := range bw.headscaleNodes() {
		seen[n.Name]++
	}
	if len(seen) != len(bw.nodes) {
		t.Errorf("Headscale nodes after the resumed run: %v, want one per machine (%d)", seen, len(bw.nodes))
	}
	for name, c := range seen {
		if c != 1 {
			t.Errorf("Headscale node %s registered %d times", name, c)
		}
	}
	for _, s := range stepRows(run, "tailscale_login") {
		if s.Outcome != "applied" && s.Outcome != "unchanged" {
			t.Errorf("tailscale_login on %s after the resume: %s/%s %s", s.Node, s.Action, s.Outcome, s.Error)
		}
	}
	t.Logf("resumed after kill -9: %s; Headscale nodes %v", run.Status, seen)

	// Talos apid of alpha-w1 refusing: retried with backoff, then the
	// cluster layer rolled back.
	bw.talosRefusing("alpha-w1", true)
	start := time.Now()
	out, code := w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	failed := decodeRun(t, out)
	t.Logf("apply with alpha-w1's apid refusing: %s, exit %d, in %v", failed.Status, code, time.Since(start).Round(time.Millisecond))
	if code == 0 || failed.Status == messages.RunSucceeded {
		t.Fatalf("apply with a refusing apid: exit %d\n%s", code, runSummary(failed))
	}
	layers := map[string]string{}
	for _, l := range failed.Layers {
		layers[l.Name] = l.Status
	}
	if layers["network"] != "verified" || layers["cluster"] != "rolled_back" {
		t.Errorf("layers after the refusal: %v, want network verified, cluster rolled_back\n%s", layers, runSummary(failed))
	}
	var w1 *messages.SetupStep
	undone := 0
	for _, s := range stepRows(failed, "talos_machine_config") {
		if s.Node == "alpha-w1" {
			w1 = &s
		} else if s.Outcome == "undone" {
			undone++
		}
	}
	if w1 == nil || w1.Attempts != 3 || !strings.Contains(w1.Error, "after 3 attempts, backoff") || !strings.Contains(w1.Error, "refused") {
		t.Fatalf("talos_machine_config on alpha-w1: %+v, want 3 attempts and the backoff waited\n%s", w1, runSummary(failed))
	}
	if undone != 2 {
		t.Errorf("talos_machine_config undone on %d nodes, want 2 (alpha-cp1, alpha-r1)\n%s", undone, runSummary(failed))
	}
	t.Logf("refused: %s (attempts %d); %d completed steps of the layer undone", w1.Error, w1.Attempts, undone)
	if st, _ := w.setup(&outputs, "status"); !strings.Contains(st, "rolled_back") && !strings.Contains(st, "rolled back") {
		t.Errorf("setup status does not report the rollback:\n%s", st)
	}

	bw.talosRefusing("alpha-w1", false)
	out, code = w.setup(&outputs, "apply", "-f", bw.fleet, "--yes", "--json")
	ok := decodeRun(t, out)
	if code != 0 || ok.Status != messages.RunSucceeded {
		t.Fatalf("apply after the refusal ended: exit %d\n%s", code, runSummary(ok))
	}
	for _, n := range bw.talos() {
		if n.AppliedConfigs != 1 {
			t.Errorf("Talos node %s: %d configs applied, want exactly 1", n.Node, n.AppliedConfigs)
		}
	}

	bw.scanWorldSecrets(w, agents, outputs, map[string]string{"killed controller log": killedLog})
}
