package checks

// Talos checks of the cluster layer, cluster-scoped, through the talos machinery client (mTLS
// gRPC to apid on :50000). They look only when setting TALOSCONFIG names a
// talosconfig; otherwise they pass as not applicable.
// The client side lives in talos_client.go.

import (
	"context"
	"time"
)

// TalosChecks are the Talos checks of the cluster layer.
func TalosChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "talos_apid_version",
			Description: "apid answers Version on every Talos node (TALOS_NODES, else the talosconfig's nodes)",
			Timeout:     10 * time.Second,
			Run:         withTalos(talosVersion),
		},
		{
			Name:        "talos_etcd_members",
			Description: "etcd lists its members (no learners left) on the control plane",
			Timeout:     10 * time.Second,
			Run:         withTalos(talosEtcdMembers),
		},
		{
			Name:        "talos_services_up",
			Description: "every Talos service on every node is Running (or Finished) and not unhealthy",
			Timeout:     10 * time.Second,
			Run:         withTalos(talosServices),
		},
	})
}

// Which Talos check to run (see runTalos).
type talosCheck int

const (
	talosVersion talosCheck = iota
	talosEtcdMembers
	talosServices
)

func withTalos(which talosCheck) func(context.Context, *CheckEnv) Result {
	return func(ctx context.Context, cx *CheckEnv) Result {
		path := cx.Setting("TALOSCONFIG", "")
		if path == "" {
			return NotConfigured("TALOSCONFIG", "TALOSCONFIG is not set (no Talos apid to ask)")
		}
		return runTalos(ctx, cx, path, which)
	}
}
