package steps

import "testing"

func TestFindNode(t *testing.T) {
	nodes := []hsNode{
		{ID: 1, Name: "guildnet-router", GivenName: "guildnet-router"},                  // old, offline
		{ID: 3, Name: "guildnet-router", GivenName: "guildnet-router-x1", Online: true}, // registered again
		{ID: 2, Name: "worker", GivenName: "worker"},
		{ID: 4, Name: "host", GivenName: "w2"},
		{ID: 5, Name: "stale", GivenName: "stale"},
		{ID: 6, Name: "stale", GivenName: "stale-2"},
	}
	for host, want := range map[string]hsID{"guildnet-router": 3, "worker": 2, "w2": 4, "stale": 6, "none": 0} {
		i := findNode(nodes, host)
		got := hsID(0)
		if i >= 0 {
			got = nodes[i].ID
		}
		if got != want {
			t.Errorf("findNode(%q) = node %d, want %d", host, got, want)
		}
	}
}
