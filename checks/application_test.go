package checks

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// hostAppServer is a TLS server on 127.0.0.1 answering like GuildNet's
// host app, with its behaviour set per test.
type hostAppServer struct {
	*httptest.Server
	CAFile string
}

func startHostApp(t *testing.T, healthz http.HandlerFunc, apiHealthJSON string) *hostAppServer {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /api/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, apiHealthJSON)
	})
	// Each cluster's own health follows its /api/health entry.
	mux.HandleFunc("GET /api/cluster/{id}/health", func(w http.ResponseWriter, r *http.Request) {
		var ah apiHealth
		_ = json.Unmarshal([]byte(apiHealthJSON), &ah)
		for _, c := range ah.Clusters {
			if c.ID == r.PathValue("id") {
				ok := c.Status == "ok"
				fmt.Fprintf(w, `{"k8s":{"ok":%t},"rdb":{"ok":%t,"error":%q}}`, ok, ok, c.Error)
				return
			}
		}
		http.Error(w, `{"error":"cluster not found"}`, http.StatusNotFound)
	})
	srv := httptest.NewUnstartedServer(mux) // listens on 127.0.0.1
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return &hostAppServer{Server: srv, CAFile: ca}
}

func okHealthz(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok\n") }

const allOK = `{"headscale":[{"id":"hs1","status":"ok"}],"clusters":[{"id":"c1","name":"alpha","status":"ok"},{"id":"c2","name":"beta","status":"ok"}]}`

func runNamed(t *testing.T, catalog []Check, settings map[string]string, names ...string) map[string]messages.CheckResult {
	t.Helper()
	checks, err := Select(catalog, Selection{Names: names})
	if err != nil {
		t.Fatal(err)
	}
	return byName(RunChecks(context.Background(), testEnv(settings), checks, RunOptions{}))
}

func TestHostAppChecks(t *testing.T) {
	slow := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(1300 * time.Millisecond):
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "ok")
	}
	for _, tc := range []struct {
		name        string
		healthz     http.HandlerFunc
		apiHealth   string
		trust       string // ca, insecure or none
		healthzWant string
		healthzMsg  string
		apiWant     string
		apiMsg      string
	}{
		{"healthy", okHealthz, allOK, "ca", messages.CheckPass, "host app ok", messages.CheckPass, "2 clusters ok: alpha (c1), beta (c2)"},
		{"insecure", okHealthz, allOK, "insecure", messages.CheckPass, "host app ok", messages.CheckPass, ""},
		{"untrusted", okHealthz, allOK, "none", messages.CheckFail, "set METAGN_HOSTAPP_CA", messages.CheckSkipped, "blocked: hostapp_healthz fail"},
		{"bad gateway", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "upstream down", http.StatusBadGateway) },
			allOK, "ca", messages.CheckFail, "answered 502 Bad Gateway: upstream down", messages.CheckSkipped, ""},
		{"wrong body", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "starting") },
			allOK, "ca", messages.CheckFail, `answered 200 with "starting", want "ok"`, messages.CheckSkipped, ""},
		{"slow", slow, allOK, "ca", messages.CheckFail, "limit 1s", messages.CheckSkipped, ""},
		// The node's cluster is c1: another cluster's trouble is reported,
		// not failed on; its own fails.
		{"another cluster bad", okHealthz,
			`{"clusters":[{"id":"c1","name":"alpha","status":"ok"},{"id":"c2","name":"beta","status":"error","code":503,"error":"rdb: connection refused"}]}`,
			"ca", messages.CheckPass, "", messages.CheckPass, "1 clusters ok: alpha (c1); other clusters not ok: beta (c2) error: rdb: connection refused"},
		{"own cluster bad", okHealthz,
			`{"clusters":[{"id":"c1","name":"alpha","status":"error","code":503,"error":"rdb: connection refused"},{"id":"c2","name":"beta","status":"ok"}]}`,
			"ca", messages.CheckPass, "", messages.CheckFail, "alpha (c1) error: rdb: connection refused; cluster c1 health: Kubernetes not ok; RethinkDB not ok: rdb: connection refused"},
		{"another cluster unknown", okHealthz, `{"clusters":[{"id":"c1","status":"ok"},{"id":"c2","status":"unknown"}]}`,
			"ca", messages.CheckPass, "", messages.CheckPass, "other clusters not ok: c2 unknown"},
		{"own cluster not reported", okHealthz, `{"clusters":[{"id":"c2","name":"beta","status":"ok"}]}`,
			"ca", messages.CheckPass, "", messages.CheckWarn, "host app does not report this node's cluster c1 (it reports 1 clusters)"},
		{"unknown cluster", okHealthz, `{"clusters":[{"id":"c1","status":"unknown"}]}`,
			"ca", messages.CheckPass, "", messages.CheckWarn, "c1 unknown"},
		{"headscale down", okHealthz, `{"headscale":[{"id":"hs1","status":"error"}],"clusters":[{"id":"c1","status":"ok"}]}`,
			"ca", messages.CheckPass, "", messages.CheckWarn, "headscale hs1 error"},
		{"not json", okHealthz, `<html>`, "ca", messages.CheckPass, "", messages.CheckFail, "not the expected JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startHostApp(t, tc.healthz, tc.apiHealth)
			settings := map[string]string{"HOSTAPP_URL": srv.URL}
			switch tc.trust {
			case "ca":
				settings["METAGN_HOSTAPP_CA"] = srv.CAFile
			case "insecure":
				settings["METAGN_HOSTAPP_INSECURE"] = "true"
			}
			res := runNamed(t, ApplicationChecks(), settings, "hostapp_healthz", "hostapp_api_health")
			h, a := res["hostapp_healthz"], res["hostapp_api_health"]
			if h.Status != tc.healthzWant || !strings.Contains(h.Message, tc.healthzMsg) {
				t.Errorf("hostapp_healthz: %s %q, want %s containing %q", h.Status, h.Message, tc.healthzWant, tc.healthzMsg)
			}
			if a.Status != tc.apiWant || !strings.Contains(a.Message, tc.apiMsg) {
				t.Errorf("hostapp_api_health: %s %q, want %s containing %q", a.Status, a.Message, tc.apiWant, tc.apiMsg)
			}
			if a.Status == messages.CheckSkipped && a.BlockedBy != "hostapp_healthz" {
				t.Errorf("hostapp_api_health blocked_by %q", a.BlockedBy)
			}
		})
	}
}

func TestHostAppURLAndSettings(t *testing.T) {
	for _, tc := range []struct {
		settings config.Settings
		want     string
	}{
		{nil, "https://127.0.0.1:8090"},
		{config.Settings{"LISTEN_LOCAL": "127.0.0.1:8080"}, "https://127.0.0.1:8080"},
		{config.Settings{"LISTEN_LOCAL": "127.0.0.1:8080", "HOSTAPP_URL": "https://10.0.0.1:9/"}, "https://10.0.0.1:9"},
	} {
		if got := HostAppURL(tc.settings); got != tc.want {
			t.Errorf("HostAppURL(%v) = %q, want %q", tc.settings, got, tc.want)
		}
	}
	// A closed port on loopback: the message names the URL.
	res := runNamed(t, ApplicationChecks(), map[string]string{"HOSTAPP_URL": "https://" + closedAddr(t)}, "hostapp_healthz")
	if r := res["hostapp_healthz"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, "connection refused") || !strings.Contains(r.Message, "/healthz") {
		t.Errorf("closed port: %s %q", r.Status, r.Message)
	}
	for key, val := range map[string]string{"METAGN_HOSTAPP_CA": "/nonexistent/ca.pem", "METAGN_HOSTAPP_MAX_MS": "soon", "HOSTAPP_URL": "ftp://x"} {
		res := runNamed(t, ApplicationChecks(), map[string]string{key: val}, "hostapp_healthz")
		if r := res["hostapp_healthz"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, strings.TrimPrefix(val, "ftp://")) {
			t.Errorf("%s=%s: %s %q", key, val, r.Status, r.Message)
		}
	}
}

// TestClusterScopeWithoutKube: with no API server every check that
// needs Kubernetes is skipped behind kube_api_ready, once, while the host
// app is still checked on its own.
func TestClusterScopeWithoutKube(t *testing.T) {
	srv := startHostApp(t, okHealthz, allOK)
	settings := config.Settings{
		"KUBECONFIG":        "/nonexistent/kubeconfig",
		"HOSTAPP_URL":       srv.URL,
		"METAGN_HOSTAPP_CA": srv.CAFile,
	}
	results := runArgs(t.Context(), t, testEnv(settings), `{"scope":"cluster"}`, RunOptions{})
	res := byName(results)
	for name, r := range res {
		var c Check
		for _, b := range BuiltinChecks() {
			if b.Name == name {
				c = b
			}
		}
		if c.Scope != ScopeCluster {
			t.Errorf("%s (scope %q) ran in a cluster-scoped verify", name, c.Scope)
		}
		switch {
		case name == "kube_api_ready":
			if r.Status != messages.CheckFail || !strings.Contains(r.Message, "/nonexistent/kubeconfig") {
				t.Errorf("kube_api_ready: %s %q", r.Status, r.Message)
			}
		case strings.HasPrefix(name, "talos_"):
			if r.Status != messages.CheckNotConfigured || r.Passed || !strings.Contains(r.Message, "not configured: ") {
				t.Errorf("%s: %s %q", name, r.Status, r.Message)
			}
		case name == "hostapp_healthz" || name == "hostapp_api_health":
			if r.Status != messages.CheckPass {
				t.Errorf("%s: %s %q", name, r.Status, r.Message)
			}
		default:
			if r.Status != messages.CheckSkipped || r.BlockedBy != "kube_api_ready" {
				t.Errorf("%s: %s blocked_by %q (%s)", name, r.Status, r.BlockedBy, r.Message)
			}
		}
	}
	if len(res) != 19 {
		t.Errorf("%d cluster-scoped results, want 19", len(res))
	}
	if o := Worst(results); o != messages.OutcomeFail {
		t.Errorf("outcome %s", o)
	}
}
