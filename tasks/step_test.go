package tasks_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// fileStep writes env.Inputs-independent content to DIR/NAME: a step with
// real side effects, for the step task's tests.
func fileStep(dir string) steps.Step {
	path := filepath.Join(dir, "marker")
	return steps.Step{
		Name: "marker_file", Layer: messages.LayerNetwork, Scope: steps.ScopeNode, Critical: true,
		Prereqs: func(ctx context.Context, env *steps.Env) error {
			if _, err := os.Stat(dir); err != nil {
				return steps.Blocked("directory "+dir+" is missing", "mkdir -p "+dir)
			}
			return nil
		},
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			b, err := os.ReadFile(path)
			switch {
			case os.IsNotExist(err):
				return steps.Plan{Action: messages.ActionCreate, Diff: "marker created"}, nil
			case string(b) != env.Node:
				return steps.Plan{Action: messages.ActionUpdate, Diff: "marker rewritten"}, nil
			}
			return steps.Plan{Action: messages.ActionUnchanged}, nil
		},
		Apply: func(ctx context.Context, env *steps.Env) (steps.Applied, error) {
			key, err := env.Secret(env.Spec.Network.HeadscaleAPIKeyFrom)
			if err != nil {
				return steps.Applied{}, err
			}
			if env.Sealed["talos.machine_config"] != "sealed-in" {
				return steps.Applied{}, errors.New("sealed input missing")
			}
			if err := os.WriteFile(path, []byte(env.Node), 0o600); err != nil {
				return steps.Applied{}, err
			}
			return steps.Applied{Action: messages.ActionCreate, Undo: map[string]string{"path": path},
				Outputs: map[string]string{"marker_file.len": "1"}, Sealed: map[string]string{"kubeconfig": "kc-" + key}}, nil
		},
		Undo: func(ctx context.Context, env *steps.Env, undo json.RawMessage) error {
			var u map[string]string
			if err := json.Unmarshal(undo, &u); err != nil {
				return err
			}
			return os.Remove(u["path"])
		},
	}
}

func TestStepTask(t *testing.T) {
	dir := t.TempDir()
	reg, err := steps.NewRegistry(fileStep(dir),
		steps.Step{Name: "refused", Layer: messages.LayerNetwork, Scope: steps.ScopeCluster,
			Plan: func(context.Context, *steps.Env) (steps.Plan, error) {
				return steps.Plan{}, &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}
			},
			Apply: func(context.Context, *steps.Env) (steps.Applied, error) {
				return steps.Applied{}, steps.Configf("set network.user", "user %q is wrong", "x")
			}})
	if err != nil {
		t.Fatal(err)
	}
	task := tasks.StepTask{Steps: reg}
	cluster := messages.FleetCluster{Name: "alpha", Nodes: []messages.FleetNode{{Name: "n1", Role: "controlplane"}},
		Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:1", HeadscaleAPIKeyFrom: "env:HS_KEY"},
		Cluster: messages.FleetKube{Provider: "kubernetes", KubeconfigFrom: "file:/nonexistent"}}
	env := &tasks.Env{Node: "n1", Cluster: "alpha", Role: "controlplane", Settings: config.Settings{"HS_KEY": "s3cret"},
		StateDir: t.TempDir(), Sealed: json.RawMessage(`{"talos.machine_config":"sealed-in"}`)}
	run := func(step, op string, undo json.RawMessage) (tasks.Output, *messages.StepOutput) {
		t.Helper()
		args, _ := json.Marshal(messages.StepArgs{V: 1, Step: step, Op: op, Cluster: cluster, Undo: undo})
		out, err := task.Run(context.Background(), env, args)
		if err != nil {
			t.Fatalf("%s %s: %v", step, op, err)
		}
		return out, out.Data.(*messages.StepOutput)
	}
	if _, o := run("marker_file", "plan", nil); o.Action != messages.ActionCreate || o.Diff != "marker created" {
		t.Fatalf("plan: %+v", o)
	}
	out, o := run("marker_file", "apply", nil)
	if out.Outcome != messages.OutcomeOK || o.Action != messages.ActionCreate || out.Sealed["kubeconfig"] != "kc-s3cret" || o.Outputs["marker_file.len"] != "1" {
		t.Fatalf("apply: %+v %+v", out, o)
	}
	if b, _ := json.Marshal(o); strings.Contains(string(b), "s3cret") {
		t.Fatalf("a secret in the step output: %s", b)
	}
	if _, o2 := run("marker_file", "plan", nil); o2.Action != messages.ActionUnchanged {
		t.Fatalf("plan after apply: %+v", o2)
	}
	if out, _ := run("marker_file", "undo", o.Undo); out.Outcome != messages.OutcomeOK {
		t.Fatalf("undo: %+v", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "marker")); !os.IsNotExist(err) {
		t.Fatalf("undo left the marker: %v", err)
	}
	// Classes: retryable, config, blocked.
	if out, o := run("refused", "plan", nil); out.Outcome != messages.OutcomeFail || o.ErrClass != messages.StepErrRetryable {
		t.Fatalf("refused: %+v %+v", out, o)
	}
	if _, o := run("refused", "apply", nil); o.ErrClass != messages.StepErrConfig || !strings.Contains(o.Error, "fix: set network.user") {
		t.Fatalf("config: %+v", o)
	}
	os.RemoveAll(dir)
	if out, o := run("marker_file", "plan", nil); out.Outcome != messages.OutcomeFail || o.Action != messages.ActionBlocked || !strings.Contains(o.Blocked, "mkdir -p "+dir) {
		t.Fatalf("blocked: %+v %+v", out, o)
	}
	os.MkdirAll(dir, 0o700)
	// A missing secret is a config error naming what to set, never a value.
	env.Settings = nil
	if _, o := run("marker_file", "apply", nil); o.ErrClass != messages.StepErrConfig || !strings.Contains(o.Error, "set HS_KEY") {
		t.Fatalf("missing secret: %+v", o)
	}
	// Refusals: unknown step, other cluster, bad sealed input.
	for name, args := range map[string]messages.StepArgs{
		"unknown": {V: 1, Step: "nope", Op: "plan", Cluster: cluster},
		"bad op":  {V: 1, Step: "marker_file", Op: "destroy", Cluster: cluster},
		"other":   {V: 1, Step: "marker_file", Op: "plan", Cluster: func() messages.FleetCluster { c := cluster; c.Name = "beta"; return c }()},
	} {
		b, _ := json.Marshal(args)
		if _, err := task.Run(context.Background(), env, b); !errors.Is(err, tasks.ErrBadArgs) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	os.WriteFile(p, []byte("filesecret\n"), 0o600)
	reg, _ := steps.NewRegistry(steps.Step{Name: "read_secret", Layer: messages.LayerNetwork, Scope: steps.ScopeNode,
		Plan: func(ctx context.Context, env *steps.Env) (steps.Plan, error) {
			v, err := env.Secret(messages.SecretRef("file:" + p))
			if err != nil || v != "filesecret" {
				return steps.Plan{}, errors.New("file secret not read")
			}
			if _, err := env.Secret("plain-literal"); steps.Classify(err) != messages.StepErrConfig {
				return steps.Plan{}, errors.New("a literal was resolved")
			}
			return steps.Plan{Action: messages.ActionUnchanged}, nil
		},
		Apply: func(context.Context, *steps.Env) (steps.Applied, error) { return steps.Applied{}, nil }})
	cluster := messages.FleetCluster{Name: "alpha", Nodes: []messages.FleetNode{{Name: "n1", Role: "controlplane"}},
		Network: messages.FleetNetwork{LoginServer: "http://127.0.0.1:1", AuthKeyFrom: "env:X"},
		Cluster: messages.FleetKube{Provider: "kubernetes", KubeconfigFrom: "env:KC"}}
	args, _ := json.Marshal(messages.StepArgs{V: 1, Step: "read_secret", Op: "plan", Cluster: cluster})
	out, err := tasks.StepTask{Steps: reg}.Run(context.Background(), &tasks.Env{Node: "n1", Cluster: "alpha"}, args)
	if err != nil || out.Outcome != messages.OutcomeOK {
		t.Fatalf("%+v %v %+v", out, err, out.Data)
	}
}
