package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/deploytest"
)

// The agent's systemd unit and DaemonSet must parse with the real CLI.
func TestDeployCommandLines(t *testing.T) {
	deploy := filepath.Join("..", "..", "deploy")
	unit, err := deploytest.ExecStart(filepath.Join(deploy, "systemd", "metaguildnet-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := deploytest.ContainerArgs(filepath.Join(deploy, "kubernetes", "agent-daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds["agent"]) == 0 || len(ds["state-dir"]) == 0 {
		t.Fatalf("DaemonSet lacks the agent container or the state-dir init container: %v", ds)
	}
	for name, tc := range map[string]struct {
		argv []string
		want string
	}{
		"systemd":        {unit, "run"},
		"daemonset":      {ds["agent"], "run"},
		"daemonset init": {ds["state-dir"], "chown-state-dir"},
	} {
		if filepath.Base(tc.argv[0]) != "agent" {
			t.Fatalf("%s runs %s", name, tc.argv[0])
		}
		cmd, err := cli.CheckArgs(newRoot(), tc.argv[1:])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cmd.Name() != tc.want {
			t.Fatalf("%s runs %q, want %s", name, cmd.CommandPath(), tc.want)
		}
	}
}

func TestVersionSubcommand(t *testing.T) {
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"version", "--json"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	var info buildinfo.Info
	if err := json.Unmarshal(out.Bytes(), &info); err != nil || info.Version != buildinfo.Version || info.GoVersion == "" {
		t.Fatalf("agent version --json printed %q (%v)", out.String(), err)
	}
}

// systemd accepts the hardened unit as written (no ignored settings).
func TestSystemdUnitVerifies(t *testing.T) {
	deploytest.RequireVerifiedUnit(t, filepath.Join("..", "..", "deploy", "systemd", "metaguildnet-agent.service"))
}
