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
	if len(ds["agent"]) == 0 {
		t.Fatal("DaemonSet has no agent container")
	}
	for name, argv := range map[string][]string{"systemd": unit, "daemonset": ds["agent"]} {
		if filepath.Base(argv[0]) != "agent" {
			t.Fatalf("%s runs %s", name, argv[0])
		}
		cmd, err := cli.CheckArgs(newRoot(), argv[1:])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cmd.Name() != "run" {
			t.Fatalf("%s runs %q", name, cmd.CommandPath())
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
