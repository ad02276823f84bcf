package controller

import (
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

// TestClusterAgentPrefersTheHostAppNode: the cluster's checks go to the
// node that runs the host app (only an agent there reaches its loopback),
// then to a controlplane node, then to any online node.
func TestClusterAgentPrefersTheHostAppNode(t *testing.T) {
	on, off := messages.StateOnline, messages.StateOffline
	for _, tc := range []struct {
		name string
		ms   []member
		want string
	}{
		{"host app by role", []member{{name: "a", role: "controlplane", state: on}, {name: "b", role: "hostapp", state: on, hostApp: true}}, "b"},
		{"host app by label", []member{{name: "a", role: "controlplane", state: on}, {name: "b", role: "worker", state: on, hostApp: true}}, "b"},
		{"host app offline", []member{{name: "a", role: "worker", state: on}, {name: "b", role: "controlplane", state: on}, {name: "c", state: off, hostApp: true}}, "b"},
		{"no controlplane", []member{{name: "a", role: "worker", state: off}, {name: "b", role: "worker", state: on}}, "b"},
		{"none online", []member{{name: "a", role: "controlplane", state: off}}, ""},
	} {
		if got := clusterAgent(tc.ms); got != tc.want {
			t.Errorf("%s: clusterAgent = %q, want %q", tc.name, got, tc.want)
		}
	}
}
