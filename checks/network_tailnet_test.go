package checks

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// TestNetworkChecksOnARealTailnet runs the network checks on a tsnet router
// node (its own LocalClient injected, as an agent that is a tsnet node
// does) against a real Headscale, with a second tsnet node standing in for
// the controller. It runs only inside the loopback-only network namespace
// TestMain enters (testenv.RunInNetNS).
func TestNetworkChecksOnARealTailnet(t *testing.T) {
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedNetNS)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	h, err := testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
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
	router, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: h.URL(), AuthKey: key, Hostname: "guildnet-router", Dir: t.TempDir(), AdvertiseRoutes: routes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Close() })
	ctl, ctlStatus, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: h.URL(), AuthKey: key, Hostname: "guildnet-controller", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	lc, err := router.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{Node: "guildnet-router", Cluster: "c1", Role: "router", Settings: config.Settings{
		"METAGN_CONTROLLER_TAILNET_IP": ctlStatus.TailscaleIPs[0].String(),
		"TS_LOGIN_SERVER":              h.URL(),
		"TS_SOCKET":                    "/nonexistent/tailscaled.sock", // the injected client must be used
	}}
	verify := func() map[string]messages.CheckResult {
		return byName(runArgs(ctx, t, env, `{"layers":["network"],"scope":"node"}`, RunOptions{Clients: map[string]any{TailscaleClientKey: lc}}))
	}
	// eventually polls verify until ok accepts the results, or fails with
	// the last ones.
	eventually := func(what string, ok func(map[string]messages.CheckResult) bool) map[string]messages.CheckResult {
		t.Helper()
		var res map[string]messages.CheckResult
		poll.UntilOK(t, 60*time.Second, what, func() error {
			if res = verify(); ok(res) {
				return nil
			}
			return resultsError(res)
		})
		return res
	}
	is := func(r messages.CheckResult, status, msg string) bool {
		return r.Status == status && strings.Contains(r.Message, msg)
	}

	// Routes advertised, none approved: the check names all three. (The
	// first TSMP ping may wait for the path to come up, and the tailnet may
	// carry a DERP health warning here: connected is pass or warn.)
	res := eventually("connected, controller reachable, routes unapproved", func(res map[string]messages.CheckResult) bool {
		return res["tailnet_connected"].Passed && strings.Contains(res["tailnet_connected"].Message, "connected") &&
			is(res["controller_reachable"], messages.CheckPass, "controller "+ctlStatus.TailscaleIPs[0].String()+" (guildnet-controller) answered") &&
			is(res["routes_approved"], messages.CheckFail, "10.0.0.0/24, 10.96.0.0/12, 10.244.0.0/16")
	})
	for name, want := range map[string]string{
		"tailscaled_running":  "backend Running",
		"login_server_health": h.URL() + "/health answered 200",
	} {
		if r := res[name]; r.Status != messages.CheckPass || !strings.Contains(r.Message, want) {
			t.Errorf("%s: %s %q, want pass containing %q", name, r.Status, r.Message, want)
		}
	}

	// Approving the routes on Headscale is not asserted here: in about half
	// the runs the router's own status (Self.PrimaryRoutes, which GuildNet's
	// route check reads) did not take the approval within 60 s while
	// Headscale listed the routes approved and a peer saw them as primary
	// within a second or two. That is a finding about Headscale v0.29.1:
	// it does not send an approval to the router's own map session (seen
	// with real tailscaled too, 3 runs of 3), so the router sees its
	// routes only once that session is renewed; the routes_active setup
	// step does that, and TestNetworkChecksThroughHostTailscaled checks
	// approved routes after a renewal.

	// The login server goes away: its check names it; the tailnet itself
	// keeps working for a while, so nothing else is asserted.
	h.Stop()
	eventually("login server down", func(res map[string]messages.CheckResult) bool {
		return is(res["login_server_health"], messages.CheckFail, h.URL()+"/health")
	})
}

// resultsError lists check results, by check name, as what a test saw
// instead of what it waited for.
func resultsError(res map[string]messages.CheckResult) error {
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(res)) {
		fmt.Fprintf(&b, "\n%s: %s %q", n, res[n].Status, res[n].Message)
	}
	return errors.New("the checks say:" + b.String())
}
