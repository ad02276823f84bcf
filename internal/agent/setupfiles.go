package agent

import (
	"maps"
	"os"
	"path/filepath"

	"github.com/guildnet/metaguildnet/internal/config"
)

// Files setup hands an agent (steps kubeconfig_install): the cluster's
// kubeconfig and talosconfig, kept 0600 in the state dir.
const (
	SetupKubeconfigFile  = "kubeconfig"
	SetupTalosconfigFile = "talosconfig"
)

// withSetupFiles returns settings with KUBECONFIG and TALOSCONFIG pointing
// at the state dir's files from setup when they are unset and the files
// exist; settings itself is not changed. Looked at per task, so files that
// setup writes while the agent runs are used from the next task on.
func withSetupFiles(settings config.Settings, stateDir string) config.Settings {
	if stateDir == "" {
		return settings
	}
	var out config.Settings
	for key, file := range map[string]string{"KUBECONFIG": SetupKubeconfigFile, "TALOSCONFIG": SetupTalosconfigFile} {
		if settings.Get(key, "") != "" {
			continue
		}
		p := filepath.Join(stateDir, file)
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			continue
		}
		if out == nil {
			out = maps.Clone(settings)
			if out == nil {
				out = config.Settings{}
			}
		}
		out[key] = p
	}
	if out == nil {
		return settings
	}
	return out
}
