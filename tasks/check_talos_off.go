//go:build !mgn_talos

package tasks

import "context"

// TalosSupport reports whether this build carries the Talos checks.
const TalosSupport = false

func runTalos(_ context.Context, _ *CheckEnv, path string, _ talosCheck) Result {
	return Unknown("TALOSCONFIG is set (%s) but this agent is built without the Talos checks (build tag mgn_talos)", path)
}
