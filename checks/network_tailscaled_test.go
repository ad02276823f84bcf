package checks

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"tailscale.com/ipn"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// TestNetworkChecksThroughHostTailscaled runs the network checks the way an
// agent on a host with tailscaled does: through the LocalAPI socket in
// setting TS_SOCKET, no client injected. The daemons are real tailscaled
// processes (userspace networking) in this test binary's loopback-only
// network namespace, against a real Headscale: a router, and a second node
// that stands for the controller and, as a worker, sees the router's
// routes. Logged out, logged in with routes unapproved, approved, stopped.
func TestNetworkChecksThroughHostTailscaled(t *testing.T) {
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedTailscaled, testenv.NeedNetNS)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	h, err := testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	router, err := testenv.StartTailscaled(ctx, testenv.TailscaledOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(router.Close)
	other, err := testenv.StartTailscaled(ctx, testenv.TailscaledOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)

	run := func(node, role string, settings map[string]string) map[string]messages.CheckResult {
		env := &Env{Node: node, Cluster: "c1", Role: role, Version: "test", Settings: config.Settings(settings)}
		return byName(runArgs(ctx, t, env, `{"layers":["network"],"scope":"node"}`, RunOptions{}))
	}
	is := func(r messages.CheckResult, status, msg string) bool {
		return r.Status == status && strings.Contains(r.Message, msg)
	}
	eventually := func(what string, get func() map[string]messages.CheckResult, ok func(map[string]messages.CheckResult) bool) {
		t.Helper()
		poll.UntilOK(t, 60*time.Second, what, func() error {
			if res := get(); !ok(res) {
				return resultsError(res)
			}
			return nil
		})
	}
	routerSettings := map[string]string{"TS_SOCKET": router.Socket(), "TS_LOGIN_SERVER": h.URL()}
	routerChecks := func() map[string]messages.CheckResult { return run("n1", "router", routerSettings) }

	// Logged out: tailscaled answers, the tailnet is not connected.
	res := routerChecks()
	if r := res["tailscaled_running"]; !is(r, messages.CheckPass, "tailscaled 1.102.5 answers") || !strings.Contains(r.Message, "backend NeedsLogin") {
		t.Errorf("tailscaled_running logged out: %s %q", r.Status, r.Message)
	}
	if r := res["tailnet_connected"]; !is(r, messages.CheckFail, "backend state is NeedsLogin, want Running") {
		t.Errorf("tailnet_connected logged out: %s %q", r.Status, r.Message)
	}
	if r := res["controller_reachable"]; r.Status != messages.CheckSkipped || r.BlockedBy != "tailnet_connected" {
		t.Errorf("controller_reachable logged out: %s %q blocked by %q", r.Status, r.Message, r.BlockedBy)
	}

	// Logged in through the LocalAPI, routes advertised and not approved.
	u, err := h.CreateUser(ctx, "cluster-c1")
	if err != nil {
		t.Fatal(err)
	}
	key, err := h.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var routes []netip.Prefix
	for _, r := range strings.Split(DefaultTSRoutes, ",") {
		routes = append(routes, netip.MustParsePrefix(r))
	}
	rst, err := router.Login(ctx, testenv.TailscaledLogin{ControlURL: h.URL(), AuthKey: key, Hostname: "guildnet-router", AdvertiseRoutes: routes})
	if err != nil {
		t.Fatal(err)
	}
	ost, err := other.Login(ctx, testenv.TailscaledLogin{ControlURL: h.URL(), AuthKey: key, Hostname: "guildnet-controller", AcceptRoutes: true})
	if err != nil {
		t.Fatal(err)
	}
	ctlIP := ost.TailscaleIPs[0].String()
	routerSettings["METAGN_CONTROLLER_TAILNET_IP"] = ctlIP
	eventually("router connected, controller reachable, routes unapproved", routerChecks, func(res map[string]messages.CheckResult) bool {
		return res["tailnet_connected"].Passed && strings.Contains(res["tailnet_connected"].Message, "connected as guildnet-router ("+rst.TailscaleIPs[0].String()) &&
			is(res["controller_reachable"], messages.CheckPass, "controller "+ctlIP+" (guildnet-controller) answered") &&
			is(res["routes_approved"], messages.CheckFail, "routes not approved on this router (neither primary nor in AllowedIPs): 10.0.0.0/24, 10.96.0.0/12, 10.244.0.0/16")
	})

	// Approved on Headscale: the other node sees each route carried by the
	// router (what GuildNet's workers rely on).
	n, err := h.NodeByName(ctx, "guildnet-router")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.ApproveRoutes(ctx, n.ID, strings.Split(DefaultTSRoutes, ",")...); err != nil {
		t.Fatal(err)
	}
	workerChecks := func() map[string]messages.CheckResult {
		return run("n2", "worker", map[string]string{"TS_SOCKET": other.Socket(), "TS_ROUTES": DefaultTSRoutes})
	}
	eventually("worker sees the routes", workerChecks, func(res map[string]messages.CheckResult) bool {
		return is(res["routes_approved"], messages.CheckPass,
			"all 3 routes carried by online peers: 10.0.0.0/24 via guildnet-router; 10.96.0.0/12 via guildnet-router; 10.244.0.0/16 via guildnet-router")
	})

	// Headscale v0.29.1 sends the approval to the peers at once but not to
	// the router's own map session: its status (Self.PrimaryRoutes, which
	// the check reads) shows the routes only once the session is renewed
	// (seen here 3 runs of 3 with 60 s waits; ~1.5 s after a renewal). The
	// routes_active setup step renews it the same way, through the
	// LocalAPI.
	lc := router.LocalClient()
	for _, on := range []bool{false, true} {
		if _, err := lc.EditPrefs(ctx, &ipn.MaskedPrefs{Prefs: ipn.Prefs{WantRunning: on}, WantRunningSet: true}); err != nil {
			t.Fatal(err)
		}
	}
	// The router's own status takes the approval too (Self.PrimaryRoutes).
	eventually("router sees its routes approved", routerChecks, func(res map[string]messages.CheckResult) bool {
		return is(res["routes_approved"], messages.CheckPass, "all 3 routes approved: 10.0.0.0/24, 10.96.0.0/12, 10.244.0.0/16")
	})

	// tailscaled stops: the checks say it does not answer on its socket.
	router.Stop()
	res = routerChecks()
	if r := res["tailscaled_running"]; !is(r, messages.CheckFail, "tailscaled not answering: status from tailscaled socket "+router.Socket()) {
		t.Errorf("tailscaled_running stopped: %s %q", r.Status, r.Message)
	}
	if r := res["tailnet_connected"]; r.Status != messages.CheckSkipped || r.BlockedBy != "tailscaled_running" {
		t.Errorf("tailnet_connected stopped: %s %q blocked by %q", r.Status, r.Message, r.BlockedBy)
	}
}
