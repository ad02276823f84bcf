package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

func TestVerifyRegistered(t *testing.T) {
	task, ok := Builtin().Lookup("verify")
	if !ok {
		t.Fatal("verify is not registered in Builtin")
	}
	if _, ok := task.(Verify); !ok {
		t.Fatalf("verify is %T", task)
	}
}

func TestVerifyArgs(t *testing.T) {
	for _, tc := range []struct {
		args string
		want string // "" = accepted
	}{
		{`{}`, ""},
		{`null`, ""},
		{`{"layers":["host"],"scope":"node"}`, ""},
		{`{"scope":"everything"}`, `scope: "everything" is not node, cluster or all`},
		{`{"layers":["Net work"]}`, `layers: "Net work" is not a layer name`},
		{`{"checks":["no_such_check"]}`, `unknown check "no_such_check"`},
		{`{"checks":["Bad"]}`, `checks: "Bad" is not a check name`},
		{`{"layer":["host"]}`, `unknown field "layer"`},
		{`[1]`, "cannot unmarshal"},
		{`{"v":1,"checks":["host_memory"]}`, ""},
		{`{"v":2}`, "unsupported message version v=2"},
	} {
		t.Run(tc.args, func(t *testing.T) {
			args := tc.args
			if tc.want == "" {
				// Keep accepted runs cheap: only the memory check.
				args = `{"checks":["host_memory"]}`
				if tc.args != `{}` && tc.args != `null` {
					args = tc.args
				}
			}
			out, err := Verify{}.Run(t.Context(), testEnv(nil), json.RawMessage(args))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if out.Outcome == "" || out.Data == nil {
					t.Fatalf("empty output %+v", out)
				}
				return
			}
			if !errors.Is(err, ErrBadArgs) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrBadArgs containing %q", err, tc.want)
			}
		})
	}
}

func TestVerifyHostLayerOutput(t *testing.T) {
	// Memory forced to warn; CPU and disk can never trip (the machine is
	// shared and may be busy).
	settings := Settings{"METAGN_HOST_MEM_WARN_PCT": "0", "METAGN_HOST_MEM_FAIL_PCT": "100", "METAGN_HOST_CPU_SAMPLE": "50ms",
		"METAGN_HOST_CPU_WARN_PCT": "100", "METAGN_HOST_CPU_FAIL_PCT": "100", "METAGN_HOST_DISK_WARN_PCT": "100", "METAGN_HOST_DISK_FAIL_PCT": "100"}
	out, err := Verify{}.Run(t.Context(), testEnv(settings), json.RawMessage(`{"layers":["host"],"scope":"node"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(out.Data)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := messages.Decode[messages.VerifyOutput](b, 0) // as the controller reads it
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range decoded.Checks {
		names = append(names, c.Name)
		if c.Node != "node-a" || c.Layer != messages.LayerHost || c.Status == "" {
			t.Errorf("%+v", c)
		}
	}
	if strings.Join(names, ",") != "host_cpu,host_memory,host_disk" {
		t.Errorf("checks %v", names)
	}
	if out.Outcome != messages.OutcomeWarn || !strings.Contains(out.Reason, "host_memory warn") {
		t.Errorf("outcome %s reason %q: memory should warn at 0%%", out.Outcome, out.Reason)
	}
	// Scope cluster excludes node checks: nothing selected.
	out, err = Verify{}.Run(t.Context(), testEnv(settings), json.RawMessage(`{"layers":["host"],"scope":"cluster"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Data.(*messages.VerifyOutput).Checks; len(got) != 0 || out.Outcome != messages.OutcomeOK || out.Reason != "no checks selected" {
		t.Errorf("cluster scope on host layer: %d checks, %s %q", len(got), out.Outcome, out.Reason)
	}
}

// TestVerifyClusterScopeWithoutKube: with no API server every check that
// needs Kubernetes is skipped behind kube_api_ready, once, while the host
// app is still checked on its own.
func TestVerifyClusterScopeWithoutKube(t *testing.T) {
	srv := startHostApp(t, okHealthz, allOK)
	settings := Settings{
		"KUBECONFIG":        "/nonexistent/kubeconfig",
		"HOSTAPP_URL":       srv.URL,
		"METAGN_HOSTAPP_CA": srv.CAFile,
	}
	out, err := Verify{}.Run(t.Context(), testEnv(settings), json.RawMessage(`{"scope":"cluster"}`))
	if err != nil {
		t.Fatal(err)
	}
	res := byName(out.Data.(*messages.VerifyOutput).Checks)
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
			if r.Status != messages.CheckPass || !strings.Contains(r.Message, "TALOSCONFIG is not set") {
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
	if len(res) != 18 {
		t.Errorf("%d cluster-scoped results, want 18", len(res))
	}
	if out.Outcome != messages.OutcomeFail || !strings.HasPrefix(out.Reason, "kube_api_ready fail") {
		t.Errorf("outcome %s reason %q", out.Outcome, out.Reason)
	}
}

// TestChecksDocumented keeps docs/CHECKS.md's table in step with the code.
func TestChecksDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/CHECKS.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ := strings.Cut(rest, "`")
			rows[name] = line
		}
	}
	for _, c := range BuiltinChecks() {
		row, ok := rows[c.Name]
		if !ok {
			t.Errorf("docs/CHECKS.md has no row for %s", c.Name)
			continue
		}
		cells := strings.Split(row, "|")
		if len(cells) < 6 {
			t.Errorf("%s: short row", c.Name)
			continue
		}
		layer, scope, deps, timeout := strings.TrimSpace(cells[2]), strings.TrimSpace(cells[3]), strings.TrimSpace(cells[4]), strings.TrimSpace(cells[5])
		if layer != c.Layer || scope != string(c.Scope) || deps != strings.Join(c.DependsOn, ", ") || timeout != c.Timeout.String() {
			t.Errorf("%s: documented as %s | %s | %s | %s, code has %s | %s | %s | %s", c.Name, layer, scope, deps, timeout, c.Layer, c.Scope, strings.Join(c.DependsOn, ", "), c.Timeout)
		}
	}
}

// A verify whose task deadline comes before its checks finish still
// reports, in time, with the unfinished checks unknown.
func TestVerifyReportsBeforeItsDeadline(t *testing.T) {
	sleep := lookPath(t, "sleep")
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "- {name: slow, layer: l, type: command, command: "+sleep+", args: ['30'], timeout: 1m}\n- {name: after, layer: l, type: file, path: /, depends_on: slow}\n")
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	out, err := Verify{}.Run(ctx, testEnv(Settings{"METAGN_CUSTOM_CHECKS": p, "METAGN_ALLOWED_COMMANDS": sleep}), json.RawMessage(`{"layers":["l"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= 1500*time.Millisecond {
		t.Errorf("returned after %s, past the deadline", d)
	}
	res := byName(out.Data.(*messages.VerifyOutput).Checks)
	if r := res["slow"]; r.Status == messages.CheckPass || !strings.Contains(r.Message, "deadline is near") {
		t.Errorf("slow: %s %q", r.Status, r.Message)
	}
	if r := res["after"]; r.Status != messages.CheckSkipped || r.BlockedBy != "slow" {
		t.Errorf("after: %s blocked_by %q", r.Status, r.BlockedBy)
	}
}
