// Package verify tests fleet verification end to end against the test
// world: a controller and agents (in process, real NATS), a real
// kube-apiserver seeded like GuildNet, real Headscale with a tsnet node per
// agent (so the network checks ask a real tailscaled LocalAPI), and the
// RethinkDB and host-app stand-ins. It runs inside a loopback-only network
// namespace (TestMain re-executes itself under unshare -n).
package verify

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/bundle"
	"github.com/guildnet/metaguildnet/e2e/internal/worldtest"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

func TestMain(m *testing.M) { testenv.MainInNetNS(m) }

const secretPassword = "s3cr3t-Pa55word-planted"

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type world struct{ *worldtest.World }

func newWorld(t *testing.T) *world {
	return &world{worldtest.New(t, worldtest.Options{Password: secretPassword})}
}

// dumpDERPLogs prints the DERP lines of each tsnet node's log, to tell
// why a node could not reach its relay.
func (w *world) dumpDERPLogs(t *testing.T) {
	for _, name := range w.Agents() {
		b, err := os.ReadFile(filepath.Join(w.Dir, "ts-"+name, "logs", "tsnet.log"))
		if err != nil {
			t.Logf("%s: tsnet log: %v", name, err)
			continue
		}
		var lines []string
		for line := range strings.Lines(string(b)) {
			if strings.Contains(strings.ToLower(line), "derp") {
				lines = append(lines, strings.TrimRight(line, "\n"))
			}
		}
		lines = lines[max(0, len(lines)-25):]
		t.Logf("%s: last DERP lines of its tsnet log:\n%s", name, strings.Join(lines, "\n"))
	}
}

func layer(r messages.Report, name string) messages.LayerReport {
	for _, l := range r.Layers {
		if l.Name == name {
			return l
		}
	}
	return messages.LayerReport{}
}

func check(r messages.Report, name, node string) messages.CheckResult {
	for _, l := range r.Layers {
		for _, c := range l.Checks {
			if c.Name == name && (node == "" || c.Node == node) {
				return c
			}
		}
	}
	return messages.CheckResult{}
}

func dump(r messages.Report) string {
	var b strings.Builder
	for _, l := range r.Layers {
		b.WriteString("\n" + l.Name + " " + l.Status + " " + l.Reason)
		for _, c := range l.Checks {
			if c.Status != messages.CheckPass {
				b.WriteString("\n  " + c.Name + " " + c.Node + " " + c.Status + " " + c.Message)
			}
		}
	}
	return b.String()
}

func TestFleetVerification(t *testing.T) {
	w := newWorld(t)
	// Route approval (routes_approved against a real tsnet router) is tested
	// in checks/network_tailnet_test.go; a router among these agents
	// keeps its peers' DERP health warning up on this machine.
	w.StartAgent("n1", "alpha", "controlplane", nil)
	w.StartAgent("n2", "alpha", "worker", nil)
	w.StartAgent("n3", "beta", "controlplane", nil)
	for _, n := range []string{"n1", "n2", "n3"} {
		w.WaitState(n, messages.StateOnline)
	}
	ctx := context.Background()

	t.Run("healthy world", func(t *testing.T) {
		// A fresh tsnet node may report a transient health warning (its DERP
		// connection still coming up): poll until the world settles.
		start := time.Now()
		r := w.VerifyUntil(60*time.Second, 500*time.Millisecond, func(r messages.Report) bool { return r.OverallStatus == messages.Healthy })
		t.Logf("verified %s after %s", r.OverallStatus, time.Since(start).Round(100*time.Millisecond))
		for _, l := range []string{"network", "host", "cluster", "database", "application"} {
			if got := layer(r, l).Status; got != messages.Healthy {
				t.Errorf("layer %s: %s%s", l, got, dump(r))
			}
		}
		if r.OverallStatus != messages.Healthy {
			w.dumpDERPLogs(t)
			t.Fatalf("overall %s%s", r.OverallStatus, dump(r))
		}
		// Each cluster is judged beside the fleet roll-up.
		if len(r.Clusters) != 2 || r.Clusters[0].Name != "alpha" || r.Clusters[1].Name != "beta" ||
			r.Clusters[0].OverallStatus != messages.Healthy || r.Clusters[1].OverallStatus != messages.Healthy || len(r.Clusters[0].Layers) != 5 {
			t.Errorf("clusters %+v", r.Clusters)
		}
		// Cluster checks ran once per cluster, on the controlplane agents.
		for _, c := range layer(r, "cluster").Checks {
			if c.Node == "n2" {
				t.Errorf("cluster check %s ran on the worker", c.Name)
			}
		}
	})

	faults := []struct {
		name        string
		apply, undo func() error
		check       string
		status      string
		mentions    string
		blocked     string // a dependent that must be skipped behind check
	}{
		{"node NotReady", func() error { return w.G.SetNodeReady(ctx, w.G.NodeNames[1], false) }, func() error { return w.G.SetNodeReady(ctx, w.G.NodeNames[1], true) },
			"nodes_ready", messages.CheckFail, w.G.NodeNames[1], ""},
		{"CoreDNS pods gone", func() error { return w.G.DeleteCoreDNSPods(ctx) }, func() error { return w.G.RestoreCoreDNS(ctx) },
			"coredns_running", messages.CheckFail, "kube-dns", ""},
		{"database refusing", func() error { w.RDB.SetRefuse(true); return nil }, func() error { w.RDB.SetRefuse(false); return nil },
			"rethinkdb_tcp", messages.CheckFail, w.RDB.Addr(), "rethinkdb_query"},
		{"database slow", func() error { w.RDB.SetLatency(300 * time.Millisecond); return nil }, func() error { w.RDB.SetLatency(0); return nil },
			"rethinkdb_query", messages.CheckWarn, "ms", ""},
		{"host app 502", func() error { w.App.SetStatus(502); return nil }, func() error { w.App.SetStatus(0); return nil },
			"hostapp_healthz", messages.CheckFail, "502", "hostapp_api_health"},
		{"operator unavailable", func() error { return w.G.SetOperatorAvailable(ctx, false) }, func() error { return w.G.SetOperatorAvailable(ctx, true) },
			"operator_available", messages.CheckFail, "workspace-operator", ""},
		{"headscale stopped", func() error { w.HS.Stop(); return nil }, func() error { return w.HS.Start(ctx) },
			"login_server_health", messages.CheckFail, "health", ""},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			if err := f.apply(); err != nil {
				t.Fatal(err)
			}
			// Some faults take a moment to reach the nodes (a route
			// unapproved on Headscale reaches the peer's netmap in ~1 s):
			// poll until the check sees it.
			r := w.VerifyUntil(20*time.Second, 250*time.Millisecond, func(r messages.Report) bool { return check(r, f.check, "").Status == f.status })
			if err := f.undo(); err != nil {
				t.Fatal(err)
			}
			c := check(r, f.check, "")
			if c.Status != f.status || !strings.Contains(c.Message, f.mentions) {
				t.Fatalf("%s: %s %q, want %s naming %q%s", f.check, c.Status, c.Message, f.status, f.mentions, dump(r))
			}
			if r.OverallStatus == messages.Healthy {
				t.Fatalf("overall healthy with %s", f.name)
			}
			if f.blocked != "" {
				if d := check(r, f.blocked, c.Node); d.Status != messages.CheckSkipped || d.BlockedBy != f.check {
					t.Fatalf("%s: %s blocked by %q, want skipped behind %s", f.blocked, d.Status, d.BlockedBy, f.check)
				}
			}
		})
	}

	t.Run("diagnose names the root cause, its fix, and bundles no secret", func(t *testing.T) {
		w.RDB.SetRefuse(true)
		defer w.RDB.SetRefuse(false)
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		res, err := w.Cli.Diagnose(dctx, messages.DiagnoseRequest{Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		var found *diagnostics.Finding
		for i, f := range res.Diagnosis.Findings {
			if f.ID == "rethinkdb-connection-refused" {
				found = &res.Diagnosis.Findings[i]
			}
		}
		if found == nil || found.Suggestion == "" || found.Command == "" || !strings.HasPrefix(found.Docs, "docs/TROUBLESHOOTING.md#") {
			t.Fatalf("findings %+v", res.Diagnosis.Findings)
		}
		if len(res.Sections["n1"]) == 0 {
			t.Fatalf("no collector sections from n1: notes %v", res.Notes)
		}
		path := filepath.Join(w.Dir, "bundle.tar.gz")
		if err := bundle.WriteFile(path, bundle.Contents{Node: "n1", Created: time.Now(), Sections: res.Sections["n1"], Diagnosis: &res.Diagnosis, Report: res.Report}); err != nil {
			t.Fatal(err)
		}
		raw := gunzip(t, path)
		for _, secret := range []string{w.AuthKey, secretPassword} {
			if strings.Contains(raw, secret) {
				t.Fatalf("bundle holds a secret %q", secret[:6])
			}
		}
	})

	t.Run("offline node is unknown with its reason", func(t *testing.T) {
		w.StopAgent("n2")
		w.WaitState("n2", messages.StateOffline)
		r := w.Verify()
		var n2 messages.NodeReport
		for _, n := range r.Nodes {
			if n.Name == "n2" {
				n2 = n
			}
		}
		if n2.Status != messages.Unknown || !strings.Contains(n2.Reason, "offline") {
			t.Fatalf("n2: %+v", n2)
		}
		if c := check(r, "network_checks", "n2"); c.Status != messages.CheckUnknown || c.Message != messages.ReasonOffline {
			t.Fatalf("n2 network: %+v", c)
		}
	})

	t.Run("custom check file with a bad entry names its line", func(t *testing.T) {
		path := filepath.Join(w.Dir, "checks.yaml")
		os.WriteFile(path, []byte("checks:\n  - name: app_port\n    layer: app\n    type: tcp\n    address: 127.0.0.1:1\n  - name: broken\n    layer: app\n    type: nosuchtype\n"), 0o600)
		w.StopAgent("n3")
		w.startAgentAgain("n3", "beta", "controlplane", map[string]string{"METAGN_CUSTOM_CHECKS": path})
		w.WaitState("n3", messages.StateOnline)
		r := w.Verify()
		c := check(r, tasks.CustomChecksFileCheck, "n3")
		if c.Status != messages.CheckFail || !strings.Contains(c.Message, "checks.yaml:") {
			t.Fatalf("custom checks file: %+v%s", c, dump(r))
		}
	})

	t.Run("history survives a controller restart", func(t *testing.T) {
		before, err := w.Cli.LastReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.StopController()
		w.StartController()
		after, err := w.Cli.LastReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !after.Timestamp.Equal(before.Timestamp) || after.OverallStatus != before.OverallStatus {
			t.Fatalf("last report after restart: %v %s, before %v %s", after.Timestamp, after.OverallStatus, before.Timestamp, before.OverallStatus)
		}
		st, err := w.Cli.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.Name == "n1" && n.Layers["network"] == "" {
				t.Fatalf("status lost the per-layer view: %+v", n)
			}
		}
		if len(st.Clusters) != 2 || st.Clusters[0].OverallStatus == "" || st.Clusters[1].OverallStatus == "" {
			t.Fatalf("status lost the per-cluster view: %+v", st.Clusters)
		}
	})
}

// startAgentAgain restarts an enrolled agent (its state dir holds its
// identity) with other settings and a fresh tsnet node.
func (w *world) startAgentAgain(name, cluster, role string, extra map[string]string) {
	os.RemoveAll(filepath.Join(w.Dir, "agent-"+name)) // a new identity: simplest way to re-enroll with new settings
	ctx := context.Background()
	w.Cli.NodesRemove(ctx, name)
	os.RemoveAll(filepath.Join(w.Dir, "ts-"+name))
	w.StartAgent(name, cluster, role, extra)
}
