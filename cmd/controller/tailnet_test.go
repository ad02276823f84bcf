package main

import (
	"testing"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

func TestTailnetSummary(t *testing.T) {
	for _, tt := range []struct {
		in   *messages.TailnetFacts
		want string
	}{
		{nil, "-"},
		{&messages.TailnetFacts{Hostname: "n1", Path: messages.PathDirect, RTTMS: 0.31}, "n1 direct 0.3ms"},
		{&messages.TailnetFacts{Hostname: "n2", Path: messages.PathDERP, DERPRegion: "headscale", RTTMS: 1.25}, "n2 derp(headscale) 1.2ms"},
		{&messages.TailnetFacts{Hostname: "n3"}, "n3 unknown"},
	} {
		if got := tailnetSummary(tt.in); got != tt.want {
			t.Errorf("tailnetSummary(%+v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTailnetEnv(t *testing.T) {
	t.Setenv("TS_AUTHKEY", "tskey-from-env")
	t.Setenv("TS_LOGIN_SERVER", "http://127.0.0.1:8080")
	o := controller.Options{Tailnet: controller.TailnetOptions{Enabled: true, AuthKey: "tskey-flag"}}
	if err := tailnetEnv(&o); err != nil {
		t.Fatal(err)
	}
	if o.Tailnet.AuthKey != "tskey-flag" || o.Tailnet.ControlURL != "http://127.0.0.1:8080" {
		t.Errorf("flags must win over the environment, which fills the rest: %+v", o.Tailnet)
	}
	for name, o := range map[string]controller.Options{
		"cert without key":            {TLS: controller.TLSOptions{CertFile: "c.pem"}},
		"tsnet and host's tailscaled": {Listen: "tailnet", Tailnet: controller.TailnetOptions{Enabled: true}},
	} {
		if err := tailnetEnv(&o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
