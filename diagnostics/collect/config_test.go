package collect

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
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
	d := dataOf[ConfigData](t, s)
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

// FuzzKubeconfig: any kubeconfig bytes parse or fail without panicking,
// and the secret values found in them are what the redactor learns.
func FuzzKubeconfig(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nclusters:\n- name: c\n  cluster: {server: https://10.0.0.10:6443}\nusers:\n- name: u\n  user: {token: abcdef123}\n"))
	f.Add([]byte("users: [{user: {client-certificate-data: '!!notbase64', exec: {command: x}}}]"))
	f.Add([]byte("current-context: [1, 2]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "kubeconfig")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ki, err := readKubeconfig(p, 1<<20)
		if err == nil && ki == nil {
			t.Fatal("nil info without an error")
		}
		env := &Env{WorkDir: dir, Home: dir, Settings: map[string]string{"KUBECONFIG": p}}
		env.Prepare()
		kc, err := parseKubeconfig(data)
		if err != nil {
			return
		}
		for _, u := range kc.Users {
			v := strings.TrimSpace(u.User.Token)
			if len(v) >= 4 && !strings.Contains("x [REDACTED] y", v) && strings.Contains(env.Redact.String("x "+v+" y"), v) {
				t.Fatalf("kubeconfig token %q not redacted", v)
			}
		}
	})
}

// FuzzConfigJSON: any config.json parses or fails without panicking, and
// its auth_key never survives the config collector.
func FuzzConfigJSON(f *testing.F) {
	f.Add([]byte(`{"auth_key":"tskey-auth-x1","hostname":"h"}`))
	f.Add([]byte(`{"auth_key":{"nested":"value1234"}}`))
	f.Add([]byte(`[1,2,3]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, ".guildnet"), 0o755)
		if err := os.WriteFile(filepath.Join(dir, ".guildnet", "config.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		env := &Env{WorkDir: dir, Home: dir, Settings: map[string]string{}, TailnetIPs: []string{}}
		env.Prepare()
		s, err := Config{}.Collect(context.Background(), env)
		if err != nil {
			t.Fatal(err)
		}
		d := dataOf[ConfigData](t, s)
		if d.GuildNet == nil {
			return
		}
		if v, ok := d.GuildNet.Fields["auth_key"]; ok && v != "" && v != "[REDACTED]" {
			t.Fatalf("auth_key shown as %q", v)
		}
	})
}
