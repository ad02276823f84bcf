package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// The fleet view heads each cluster with its status line, from the last
// verification that covered it.
func TestPrintStatusClusterLines(t *testing.T) {
	at := time.Date(2026, 11, 29, 21, 4, 5, 0, time.UTC)
	st := messages.StatusReply{V: messages.Version, HeartbeatInterval: "5s",
		Nodes: []messages.NodeStatus{
			{Name: "x1", State: messages.StateOnline},
			{Name: "a1", Cluster: "a", State: messages.StateOnline},
			{Name: "b1", Cluster: "b", State: messages.StateOnline},
			{Name: "c1", Cluster: "c", State: messages.StateOnline},
		},
		Clusters: []messages.ClusterStatus{
			{Name: "", OverallStatus: messages.Degraded, Layers: map[string]string{"host": messages.Degraded}, LastVerified: at},
			{Name: "a", OverallStatus: messages.Healthy, Layers: map[string]string{"host": messages.Healthy, "cluster": messages.Healthy}, LastVerified: at},
			{Name: "b", OverallStatus: messages.Unhealthy, Layers: map[string]string{"host": messages.Healthy, "cluster": messages.Unhealthy}, LastVerified: at},
			{Name: "c"},
		},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	for _, want := range []string{
		"CLUSTER (no cluster)  ⚠ degraded  host⚠  (verified 2026-11-29 21:04:05Z)",
		"CLUSTER a  ✓ healthy  host✓ cluster✓  (verified 2026-11-29 21:04:05Z)",
		"CLUSTER b  ✗ unhealthy  host✓ cluster✗  (verified 2026-11-29 21:04:05Z)",
		"CLUSTER c  ? not verified yet",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status view lacks %q:\n%s", want, b.String())
		}
	}
}
