package checks

// Network checks, node-scoped: everything about the tailnet is asked of
// tailscaled's LocalAPI (never by parsing CLI text), through [LocalAPI] so
// an agent that is itself a tsnet node can pass its own LocalClient.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"slices"
	"strings"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/types/views"
)

// LocalAPI is the part of tailscaled's LocalAPI the network checks use.
// *local.Client implements it, and so does the LocalClient of a
// tsnet.Server.
type LocalAPI interface {
	StatusWithoutPeers(ctx context.Context) (*ipnstate.Status, error)
	// Status includes the peers; only a non-router's route check asks
	// for it.
	Status(ctx context.Context) (*ipnstate.Status, error)
	Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error)
}

// DefaultDNSName is the name dns_resolution resolves when METAGN_DNS_NAME
// is unset: GuildNet checks the cluster's DNS with the API server's
// Service name. "none" turns the check off (not configured).
const DefaultDNSName = "kubernetes.default.svc.cluster.local"

// DefaultTSRoutes are the routes a GuildNet router advertises.
const DefaultTSRoutes = "10.0.0.0/24,10.96.0.0/12,10.244.0.0/16"

const statusKey = "tailscale.status"

// TailscaleClientKey is the key of the LocalAPI the network checks use in
// [RunOptions.Clients]. An agent that is itself a tsnet node passes its
// tsnet.Server's LocalClient under it; without it the checks use a client
// of the tailscaled socket in setting TS_SOCKET (the platform's default
// when unset).
const TailscaleClientKey = "tailscale.localapi"

// tailscale returns the LocalAPI client of this run and says where it
// talks to, for messages.
func tailscale(cx *CheckEnv) (LocalAPI, string, error) {
	sock := cx.Setting("TS_SOCKET", "")
	lc, given, err := LazyClient(cx, TailscaleClientKey, func() (LocalAPI, func(), error) {
		return &local.Client{Socket: sock, UseSocketOnly: sock != ""}, nil, nil
	})
	switch {
	case given:
		return lc, "the agent's tailnet LocalAPI", err
	case sock != "":
		return lc, "tailscaled socket " + sock, err
	}
	return lc, "tailscaled's default socket", err
}

// tailscaleStatus returns the status tailscaled_running fetched, or fetches
// it.
func tailscaleStatus(ctx context.Context, cx *CheckEnv) (*ipnstate.Status, error) {
	if st, ok := Value[*ipnstate.Status](cx, statusKey); ok {
		return st, nil
	}
	lc, where, err := tailscale(cx)
	if err != nil {
		return nil, fmt.Errorf("LocalAPI client: %w", err)
	}
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return nil, fmt.Errorf("status from %s: %s", where, errText(ctx, err))
	}
	cx.Put(statusKey, st)
	return st, nil
}

// NetworkChecks are the network layer's checks.
func NetworkChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "tailscaled_running",
			Description: "tailscaled answers on its LocalAPI",
			Timeout:     5 * time.Second,
			Run:         checkTailscaledRunning,
		},
		{
			Name:        "tailnet_connected",
			Description: "tailscaled's backend is Running and connected to its control server",
			Timeout:     5 * time.Second,
			Run:         checkTailnetConnected,
		},
		{
			Name:        "controller_reachable",
			Description: "the controller answers a tailnet ping (TSMP) at METAGN_CONTROLLER_TAILNET_IP",
			Timeout:     10 * time.Second,
			Run:         checkControllerReachable,
		},
		{
			Name:        "routes_approved",
			Description: "on a router, every route in TS_ROUTES is approved (primary, or a standby in AllowedIPs); elsewhere, with TS_ROUTES set, an online peer carries each",
			Timeout:     5 * time.Second,
			Run:         checkRoutesApproved,
		},
		{
			Name:        "login_server_health",
			Description: "the login server (Headscale) answers GET /health",
			Timeout:     5 * time.Second,
			Run:         checkLoginServerHealth,
		},
		{
			Name:        "dns_resolution",
			Description: "the name in METAGN_DNS_NAME (default kubernetes.default.svc.cluster.local) resolves",
			Timeout:     5 * time.Second,
			Run:         checkDNSResolution,
		},
	})
}

func checkTailscaledRunning(ctx context.Context, cx *CheckEnv) Result {
	st, err := tailscaleStatus(ctx, cx)
	if err != nil {
		return Fail("tailscaled not answering: %v", err)
	}
	return Pass("tailscaled %s answers, backend %s", st.Version, st.BackendState).
		With(map[string]any{"version": st.Version, "backend_state": st.BackendState}, nil)
}

func checkTailnetConnected(ctx context.Context, cx *CheckEnv) Result {
	st, err := tailscaleStatus(ctx, cx)
	if err != nil {
		return Fail("%v", err)
	}
	obs := map[string]any{"backend_state": st.BackendState}
	if st.Self != nil {
		obs["online"] = st.Self.Online
		obs["tailscale_ips"] = st.Self.TailscaleIPs
		obs["hostname"] = st.Self.HostName
	}
	if len(st.Health) > 0 {
		obs["health"] = st.Health
	}
	want := map[string]any{"backend_state": "Running", "online": true}
	if st.BackendState != "Running" {
		msg := fmt.Sprintf("backend state is %s, want Running", st.BackendState)
		if st.AuthURL != "" {
			msg += "; login needed at " + st.AuthURL
		}
		if len(st.Health) > 0 {
			msg += "; health: " + strings.Join(st.Health, "; ")
		}
		return Fail("%s", msg).With(obs, want)
	}
	if st.Self == nil || !st.Self.Online {
		ctl := cx.Setting("TS_LOGIN_SERVER", cx.Setting("HEADSCALE_URL", "its control server"))
		return Fail("backend Running but not connected to %s", ctl).With(obs, want)
	}
	if len(st.Health) > 0 {
		return Warn("connected, with health warnings: %s", strings.Join(st.Health, "; ")).With(obs, want)
	}
	return Pass("connected as %s (%s)", st.Self.HostName, joinAddrs(st.Self.TailscaleIPs)).With(obs, want)
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func checkControllerReachable(ctx context.Context, cx *CheckEnv) Result {
	raw := cx.Setting("METAGN_CONTROLLER_TAILNET_IP", "")
	if raw == "" {
		return NotConfigured("METAGN_CONTROLLER_TAILNET_IP", "METAGN_CONTROLLER_TAILNET_IP is not set")
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(raw))
	if err != nil {
		return Fail("setting METAGN_CONTROLLER_TAILNET_IP: %q is not an IP address", raw)
	}
	lc, _, err := tailscale(cx)
	if err != nil {
		return Fail("LocalAPI client: %v", err)
	}
	res, err := lc.Ping(ctx, ip, tailcfg.PingTSMP)
	if err != nil {
		return Fail("tailnet ping to controller %s: %s", ip, errText(ctx, err))
	}
	if res.Err != "" {
		return Fail("tailnet ping to controller %s: %s", ip, res.Err)
	}
	latency := time.Duration(res.LatencySeconds * float64(time.Second))
	path := "direct"
	if res.DERPRegionCode != "" {
		path = "DERP " + res.DERPRegionCode
	} else if res.Endpoint != "" {
		path = "direct " + res.Endpoint
	}
	return Pass("controller %s (%s) answered in %s via %s", ip, res.NodeName, latency.Round(time.Microsecond), path).
		With(map[string]any{"ip": ip.String(), "node": res.NodeName, "latency_ms": ms(latency), "endpoint": res.Endpoint, "derp": res.DERPRegionCode}, nil)
}

// isRouter reports whether this node advertises GuildNet's routes.
func isRouter(cx *CheckEnv) bool {
	return settingBool(cx, "METAGN_ROUTER") || cx.Role == "router"
}

func checkRoutesApproved(ctx context.Context, cx *CheckEnv) Result {
	router := isRouter(cx)
	if !router && cx.Setting("TS_ROUTES", "") == "" {
		return NotApplicable("node is not a router (role %q, METAGN_ROUTER unset) and TS_ROUTES is unset", cx.Role)
	}
	var want []netip.Prefix
	for _, s := range settingList(cx, "TS_ROUTES", DefaultTSRoutes) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Fail("setting TS_ROUTES: %q is not a CIDR", s)
		}
		want = append(want, p.Masked())
	}
	thr := map[string]any{"routes": prefixStrings(want)}
	if !router {
		return routesCarried(ctx, cx, want, thr)
	}
	st, err := tailscaleStatus(ctx, cx)
	if err != nil {
		return Fail("%v", err)
	}
	// Headscale elects one primary router per prefix; the others that
	// advertise it hold it approved in AllowedIPs, as standbys.
	var primary, allowed []netip.Prefix
	if st.Self != nil {
		primary = viewPrefixes(st.Self.PrimaryRoutes)
		allowed = viewPrefixes(st.Self.AllowedIPs)
	}
	var missing, standby []string
	for _, p := range want {
		switch {
		case slices.Contains(primary, p):
		case slices.Contains(allowed, p):
			standby = append(standby, p.String())
		default:
			missing = append(missing, p.String())
		}
	}
	obs := map[string]any{"primary_routes": prefixStrings(primary), "allowed_ips": prefixStrings(allowed), "standby": standby}
	if len(missing) > 0 {
		return Fail("routes not approved on this router (neither primary nor in AllowedIPs): %s", strings.Join(missing, ", ")).With(obs, thr)
	}
	if len(standby) > 0 {
		return Pass("all %d routes approved: %s; standby here (another router is primary): %s", len(want), strings.Join(prefixStrings(want), ", "), strings.Join(standby, ", ")).With(obs, thr)
	}
	return Pass("all %d routes approved: %s", len(want), strings.Join(prefixStrings(want), ", ")).With(obs, thr)
}

// routesCarried checks, on a node that is not a router, that an online
// peer carries each route (as primary, or in its AllowedIPs).
func routesCarried(ctx context.Context, cx *CheckEnv, want []netip.Prefix, thr map[string]any) Result {
	lc, where, err := tailscale(cx)
	if err != nil {
		return Fail("LocalAPI client: %v", err)
	}
	st, err := lc.Status(ctx)
	if err != nil {
		return Fail("status with peers from %s: %s", where, errText(ctx, err))
	}
	carriers := map[netip.Prefix][]string{}
	offline := map[netip.Prefix][]string{}
	for _, peer := range st.Peer {
		if peer == nil {
			continue
		}
		routes := append(viewPrefixes(peer.PrimaryRoutes), viewPrefixes(peer.AllowedIPs)...)
		name := cmp.Or(peer.HostName, peer.DNSName)
		for _, p := range want {
			if !slices.Contains(routes, p) {
				continue
			}
			if peer.Online {
				carriers[p] = append(carriers[p], name)
			} else {
				offline[p] = append(offline[p], name)
			}
		}
	}
	var missing, carried []string
	for _, p := range want {
		if c := carriers[p]; len(c) > 0 {
			slices.Sort(c)
			carried = append(carried, p.String()+" via "+strings.Join(slices.Compact(c), ", "))
			continue
		}
		d := p.String()
		if o := offline[p]; len(o) > 0 {
			slices.Sort(o)
			d += " (offline: " + strings.Join(slices.Compact(o), ", ") + ")"
		}
		missing = append(missing, d)
	}
	obs := map[string]any{"carried": carried, "peers": len(st.Peer)}
	if len(missing) > 0 {
		return Fail("no online peer carries %s", strings.Join(missing, "; ")).With(obs, thr)
	}
	return Pass("all %d routes carried by online peers: %s", len(want), strings.Join(carried, "; ")).With(obs, thr)
}

// viewPrefixes returns the masked prefixes of a view (nil-safe).
func viewPrefixes(v *views.Slice[netip.Prefix]) []netip.Prefix {
	if v == nil {
		return nil
	}
	out := make([]netip.Prefix, 0, v.Len())
	for _, p := range v.All() {
		out = append(out, p.Masked())
	}
	return out
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func checkLoginServerHealth(ctx context.Context, cx *CheckEnv) Result {
	base := cx.Setting("TS_LOGIN_SERVER", cx.Setting("HEADSCALE_URL", ""))
	if base == "" {
		return NotConfigured("TS_LOGIN_SERVER,HEADSCALE_URL", "neither TS_LOGIN_SERVER nor HEADSCALE_URL is set")
	}
	url := strings.TrimRight(base, "/") + "/health"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := httpGet(ctx, client, url, 4096)
	if err != nil {
		return Fail("login server unreachable: %v", err)
	}
	obs := map[string]any{"url": url, "status": resp.Code, "latency_ms": ms(resp.Latency)}
	if resp.Code != http.StatusOK {
		return Fail("GET %s answered %d: %s", url, resp.Code, firstLine(resp.Body)).With(obs, nil)
	}
	return Pass("GET %s answered 200 in %s", url, resp.Latency.Round(time.Millisecond)).With(obs, nil)
}

func checkDNSResolution(ctx context.Context, cx *CheckEnv) Result {
	name := cx.Setting("METAGN_DNS_NAME", DefaultDNSName)
	if strings.EqualFold(name, "none") {
		return NotConfigured("METAGN_DNS_NAME", "METAGN_DNS_NAME is none")
	}
	start := time.Now()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	d := time.Since(start)
	if err != nil {
		return Fail("cannot resolve %q: %s", name, errText(ctx, err))
	}
	return Pass("%s resolves to %s", name, strings.Join(addrs, ", ")).
		With(map[string]any{"name": name, "addresses": addrs, "latency_ms": ms(d)}, nil)
}

// httpResponse is the little an HTTP check needs of a response.
type httpResponse struct {
	Code    int
	Body    []byte
	Latency time.Duration // until the response headers arrived
}

// httpGet does a GET under ctx, reading at most maxBody bytes of the body.
func httpGet(ctx context.Context, client *http.Client, url string, maxBody int64) (httpResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return httpResponse{}, fmt.Errorf("GET %s: %w", url, err)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return httpResponse{}, fmt.Errorf("GET %s: %w", url, ctxErr(ctx, unwrapURLError(err)))
	}
	defer resp.Body.Close()
	latency := time.Since(start)
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return httpResponse{}, fmt.Errorf("GET %s: reading the body: %s", url, errText(ctx, err))
	}
	return httpResponse{Code: resp.StatusCode, Body: body, Latency: latency}, nil
}

// firstLine is the first line of a body, bounded, for a message.
func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return Truncate(strings.TrimSpace(s), 200)
}

// ms is a duration in milliseconds with microsecond precision, for
// observed values.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// unwrapURLError drops the *url.Error layer, whose text repeats the method
// and URL a check's message already names.
func unwrapURLError(err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
