package controller

import (
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

// TestClusterAgents: the host app's checks go to the node that runs the
// host app (only an agent there reaches its loopback); the other cluster
// checks go to a controlplane node, else another online node, else the
// host app's node; a host app node that is not online is named.
func TestClusterAgents(t *testing.T) {
	on, off := messages.StateOnline, messages.StateOffline
	for _, tc := range []struct {
		name                 string
		ms                   []member
		agent, hostApp, down string
	}{
		{"host app by role", []member{{name: "a", role: "controlplane", state: on}, {name: "b", role: "hostapp", state: on, hostApp: true}}, "a", "b", ""},
		{"host app by label", []member{{name: "a", role: "controlplane", state: on}, {name: "b", role: "worker", state: on, hostApp: true}}, "a", "b", ""},
		{"host app on the controlplane", []member{{name: "a", role: "controlplane", state: on}, {name: "b", role: "controlplane", state: on, hostApp: true}}, "b", "b", ""},
		{"host app alone", []member{{name: "a", role: "hostapp", state: on, hostApp: true}, {name: "b", role: "controlplane", state: off}}, "a", "a", ""},
		{"host app offline", []member{{name: "a", role: "worker", state: on}, {name: "b", role: "controlplane", state: on}, {name: "c", state: off, hostApp: true}}, "b", "", "c"},
		{"no controlplane", []member{{name: "a", role: "worker", state: off}, {name: "b", role: "worker", state: on}}, "b", "", ""},
		{"none online", []member{{name: "a", role: "controlplane", state: off}}, "", "", ""},
	} {
		a, h, d := clusterAgents(tc.ms)
		if a != tc.agent || h != tc.hostApp || d != tc.down {
			t.Errorf("%s: clusterAgents = %q, %q, %q; want %q, %q, %q", tc.name, a, h, d, tc.agent, tc.hostApp, tc.down)
		}
	}
}
