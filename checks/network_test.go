package checks

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/types/key"
	"tailscale.com/types/views"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// localAPIStandIn serves the two LocalAPI endpoints the network checks use
// on a unix socket, so the real tailscale.com/client/local client talks to
// it exactly as it would to tailscaled. The host-tailscaled path itself
// (logged out, logged in, routes unapproved and approved, a worker seeing
// the router's routes, tailscaled stopped) runs against real tailscaled
// daemons in TestNetworkChecksThroughHostTailscaled; the stand-in keeps the
// states a real daemon cannot be put in on demand here (a standby router,
// offline from control, an offline router peer, a failed ping, exact
// latencies) and the settings' error paths.
type localAPIStandIn struct {
	Socket string
	mu     sync.Mutex
	status *ipnstate.Status
	ping   *ipnstate.PingResult
	pinged []string
	// peersAsked counts status requests with peers: only a non-router's
	// route check may make one.
	peersAsked int
}

func startLocalAPI(t *testing.T, st *ipnstate.Status, ping *ipnstate.PingResult) *localAPIStandIn {
	t.Helper()
	dir, err := os.MkdirTemp("", "mgn-ts") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &localAPIStandIn{Socket: filepath.Join(dir, "tailscaled.sock"), status: st, ping: ping}
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /localapi/v0/status", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		st := *s.status
		if r.URL.Query().Get("peers") == "false" {
			st.Peer = nil
		} else {
			s.peersAsked++
		}
		json.NewEncoder(w).Encode(&st)
	})
	mux.HandleFunc("POST /localapi/v0/ping", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.pinged = append(s.pinged, r.URL.Query().Get("ip")+" "+r.URL.Query().Get("type"))
		json.NewEncoder(w).Encode(s.ping)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func runningStatus(routes ...string) *ipnstate.Status {
	var prefixes []netip.Prefix
	for _, r := range routes {
		prefixes = append(prefixes, netip.MustParsePrefix(r))
	}
	pr := views.SliceOf(prefixes)
	return &ipnstate.Status{
		Version:      "1.102.5",
		BackendState: "Running",
		TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.64.0.7")},
		Self: &ipnstate.PeerStatus{
			HostName:      "guildnet-router",
			Online:        true,
			TailscaleIPs:  []netip.Addr{netip.MustParseAddr("100.64.0.7")},
			PrimaryRoutes: &pr,
		},
	}
}

// withPeer adds a peer (a router when it has routes) to a status.
func withPeer(st *ipnstate.Status, host string, online bool, primary, allowed []string) *ipnstate.Status {
	prefixes := func(ss []string) *views.Slice[netip.Prefix] {
		var ps []netip.Prefix
		for _, s := range ss {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		v := views.SliceOf(ps)
		return &v
	}
	if st.Peer == nil {
		st.Peer = map[key.NodePublic]*ipnstate.PeerStatus{}
	}
	st.Peer[key.NewNode().Public()] = &ipnstate.PeerStatus{HostName: host, Online: online, PrimaryRoutes: prefixes(primary), AllowedIPs: prefixes(allowed)}
	return st
}

// standbyStatus is a router that advertises every route but is primary for
// the first only: another router is primary for the rest.
func standbyStatus(routes ...string) *ipnstate.Status {
	st := runningStatus(routes[0])
	allowed := []netip.Prefix{netip.MustParsePrefix("100.64.0.7/32")}
	for _, r := range routes {
		allowed = append(allowed, netip.MustParsePrefix(r))
	}
	v := views.SliceOf(allowed)
	st.Self.AllowedIPs = &v
	return st
}

var networkNames = []string{"tailscaled_running", "tailnet_connected", "controller_reachable", "routes_approved", "login_server_health", "dns_resolution"}

func TestNetworkChecksThroughLocalAPI(t *testing.T) {
	allRoutes := strings.Split(DefaultTSRoutes, ",")
	okPing := &ipnstate.PingResult{IP: "100.64.0.1", NodeName: "controller", LatencySeconds: 0.0004, Endpoint: "127.0.0.1:41641"}

	type want struct{ status, msg, blockedBy string }
	for _, tc := range []struct {
		name     string
		status   *ipnstate.Status // nil: no tailscaled at all
		ping     *ipnstate.PingResult
		settings map[string]string
		role     string
		want     map[string]want
	}{
		{
			name: "healthy router", status: runningStatus(allRoutes...), ping: okPing, role: "router",
			settings: map[string]string{"METAGN_CONTROLLER_TAILNET_IP": "100.64.0.1", "METAGN_DNS_NAME": "localhost"},
			want: map[string]want{
				"tailscaled_running":   {messages.CheckPass, "tailscaled 1.102.5 answers, backend Running", ""},
				"tailnet_connected":    {messages.CheckPass, "connected as guildnet-router (100.64.0.7)", ""},
				"controller_reachable": {messages.CheckPass, "controller 100.64.0.1 (controller) answered", ""},
				"routes_approved":      {messages.CheckPass, "all 3 routes approved", ""},
				"login_server_health":  {messages.CheckNotConfigured, "not configured: neither TS_LOGIN_SERVER nor HEADSCALE_URL is set", ""},
				"dns_resolution":       {messages.CheckPass, "localhost resolves to", ""},
			},
		},
		{
			name: "no tailscaled", status: nil,
			settings: map[string]string{"METAGN_DNS_NAME": "none"},
			want: map[string]want{
				"tailscaled_running":   {messages.CheckFail, "tailscaled not answering: status from tailscaled socket /nonexistent/tailscaled.sock", ""},
				"tailnet_connected":    {messages.CheckSkipped, "blocked: tailscaled_running fail", "tailscaled_running"},
				"controller_reachable": {messages.CheckSkipped, "blocked: tailscaled_running fail", "tailscaled_running"},
				"routes_approved":      {messages.CheckSkipped, "", "tailscaled_running"},
				"dns_resolution":       {messages.CheckNotConfigured, "not configured: METAGN_DNS_NAME is none", ""},
			},
		},
		{
			name: "offline from control",
			status: func() *ipnstate.Status {
				s := runningStatus()
				s.Self.Online = false
				return s
			}(),
			settings: map[string]string{"TS_LOGIN_SERVER": "http://127.0.0.1:8081"},
			want: map[string]want{
				"tailnet_connected": {messages.CheckFail, "backend Running but not connected to http://127.0.0.1:8081", ""},
			},
		},
		{
			name: "standby router", status: standbyStatus(allRoutes...), role: "router",
			want: map[string]want{
				"routes_approved": {messages.CheckPass, "all 3 routes approved: 10.0.0.0/24, 10.96.0.0/12, 10.244.0.0/16; standby here (another router is primary): 10.96.0.0/12, 10.244.0.0/16", ""},
			},
		},
		{
			name: "worker whose router is offline",
			status: withPeer(withPeer(runningStatus(), "guildnet-router", false, allRoutes, nil),
				"guildnet-worker-2", true, nil, []string{"100.64.0.9/32"}),
			settings: map[string]string{"TS_ROUTES": "10.0.0.0/24,10.96.0.0/12"},
			want: map[string]want{
				"routes_approved": {messages.CheckFail, "no online peer carries 10.0.0.0/24 (offline: guildnet-router); 10.96.0.0/12 (offline: guildnet-router)", ""},
			},
		},
		{
			name: "custom routes via setting", status: runningStatus("10.0.0.0/24"),
			settings: map[string]string{"METAGN_ROUTER": "true", "TS_ROUTES": "10.0.0.0/24"},
			want: map[string]want{
				"routes_approved": {messages.CheckPass, "all 1 routes approved: 10.0.0.0/24", ""},
			},
		},
		{
			name: "not a router", status: runningStatus(),
			want: map[string]want{
				"routes_approved": {messages.CheckPass, `not applicable: node is not a router (role "worker", METAGN_ROUTER unset) and TS_ROUTES is unset`, ""},
			},
		},
		{
			name: "bad routes setting", status: runningStatus(), role: "router",
			settings: map[string]string{"TS_ROUTES": "10.0.0.0/24,ten"},
			want: map[string]want{
				"routes_approved": {messages.CheckFail, `setting TS_ROUTES: "ten" is not a CIDR`, ""},
			},
		},
		{
			name: "controller unreachable", status: runningStatus(),
			ping:     &ipnstate.PingResult{IP: "100.64.0.1", Err: "timeout waiting for ping reply"},
			settings: map[string]string{"METAGN_CONTROLLER_TAILNET_IP": "100.64.0.1"},
			want: map[string]want{
				"controller_reachable": {messages.CheckFail, "tailnet ping to controller 100.64.0.1: timeout waiting for ping reply", ""},
			},
		},
		{
			name: "controller ip malformed", status: runningStatus(),
			settings: map[string]string{"METAGN_CONTROLLER_TAILNET_IP": "controller"},
			want: map[string]want{
				"controller_reachable": {messages.CheckFail, `setting METAGN_CONTROLLER_TAILNET_IP: "controller" is not an IP address`, ""},
			},
		},
		{
			name: "unresolvable name", status: runningStatus(),
			settings: map[string]string{"METAGN_DNS_NAME": "bad..name"}, // refused locally: no query leaves the machine
			want: map[string]want{
				"dns_resolution": {messages.CheckFail, `cannot resolve "bad..name"`, ""},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			settings := map[string]string{"TS_SOCKET": "/nonexistent/tailscaled.sock"}
			var api *localAPIStandIn
			if tc.status != nil {
				api = startLocalAPI(t, tc.status, tc.ping)
				settings["TS_SOCKET"] = api.Socket
			}
			for k, v := range tc.settings {
				settings[k] = v
			}
			env := testEnv(settings)
			if tc.role != "" {
				env.Role = tc.role
			}
			checks, err := Select(NetworkChecks(), Selection{Names: networkNames})
			if err != nil {
				t.Fatal(err)
			}
			res := byName(RunChecks(t.Context(), env, checks, RunOptions{}))
			for name, w := range tc.want {
				r := res[name]
				if r.Status != w.status || !strings.Contains(r.Message, w.msg) || r.BlockedBy != w.blockedBy {
					t.Errorf("%s: %s %q blocked_by %q\n  want %s containing %q blocked_by %q", name, r.Status, r.Message, r.BlockedBy, w.status, w.msg, w.blockedBy)
				}
			}
			if api != nil && api.peersAsked > 0 && (env.Role == "router" || tc.settings["TS_ROUTES"] == "") {
				t.Errorf("asked for peers %d times; only a non-router's route check may", api.peersAsked)
			}
			if api != nil && tc.ping != nil && tc.settings["METAGN_CONTROLLER_TAILNET_IP"] != "" {
				if len(api.pinged) != 1 || api.pinged[0] != "100.64.0.1 TSMP" {
					t.Errorf("pings sent: %v, want one TSMP ping to 100.64.0.1", api.pinged)
				}
			}
		})
	}
}

func TestLoginServerHealth(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int
		status string
		msg    string
	}{
		{"healthy", http.StatusOK, messages.CheckPass, "/health answered 200"},
		{"unhealthy", http.StatusServiceUnavailable, messages.CheckFail, "/health answered 503: database locked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/health" {
					http.NotFound(w, r)
					return
				}
				if tc.code != http.StatusOK {
					http.Error(w, "database locked", tc.code)
					return
				}
				w.Write([]byte(`{"status":"pass"}`))
			}))
			defer srv.Close()
			res := runNamed(t, NetworkChecks(), map[string]string{"HEADSCALE_URL": srv.URL + "/"}, "login_server_health")
			if r := res["login_server_health"]; r.Status != tc.status || !strings.Contains(r.Message, tc.msg) || !strings.Contains(r.Message, srv.URL) {
				t.Errorf("%s %q", r.Status, r.Message)
			}
		})
	}
	res := runNamed(t, NetworkChecks(), map[string]string{"TS_LOGIN_SERVER": "http://" + closedAddr(t)}, "login_server_health")
	if r := res["login_server_health"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, "connection refused") {
		t.Errorf("closed: %s %q", r.Status, r.Message)
	}
}

// TestRunChecksUsesInjectedLocalAPI: an agent that is a tsnet node passes
// its LocalClient; the checks ask it rather than the socket.
func TestRunChecksUsesInjectedLocalAPI(t *testing.T) {
	api := startLocalAPI(t, runningStatus(), nil)
	lc := localClientFor(api.Socket)
	res := byName(runArgs(t.Context(), t, testEnv(map[string]string{"TS_SOCKET": "/nonexistent"}), `{"checks":["tailnet_connected"]}`, RunOptions{Clients: map[string]any{TailscaleClientKey: lc}}))
	if r := res["tailnet_connected"]; r.Status != messages.CheckPass {
		t.Fatalf("tailnet_connected: %s %q", r.Status, r.Message)
	}
}

func localClientFor(socket string) LocalAPI {
	return &local.Client{Socket: socket, UseSocketOnly: true}
}

// TestDNSResolutionCheckedByDefault: with METAGN_DNS_NAME unset the check
// resolves GuildNet's kubernetes.default.svc.cluster.local (it is not "not
// configured"). Only inside the loopback-only namespace TestMain enters,
// where the lookup fails at once and no query leaves the machine.
func TestDNSResolutionCheckedByDefault(t *testing.T) {
	if !testenv.InNetNS() {
		testenv.Skip(t, "needs the loopback-only network namespace (a default lookup would query the host's resolver)")
	}
	cx := newCheckEnv(&Env{Settings: config.Settings{}}, nil)
	r := checkDNSResolution(t.Context(), cx)
	if r.Status != messages.CheckFail || !strings.Contains(r.Message, `cannot resolve "`+DefaultDNSName+`"`) {
		t.Errorf("dns_resolution by default: %s %q", r.Status, r.Message)
	}
}
