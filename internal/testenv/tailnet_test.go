package testenv

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"tailscale.com/tsnet"
)

func startHeadscale(t *testing.T) *Headscale {
	t.Helper()
	Require(t, NeedHeadscale)
	ctx := testCtx(t, time.Minute)
	h, err := StartHeadscale(ctx, HeadscaleOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	t.Logf("headscale %s healthy in %v", HeadscaleVersion, h.StartedIn)
	return h
}

func healthOK(url string) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestHeadscaleUserAndKeys(t *testing.T) {
	h := startHeadscale(t)
	ctx := testCtx(t, time.Minute)
	u, err := h.CreateUser(ctx, "guildnet")
	if err != nil {
		t.Fatal(err)
	}
	if u.ID == 0 || u.Name != "guildnet" {
		t.Fatalf("user = %+v", u)
	}
	users, err := h.ListUsers(ctx)
	if err != nil || len(users) != 1 {
		t.Fatalf("users = %+v, %v", users, err)
	}
	tests := []struct {
		name                string
		reusable, ephemeral bool
		expiry              time.Duration
	}{
		{"bootstrap key (reusable, 168h)", true, false, 168 * time.Hour},
		{"ephemeral", false, true, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := h.CreatePreAuthKey(ctx, u.ID, tt.reusable, tt.ephemeral, tt.expiry)
			if err != nil {
				t.Fatal(err)
			}
			if len(key) < 16 {
				t.Errorf("key %q looks too short", key)
			}
		})
	}
	nodes, err := h.ListNodes(ctx)
	if err != nil || len(nodes) != 0 {
		t.Errorf("nodes = %+v, %v", nodes, err)
	}
}

func TestHeadscaleStopStart(t *testing.T) {
	h := startHeadscale(t)
	ctx := testCtx(t, time.Minute)
	if _, err := h.CreateUser(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	h.Stop()
	if healthOK(h.URL()) {
		t.Fatal("/health answers after Stop")
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !healthOK(h.URL()) {
		t.Fatal("/health fails after Start")
	}
	users, err := h.ListUsers(ctx)
	if err != nil || len(users) != 1 || users[0].Name != "kept" {
		t.Errorf("state not kept across restart: %+v, %v", users, err)
	}
}

// TestTailnetRoute: a router node joins Headscale and advertises GuildNet's
// routes; once approved, a second node sees them as the router's primary
// routes; unapproving removes them; deleting the node removes it.
func TestTailnetRoute(t *testing.T) {
	Require(t, NeedHeadscale, NeedNetNS)
	RequireNetNS(t)
	h := startHeadscale(t)
	ctx := testCtx(t, 2*time.Minute)
	u, err := h.CreateUser(ctx, "cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	key, err := h.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	routes := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("10.244.0.0/16")}
	start := time.Now()
	router, st, err := StartTSNet(ctx, TSNetOptions{
		ControlURL: h.URL(), AuthKey: key, Hostname: "guildnet-router",
		Dir: t.TempDir(), AdvertiseRoutes: routes,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Close() })
	t.Logf("router joined in %v with %v", time.Since(start), st.TailscaleIPs)
	if len(st.TailscaleIPs) == 0 {
		t.Fatal("router has no tailnet IP")
	}
	start = time.Now()
	client, _, err := StartTSNet(ctx, TSNetOptions{
		ControlURL: h.URL(), AuthKey: key, Hostname: "agent-1", Dir: t.TempDir(), AcceptRoutes: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	t.Logf("second node joined in %v", time.Since(start))

	// Headscale sees the advertised routes, not yet approved.
	var node HeadscaleNode
	waitFor(t, ctx, "router advertises its routes to Headscale", func() bool {
		node, err = h.NodeByName(ctx, "guildnet-router")
		return err == nil && len(node.AvailableRoutes) == len(routes)
	})
	if len(node.ApprovedRoutes) != 0 {
		t.Fatalf("routes approved before approval: %v", node.ApprovedRoutes)
	}
	if got := peerPrimaryRoutes(ctx, t, client, "guildnet-router"); len(got) != 0 {
		t.Fatalf("peer sees primary routes before approval: %v", got)
	}

	want := []string{"10.244.0.0/16", "10.96.0.0/12"}
	if err := h.ApproveRoutes(ctx, node.ID, want...); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitFor(t, ctx, "peer sees the approved routes as primary", func() bool {
		return slices.Equal(peerPrimaryRoutes(ctx, t, client, "guildnet-router"), want)
	})
	t.Logf("approved routes primary on the peer after %v", time.Since(start))

	// The "route unapproved" fault knob.
	if err := h.ApproveRoutes(ctx, node.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "peer loses the unapproved routes", func() bool {
		return len(peerPrimaryRoutes(ctx, t, client, "guildnet-router")) == 0
	})

	if err := h.DeleteNode(ctx, node.ID); err != nil {
		t.Fatal(err)
	}
	nodes, err := h.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == node.ID {
			t.Errorf("node %d still listed after DeleteNode", node.ID)
		}
	}
}

// peerPrimaryRoutes returns the sorted primary routes that node's status
// shows for the peer named host.
func peerPrimaryRoutes(ctx context.Context, t *testing.T, node *tsnet.Server, host string) []string {
	t.Helper()
	lc, err := node.LocalClient()
	if err != nil {
		t.Fatalf("local client: %v", err)
	}
	st, err := lc.Status(ctx)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var out []string
	for _, p := range st.Peer {
		if p.HostName != host || p.PrimaryRoutes == nil {
			continue
		}
		for _, r := range p.PrimaryRoutes.All() {
			out = append(out, r.String())
		}
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond every 100ms until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	if err := poll(ctx, 100*time.Millisecond, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("waiting until %s: %v", what, err)
	}
}

func TestRunsInNetNS(t *testing.T) {
	Require(t, NeedNetNS)
	RequireNetNS(t)
}
