package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/guildnet/metaguildnet/internal/config"
)

func TestWithSetupFiles(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, SetupKubeconfigFile)
	tc := filepath.Join(dir, SetupTalosconfigFile)
	tests := []struct {
		name     string
		files    []string
		settings config.Settings
		want     config.Settings
	}{
		{"no files: unchanged", nil, config.Settings{"X": "1"}, config.Settings{"X": "1"}},
		{"files used when unset", []string{kc, tc}, config.Settings{"X": "1"}, config.Settings{"X": "1", "KUBECONFIG": kc, "TALOSCONFIG": tc}},
		{"a setting wins", []string{kc, tc}, config.Settings{"KUBECONFIG": "/etc/k"}, config.Settings{"KUBECONFIG": "/etc/k", "TALOSCONFIG": tc}},
		{"nil settings", []string{kc}, nil, config.Settings{"KUBECONFIG": kc}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(kc)
			os.Remove(tc)
			for _, f := range tt.files {
				if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := len(tt.settings)
			got := withSetupFiles(tt.settings, dir)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
			if len(tt.settings) != before {
				t.Fatal("the agent's settings were changed in place")
			}
		})
	}
}
