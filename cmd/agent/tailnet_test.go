package main

import (
	"testing"

	"github.com/guildnet/metaguildnet/internal/agent"
)

func TestTailnetDefaults(t *testing.T) {
	t.Setenv("TS_AUTHKEY", "")
	t.Setenv("TS_LOGIN_SERVER", "")
	for _, tt := range []struct {
		name       string
		mode, key  string
		controller string
		want       string
	}{
		{"tsnet, default controller", agent.TailnetTSNet, "", defaultController, defaultTailnetController},
		{"auto with a key", agent.TailnetAuto, "k", defaultController, defaultTailnetController},
		{"auto without key or state", agent.TailnetAuto, "", defaultController, defaultController},
		{"off", agent.TailnetOff, "k", defaultController, defaultController},
		{"tsnet, controller given", agent.TailnetTSNet, "k", "nats://100.64.0.1:4222", "nats://100.64.0.1:4222"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := agent.Config{ControllerURL: tt.controller, StateDir: t.TempDir(),
				Tailnet: agent.TailnetConfig{Mode: tt.mode, AuthKey: tt.key}}
			tailnetDefaults(&cfg)
			if cfg.ControllerURL != tt.want {
				t.Errorf("controller = %s, want %s", cfg.ControllerURL, tt.want)
			}
		})
	}
	t.Setenv("TS_AUTHKEY", "from-env")
	cfg := agent.Config{ControllerURL: defaultController, StateDir: t.TempDir(), Tailnet: agent.TailnetConfig{Mode: agent.TailnetAuto}}
	tailnetDefaults(&cfg)
	if cfg.Tailnet.AuthKey != "from-env" || cfg.ControllerURL != defaultTailnetController {
		t.Errorf("TS_AUTHKEY not used: %+v", cfg)
	}
}
