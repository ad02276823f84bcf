package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

// tailnetFlags adds serve's tailnet and TLS flags (docs/TAILNET.md).
func tailnetFlags(cmd *cobra.Command, o *controller.Options) {
	f := cmd.Flags()
	f.BoolVar(&o.Tailnet.Enabled, "tailnet", false, "join the tailnet with tsnet and serve NATS only on the tailnet address (the local CLI uses DATA_DIR/nats.sock)")
	f.StringVar(&o.Tailnet.AuthKey, "ts-authkey", "", "tailnet auth key for the first join (default $TS_AUTHKEY)")
	f.StringVar(&o.Tailnet.ControlURL, "ts-login-server", "", "tailnet login server, e.g. Headscale's URL (default $TS_LOGIN_SERVER)")
	f.StringVar(&o.Tailnet.Hostname, "ts-hostname", controller.DefaultTailnetHostname, "the controller's name on the tailnet")
	f.IntVar(&o.Tailnet.Port, "ts-port", 4222, "NATS port on the tailnet address")
	f.BoolVar(&o.TLS.Enabled, "tls", false, "serve NATS with TLS from a CA kept in DATA_DIR/tls; join tokens then carry the CA's pin")
	f.StringVar(&o.TLS.CertFile, "tls-cert", "", "serve TLS with this certificate chain (PEM) instead of the generated CA")
	f.StringVar(&o.TLS.KeyFile, "tls-key", "", "key of --tls-cert (PEM)")
	f.StringSliceVar(&o.TLS.Hosts, "tls-host", nil, "extra names or IPs for the generated server certificate")
}

// tailnetEnv fills what the flags left empty from TS_AUTHKEY and
// TS_LOGIN_SERVER, and checks the combination.
func tailnetEnv(o *controller.Options) error {
	if o.Tailnet.AuthKey == "" {
		o.Tailnet.AuthKey = os.Getenv("TS_AUTHKEY")
	}
	if o.Tailnet.ControlURL == "" {
		o.Tailnet.ControlURL = os.Getenv("TS_LOGIN_SERVER")
	}
	if (o.TLS.CertFile == "") != (o.TLS.KeyFile == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if o.Tailnet.Enabled && strings.HasPrefix(o.Listen, "tailnet") {
		return fmt.Errorf("--tailnet (tsnet) and --listen %s (the host's tailscaled) exclude each other", o.Listen)
	}
	return nil
}

// tailnetSummary is the TAILNET column: "direct 0.4ms", "derp(999) 1.2ms".
func tailnetSummary(t *messages.TailnetFacts) string {
	if t == nil {
		return "-"
	}
	path := t.Path
	if path == "" {
		path = messages.PathUnknown
	}
	if t.Path == messages.PathDERP && t.DERPRegion != "" {
		path += "(" + t.DERPRegion + ")"
	}
	if t.RTTMS > 0 {
		path += fmt.Sprintf(" %.1fms", t.RTTMS)
	}
	if t.Hostname != "" {
		path = t.Hostname + " " + path
	}
	return path
}
