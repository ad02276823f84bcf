package collect

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	plant "github.com/guildnet/metaguildnet/diagnostics/diagtest"
)

// plantedEnv is a collector environment for a planted node.
func plantedEnv(p plant.Node) *Env {
	return &Env{Node: "n1", Settings: p.Settings, WorkDir: p.WorkDir, Home: p.Home,
		Now: func() time.Time { return plant.Now }, TailnetIPs: []string{"100.64.0.7"}}
}

func TestConfig(t *testing.T) {
	p := plant.New(t)
	env := plantedEnv(p)
	env.Prepare()
	s, err := Config{}.Collect(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]float64{
		"env_files_present": 2, "guildnet_config_present": 1, "kubeconfig_present": 1,
		"kubeconfig_client_cert_days_left": 3, "tls_cert_days_left_min": 400, "tls_cert_missing_tailnet_ip": 1,
	}
	for m, want := range checks {
		if got, ok := s.Metrics[m]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", m, got, ok, want)
		}
	}
	d := s.Data.(ConfigData)
	if d.Kubeconfig == nil || d.Kubeconfig.Server != "https://10.0.0.10:6443" || d.Kubeconfig.AuthMethod != "client-certificate" {
		t.Errorf("kubeconfig = %+v", d.Kubeconfig)
	}
	if d.GuildNet.Fields["auth_key"] != "[REDACTED]" || d.GuildNet.Fields["hostname"] != "router-1" {
		t.Errorf("config.json fields = %v", d.GuildNet.Fields)
	}
	if !notesContain(s, "missing.crt") || !notesContain(s, "server.key: no PEM certificate") {
		t.Errorf("notes = %v", s.Notes)
	}
	out, _ := json.Marshal(s)
	p.AssertClean(t, "config section", out)
	if !strings.Contains(string(out), `"key":"TS_ROUTES","value":"10.0.0.0/24"`) {
		t.Errorf("harmless values must stay readable: %s", out)
	}
}

// Every collector's output, as JSON, holds none of the planted secrets.
func TestNoSecretLeavesTheCollectors(t *testing.T) {
	p := plant.New(t)
	env := plantedEnv(p)
	env.Prepare()
	env.LogPatterns = append(env.LogPatterns, mustRE(`ERROR|INFO`))
	secs := Run(context.Background(), env, Default())
	out, err := json.Marshal(secs)
	if err != nil {
		t.Fatal(err)
	}
	p.AssertClean(t, "sections", out)
	var logs Section
	for _, s := range secs {
		if s.Error != "" {
			t.Errorf("section %s failed: %s", s.Name, s.Error)
		}
		if s.Name == "logs" {
			logs = s
		}
	}
	if len(logs.Lines) != p.LogLines {
		t.Errorf("want the %d planted log lines (redacted), got %d", p.LogLines, len(logs.Lines))
	}
}
