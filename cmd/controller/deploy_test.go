package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/deploytest"
)

// The controller's systemd unit must parse with the real CLI.
func TestDeployCommandLines(t *testing.T) {
	argv, err := deploytest.ExecStart(filepath.Join("..", "..", "deploy", "systemd", "metaguildnet-controller.service"))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(argv[0]) != "controller" {
		t.Fatalf("ExecStart runs %s", argv[0])
	}
	cmd, err := cli.CheckArgs(newRoot(), argv[1:])
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Name() != "serve" {
		t.Fatalf("unit runs %q, want serve", cmd.CommandPath())
	}
}

func TestCheckArgsRefusesBadLines(t *testing.T) {
	for _, argv := range [][]string{{"serve", "--no-such"}, {"run", "a", "b"}, {"nodes"}} {
		if _, err := cli.CheckArgs(newRoot(), argv); err == nil {
			t.Errorf("%v accepted", argv)
		}
	}
}

// `controller version` prints what the build stamped.
func TestVersionSubcommand(t *testing.T) {
	defer func(v string) { buildinfo.Version = v }(buildinfo.Version)
	buildinfo.Version = "v9.9.9-test"
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "version:    v9.9.9-test") || !strings.Contains(out.String(), "go:") {
		t.Fatalf("controller version printed %q", out.String())
	}
}

// systemd accepts the hardened unit as written (no ignored settings).
func TestSystemdUnitVerifies(t *testing.T) {
	deploytest.RequireVerifiedUnit(t, filepath.Join("..", "..", "deploy", "systemd", "metaguildnet-controller.service"))
}
