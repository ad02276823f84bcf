package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/tailnet"
)

const (
	defaultController        = "nats://127.0.0.1:4222"
	defaultTailnetController = "nats://guildnet-controller:4222"
)

// tailnetFlags adds run's tailnet flags (docs/TAILNET.md).
func tailnetFlags(cmd *cobra.Command, tc *agent.TailnetConfig) {
	f := cmd.Flags()
	f.StringVar(&tc.Mode, "tailnet", agent.TailnetAuto, "reach the controller over the tailnet: auto (tsnet with an auth key or tsnet state, else the host's tailscaled when it runs, else off), tsnet, host or off; --tailnet alone means tsnet")
	f.Lookup("tailnet").NoOptDefVal = agent.TailnetTSNet
	f.StringVar(&tc.AuthKey, "ts-authkey", "", "tailnet auth key for the first join with tsnet (default $TS_AUTHKEY)")
	f.StringVar(&tc.ControlURL, "ts-login-server", "", "tailnet login server, e.g. Headscale's URL (default $TS_LOGIN_SERVER)")
	f.StringVar(&tc.Hostname, "ts-hostname", "", "the node's name on the tailnet (default: --name)")
	f.DurationVar(&tc.ProbeEvery, "ts-probe-every", 0, "how often to measure the path to the controller (default 30s)")
}

// tailnetDefaults fills TS_AUTHKEY and TS_LOGIN_SERVER, and points an
// agent that will use tsnet at the controller's tailnet name when
// --controller was left at the loopback default.
func tailnetDefaults(cfg *agent.Config) {
	tc := &cfg.Tailnet
	if tc.AuthKey == "" {
		tc.AuthKey = os.Getenv("TS_AUTHKEY")
	}
	if tc.ControlURL == "" {
		tc.ControlURL = os.Getenv("TS_LOGIN_SERVER")
	}
	dir := tc.Dir
	if dir == "" {
		dir = filepath.Join(cfg.StateDir, "tailnet")
	}
	tsnet := tc.Mode == agent.TailnetTSNet || (tc.Mode == agent.TailnetAuto && (tc.AuthKey != "" || tailnet.HasState(dir)))
	if tsnet && cfg.ControllerURL == defaultController {
		cfg.ControllerURL = defaultTailnetController
	}
}
