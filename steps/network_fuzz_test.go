package steps

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// FuzzNetworkDecoders: what Headscale answers and what an Undo receives
// are decoded without panicking; a Headscale id decodes to the number it
// spells; an undo with no API key or tailscaled fails before any write.
func FuzzNetworkDecoders(f *testing.F) {
	for _, s := range []string{
		`{"users":[{"id":"1","name":"cluster-c1"}]}`,
		`{"nodes":[{"id":"7","name":"guildnet-router","givenName":"r","user":{"id":"1","name":"u"},"approvedRoutes":["10.0.0.0/24"],"availableRoutes":["10.0.0.0/24","bad"]}]}`,
		`{"preAuthKey":{"key":"k"}}`, `"18446744073709551615"`, `"18446744073709551616"`, `-1`, `1e3`, `null`, `""`,
		`{"id":3,"name":"cluster-c1"}`, `{"nodes":[{"id":1,"node":"n1","approved":["10.0.0.0/24"]}]}`,
		`{"logged_out":true}`, `{"control_url":"http://x","advertise_routes":["nope"]}`, "\x00\xff", `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var users struct {
			Users []hsUser `json:"users"`
		}
		_ = json.Unmarshal(b, &users)
		var nodes struct {
			Nodes []hsNode `json:"nodes"`
		}
		_ = json.Unmarshal(b, &nodes)
		var id hsID
		if json.Unmarshal(b, &id) == nil && id != 0 {
			var s string
			if json.Unmarshal(b, &s) != nil {
				s = string(b)
			}
			if v, err := strconv.ParseUint(s, 10, 64); err != nil || v != uint64(id) {
				t.Fatalf("id %q decoded to %d", b, id)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		env := &Env{Node: "n1", Spec: messages.FleetCluster{Name: "c1"},
			Settings: config.Settings{"TS_SOCKET": filepath.Join(t.TempDir(), "none.sock")}}
		if err := undoHeadscaleUser(ctx, env, b); err == nil && json.Valid(b) {
			var u headscaleUserUndo
			if json.Unmarshal(b, &u) == nil && u.ID != 0 {
				t.Fatalf("undo of user %d succeeded without an API key", u.ID)
			}
		}
		_ = undoRoutesApproved(ctx, env, b)
		_ = undoTailscaleLogin(ctx, env, b)
	})
}
