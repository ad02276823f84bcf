package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// runCLI runs the controller command line and captures what it printed.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outW, errW
	outC, errC := make(chan string), make(chan string)
	go func() { b, _ := io.ReadAll(outR); outC <- string(b) }()
	go func() { b, _ := io.ReadAll(errR); errC <- string(b) }()
	root := newRoot()
	root.SetArgs(args)
	var msg bytes.Buffer
	code = cli.Execute(root, &msg)
	os.Stdout, os.Stderr = oldOut, oldErr
	outW.Close()
	errW.Close()
	return code, <-outC, <-errC + msg.String()
}

func TestSetupInvalidSpecSendsNothing(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "fleet.yaml")
	os.WriteFile(spec, []byte("apiVersion: metaguildnet/v1\nkind: Fleet\nclusters:\n  - name: a\n    nodes:\n      - {name: n1, role: boss}\n"), 0o600)
	// No controller at this data dir: a request would fail to connect,
	// so the FILE:LINE error proves nothing was sent.
	for _, verb := range []string{"plan", "apply"} {
		args := []string{"setup", verb, "-f", spec, "--data-dir", filepath.Join(t.TempDir(), "none")}
		if verb == "apply" {
			args = append(args, "--yes")
		}
		code, _, stderr := runCLI(t, args...)
		if code != cli.ExitUsage || !strings.Contains(stderr, spec+`:6: clusters[0].nodes[0].role: "boss" is not one of`) {
			t.Fatalf("%s: exit %d, %q", verb, code, stderr)
		}
	}
}

func TestSetupCLI(t *testing.T) {
	dir := t.TempDir()
	world := filepath.Join(dir, "world")
	os.MkdirAll(world, 0o700)
	touch := steps.Step{Name: "touch", Layer: messages.LayerNetwork, Scope: steps.ScopeNode, Critical: true,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			if _, err := os.Stat(filepath.Join(world, env.Node)); err == nil {
				return steps.Plan{Action: messages.ActionUnchanged}, nil
			}
			return steps.Plan{Action: messages.ActionCreate, Diff: env.Node + " touched"}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			if _, err := os.Stat(filepath.Join(world, "fail")); err == nil {
				return steps.Applied{}, steps.Configf("remove the fail knob", "told to fail")
			}
			return steps.Applied{Action: messages.ActionCreate}, os.WriteFile(filepath.Join(world, env.Node), nil, 0o600)
		}}
	reg, err := steps.NewRegistry(touch)
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dataDir := filepath.Join(dir, "controller")
	c, err := controller.Start(ctx, controller.Options{DataDir: dataDir, Listen: "127.0.0.1:0", HeartbeatInterval: 100 * time.Millisecond,
		SweepInterval: -1, Steps: reg, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := ctlclient.Dial(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tok, err := cl.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		checks := filepath.Join(dir, n+"-checks.yaml")
		os.WriteFile(checks, []byte(fmt.Sprintf("checks:\n  - {name: touched, layer: network, type: file, path: %q}\n", filepath.Join(world, n))), 0o600)
		a, err := agent.New(agent.Config{ControllerURL: c.Info().NATSURL, Token: tok.Token, Name: n, Cluster: "alpha",
			StateDir: filepath.Join(dir, "agents", n), Version: "test", Log: log,
			Tasks: tasks.Builtin().With(tasks.StepTask{Steps: reg}), Settings: config.Settings{"METAGN_CUSTOM_CHECKS": checks}})
		if err != nil {
			t.Fatal(err)
		}
		actx, acancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(actx); close(done) }()
		defer func() { acancel(); <-done }()
	}
	poll.Until(t, 15*time.Second, "agents online", func() bool {
		st, err := cl.Status(ctx)
		return err == nil && st.Summary.Online == 2
	})
	spec := filepath.Join(dir, "fleet.yaml")
	os.WriteFile(spec, []byte(`apiVersion: metaguildnet/v1
kind: Fleet
clusters:
  - name: alpha
    nodes: [{name: n1, role: controlplane}, {name: n2, role: worker}]
    network: {loginServer: "http://127.0.0.1:9", authKeyFrom: "env:TS_AUTHKEY"}
    cluster: {provider: kubernetes, kubeconfigFrom: "file:/etc/kc"}
    require: {layers: [network], checks: [touched]}
`), 0o600)

	code, out, stderr := runCLI(t, "setup", "plan", "-f", spec, "--data-dir", dataDir)
	if code != 0 || !strings.Contains(out, "touch") || !strings.Contains(out, "Plan: 2 create.") {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("plan:\n%s", out)
	code, out, stderr = runCLI(t, "setup", "apply", "-f", spec, "--data-dir", dataDir, "--json")
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, stderr)
	}
	var run map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &run); err != nil {
		t.Fatalf("apply --json: %v\n%s", err, out)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range run {
			if !yield(k) {
				return
			}
		}
	})
	if strings.Join(keys, ",") != "layers,run_id,status" || string(run["status"]) != `"succeeded"` {
		t.Fatalf("apply --json keys %v: %s", keys, out)
	}
	var layers []map[string]json.RawMessage
	json.Unmarshal(run["layers"], &layers)
	var stepsOut []map[string]any
	json.Unmarshal(layers[0]["steps"], &stepsOut)
	if len(layers) != 1 || string(layers[0]["status"]) != `"verified"` || len(stepsOut) != 2 || len(layers[0]["verification"]) == 0 {
		t.Fatalf("layers: %s", run["layers"])
	}
	for _, k := range []string{"name", "node", "cluster", "action", "outcome", "attempts", "duration_ms", "error"} {
		if _, ok := stepsOut[0][k]; !ok {
			t.Fatalf("step without %q: %v", k, stepsOut[0])
		}
	}
	// Text: progress as plain lines (stderr is not a terminal), then the run.
	code, out, stderr = runCLI(t, "setup", "apply", "-f", spec, "--data-dir", dataDir)
	if code != 0 || !strings.Contains(stderr, "setup run s") || !strings.Contains(out, "network: verified") || !strings.Contains(out, "unchanged") {
		t.Fatalf("apply (text): exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("apply (text):\n%s%s", stderr, out)
	code, out, _ = runCLI(t, "setup", "status", "--data-dir", dataDir, "--json")
	if code != 0 || !strings.Contains(out, `"outcome": "unchanged"`) {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	// A failing run exits 1.
	os.Remove(filepath.Join(world, "n2"))
	os.WriteFile(filepath.Join(world, "fail"), nil, 0o600)
	code, out, _ = runCLI(t, "setup", "apply", "-f", spec, "--data-dir", dataDir)
	if code != cli.ExitUnhealthy || !strings.Contains(out, "rolled_back") || !strings.Contains(out, "fix: remove the fail knob") {
		t.Fatalf("failing apply: exit %d\n%s", code, out)
	}
}
