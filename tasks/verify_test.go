package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
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
		{`{"layers":["Net work"]}`, `layers[0]: layer name "Net work"`},
		{`{"checks":["no_such_check"]}`, `unknown check "no_such_check"`},
		{`{"checks":["Bad"]}`, `checks[0]: check name "Bad"`},
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
	settings := config.Settings{"METAGN_HOST_MEM_WARN_PCT": "0", "METAGN_HOST_MEM_FAIL_PCT": "100", "METAGN_HOST_CPU_SAMPLE": "50ms",
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

// A verify whose task deadline comes before its checks finish still
// reports, in time, with the unfinished checks unknown.
func TestVerifyReportsBeforeItsDeadline(t *testing.T) {
	const sleep = "/bin/sleep"
	if _, err := os.Stat(sleep); err != nil {
		testenv.Skip(t, "%s is needed to run a slow check: %v", sleep, err)
	}
	p := writeCustomChecks(t, "- {name: slow, layer: l, type: command, command: "+sleep+", args: ['30'], timeout: 1m}\n- {name: after, layer: l, type: file, path: /, depends_on: slow}\n")
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	out, err := Verify{}.Run(ctx, testEnv(config.Settings{"METAGN_CUSTOM_CHECKS": p, "METAGN_ALLOWED_COMMANDS": sleep}), json.RawMessage(`{"layers":["l"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= 1500*time.Millisecond {
		t.Errorf("returned after %s, past the deadline", d)
	}
	res := resultsByName(out)
	if r := res["slow"]; r.Status == messages.CheckPass || !strings.Contains(r.Message, "deadline is near") {
		t.Errorf("slow: %s %q", r.Status, r.Message)
	}
	if r := res["after"]; r.Status != messages.CheckSkipped || r.BlockedBy != "slow" {
		t.Errorf("after: %s blocked_by %q", r.Status, r.BlockedBy)
	}
}

// resultsByName indexes a verify task's check results by name.
func resultsByName(out Output) map[string]messages.CheckResult {
	res := map[string]messages.CheckResult{}
	for _, r := range out.Data.(*messages.VerifyOutput).Checks {
		res[r.Name] = r
	}
	return res
}

// testEnv is an Env for tests.
func testEnv(settings config.Settings) *Env {
	return &Env{Node: "node-a", Cluster: "c1", Role: "worker", Version: "test", Settings: settings}
}

// writeCustomChecks writes a custom check file and returns its path.
func writeCustomChecks(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "checks.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The verify task reports a broken custom check file as a failed check
// naming the line, and still runs the built-in checks.
func TestVerifyReportsBrokenCustomFile(t *testing.T) {
	p := writeCustomChecks(t, "checks:\n- name: x\n  layer: l\n  type: tcp\n  address: nowhere\n")
	out, err := Verify{}.Run(t.Context(), testEnv(config.Settings{"METAGN_CUSTOM_CHECKS": p}), []byte(`{"layers":["host"],"scope":"node"}`))
	if err != nil {
		t.Fatal(err)
	}
	res := resultsByName(out)
	if r := res[CustomChecksFileCheck]; r.Status != messages.CheckFail || !strings.Contains(r.Message, p+":5:") {
		t.Errorf("%s: %s %q", CustomChecksFileCheck, r.Status, r.Message)
	}
	if _, ok := res["host_memory"]; !ok || out.Outcome != messages.OutcomeFail {
		t.Errorf("built-in checks missing or outcome %s", out.Outcome)
	}
}
