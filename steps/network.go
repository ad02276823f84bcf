package steps

// The network family: the cluster's Headscale user, each node's tailscaled
// logged in through its LocalAPI, and the routers' routes approved on
// Headscale. Headscale is driven through its REST API (v0.29: /api/v1/...)
// with the API key from network.headscaleAPIKeyFrom; tailscaled through
// tailscale.com/client/local on the socket in setting TS_SOCKET, never by
// shelling out to a CLI.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"

	"github.com/guildnet/metaguildnet/messages"
)

// Network step names (a contract with the runner and the fleet spec docs).
const (
	StepHeadscaleUser  = "headscale_user"
	StepTailscaleLogin = "tailscale_login"
	StepRoutesApproved = "routes_approved"
	StepRoutesActive   = "routes_active"
)

// DefaultRoutes are what GuildNet's router advertises (TS_ROUTES) when the
// spec names none.
var DefaultRoutes = []string{"10.0.0.0/24", "10.96.0.0/12", "10.244.0.0/16"}

// DefaultTailscaledSocket is where tailscaled listens on Linux when
// setting TS_SOCKET is unset.
const DefaultTailscaledSocket = "/var/run/tailscale/tailscaled.sock"

// Bounds of the network steps' I/O.
const (
	// headscaleCallTimeout bounds one Headscale API call.
	headscaleCallTimeout = 10 * time.Second
	// headscaleMaxResponse bounds what is read of one API answer.
	headscaleMaxResponse = 4 << 20
	// loginTimeout bounds the wait for tailscaled to reach Running.
	loginTimeout = 60 * time.Second
	// preAuthKeyTTL is the life of a pre-auth key setup makes for one
	// node's login (single use, not ephemeral).
	preAuthKeyTTL = 10 * time.Minute
	// localAPITimeout bounds one LocalAPI call.
	localAPITimeout = 5 * time.Second
)

var networkSteps = []Step{
	{
		Name:        StepHeadscaleUser,
		Layer:       messages.LayerNetwork,
		Description: "the cluster's Headscale user exists (network.user, default cluster-<name>); undo deletes it with the nodes registered to it",
		Scope:       ScopeCluster,
		Critical:    true,
		Plan:        planHeadscaleUser,
		Apply:       applyHeadscaleUser,
		Undo:        undoHeadscaleUser,
	},
	{
		Name:  StepTailscaleLogin,
		Layer: messages.LayerNetwork,
		Description: "tailscaled is logged in to the login server with the node's hostname, " +
			"advertising the routes on routers and accepting them elsewhere, DNS untouched",
		Scope:    ScopeNode,
		After:    []string{StepHeadscaleUser},
		Critical: true,
		Prereqs:  tailscaledAnswers,
		Plan:     planTailscaleLogin,
		Apply:    applyTailscaleLogin,
		Undo:     undoTailscaleLogin,
	},
	{
		Name:        StepRoutesApproved,
		Layer:       messages.LayerNetwork,
		Description: "the routes the cluster's routers advertise are approved on Headscale (network.autoApproveRoutes)",
		Scope:       ScopeCluster,
		After:       []string{StepTailscaleLogin},
		Critical:    true,
		Plan:        planRoutesApproved,
		Apply:       applyRoutesApproved,
		Undo:        undoRoutesApproved,
	},
	{
		// Headscale v0.29.1 tells the peers of an approval at once but not
		// the router's own map session, so the router's status (what the
		// routes_approved check reads) lacks its approved routes until the
		// session is renewed. This step renews it when they are missing.
		Name:  StepRoutesActive,
		Layer: messages.LayerNetwork,
		Description: "each router's own tailscaled status carries the routes (primary or standby), " +
			"renewing its control session when an approval has not reached it",
		Scope:    ScopeNode,
		Roles:    []string{messages.RoleRouter},
		After:    []string{StepRoutesApproved},
		Critical: true,
		Prereqs:  tailscaledAnswers,
		Plan:     planRoutesActive,
		Apply:    applyRoutesActive,
	},
}

// ---- the spec, read with its defaults ----

func headscaleUserName(spec messages.FleetCluster) string {
	if spec.Network.User != "" {
		return spec.Network.User
	}
	return "cluster-" + spec.Name
}

// specRoutes are the routes routers advertise, parsed and sorted.
func specRoutes(spec messages.FleetCluster) ([]netip.Prefix, error) {
	raw := spec.Network.Routes
	if len(raw) == 0 {
		raw = DefaultRoutes
	}
	out := make([]netip.Prefix, 0, len(raw))
	for i, r := range raw {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			return nil, Configf("write each route as a CIDR such as 10.96.0.0/12",
				"cluster %s: network.routes[%d]: %q is not a CIDR", spec.Name, i, r)
		}
		out = append(out, p.Masked())
	}
	return sortedPrefixes(out), nil
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(out)
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func boolDefault(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

func loginServer(spec messages.FleetCluster) (string, error) {
	s := strings.TrimRight(strings.TrimSpace(spec.Network.LoginServer), "/")
	if s == "" {
		return "", Configf("set network.loginServer to the Headscale URL (TS_LOGIN_SERVER)",
			"cluster %s: network.loginServer is empty", spec.Name)
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", Configf("write network.loginServer as http(s)://HOST[:PORT]",
			"cluster %s: network.loginServer %q is not an http(s) URL", spec.Name, s)
	}
	return s, nil
}

// nodeHostname is the tailnet hostname of a node of the spec: its
// hostname, else its name.
func nodeHostname(spec messages.FleetCluster, node string) string {
	for _, n := range spec.Nodes {
		if n.Name == node {
			if n.Hostname != "" {
				return n.Hostname
			}
			return n.Name
		}
	}
	return node
}

func secret(env *Env, field string, ref messages.SecretRef) (string, error) {
	if ref == "" {
		return "", Configf(fmt.Sprintf("set %s to env:NAME or file:PATH", field), "%s is not set", field)
	}
	if env.Secret == nil {
		return "", fmt.Errorf("%s: no secret resolver on this agent", field)
	}
	v, err := env.Secret(ref)
	if err != nil {
		return "", &ConfigError{Err: fmt.Errorf("%s (%s): %w", field, ref, err),
			Fix: fmt.Sprintf("make %s resolvable on node %s", ref, env.Node)}
	}
	if strings.TrimSpace(v) == "" {
		return "", Configf(fmt.Sprintf("put the secret in %s", ref), "%s (%s) is empty", field, ref)
	}
	return strings.TrimSpace(v), nil
}

// ---- Headscale's REST API ----

// headscale is a client of Headscale's REST API with an API key.
type headscale struct {
	base string
	key  string
	hc   *http.Client
}

// headscaleFor builds the client from the spec: the API at setting
// HEADSCALE_URL, else the login server; the key from
// network.headscaleAPIKeyFrom.
func headscaleFor(env *Env) (*headscale, error) {
	base := strings.TrimRight(env.Settings.Get("HEADSCALE_URL", ""), "/")
	if base == "" {
		var err error
		if base, err = loginServer(env.Spec); err != nil {
			return nil, err
		}
	}
	key, err := secret(env, "network.headscaleAPIKeyFrom", env.Spec.Network.HeadscaleAPIKeyFrom)
	if err != nil {
		return nil, err
	}
	return &headscale{base: base, key: key, hc: &http.Client{}}, nil
}

// hsID is a uint64 that Headscale's JSON gateway writes as a string.
type hsID uint64

func (id *hsID) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*id = 0
		return nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("id %.40q: %w", b, err)
	}
	*id = hsID(v)
	return nil
}

type hsUser struct {
	ID   hsID   `json:"id"`
	Name string `json:"name"`
}

type hsNode struct {
	ID              hsID     `json:"id"`
	Name            string   `json:"name"`
	GivenName       string   `json:"givenName"`
	User            *hsUser  `json:"user"`
	Online          bool     `json:"online"`
	ApprovedRoutes  []string `json:"approvedRoutes"`
	AvailableRoutes []string `json:"availableRoutes"`
}

// call does one API call. A refused or slow server is retryable (from the
// transport), so are 502, 503, 504 and 429; a refused key is a config
// error.
func (h *headscale) call(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, headscaleCallTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("headscale %s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, body)
	if err != nil {
		return fmt.Errorf("headscale %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+h.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		// The URL holds no secret; the transport error keeps its class.
		return fmt.Errorf("headscale %s %s%s: %w", method, h.base, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, headscaleMaxResponse+1))
	if err != nil {
		return fmt.Errorf("headscale %s %s: read answer: %w", method, path, err)
	}
	if len(b) > headscaleMaxResponse {
		return fmt.Errorf("headscale %s %s: answer larger than %d bytes", method, path, headscaleMaxResponse)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return Configf("set network.headscaleAPIKeyFrom to a valid key (headscale apikeys create)",
			"headscale %s %s: API key refused (%d)", method, path, resp.StatusCode)
	case resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable ||
		resp.StatusCode == http.StatusGatewayTimeout || resp.StatusCode == http.StatusTooManyRequests:
		// Busy or not up yet. (Headscale answers a plain 500 for errors
		// that another attempt would not fix, such as "user not empty".)
		return Retry(fmt.Errorf("headscale %s %s: %s: %s", method, path, resp.Status, excerpt(b)))
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("headscale %s %s: %s: %s", method, path, resp.Status, excerpt(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("headscale %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// excerpt is a short, printable part of an error answer.
func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func (h *headscale) user(ctx context.Context, name string) (*hsUser, error) {
	var out struct {
		Users []hsUser `json:"users"`
	}
	if err := h.call(ctx, http.MethodGet, "/api/v1/user?name="+url.QueryEscape(name), nil, &out); err != nil {
		return nil, fmt.Errorf("look up Headscale user %q: %w", name, err)
	}
	for _, u := range out.Users {
		if u.Name == name {
			return &u, nil
		}
	}
	return nil, nil
}

func (h *headscale) createUser(ctx context.Context, name string) (*hsUser, error) {
	var out struct {
		User hsUser `json:"user"`
	}
	if err := h.call(ctx, http.MethodPost, "/api/v1/user", map[string]string{"name": name}, &out); err != nil {
		return nil, fmt.Errorf("create Headscale user %q: %w", name, err)
	}
	if out.User.ID == 0 {
		return nil, fmt.Errorf("create Headscale user %q: answer has no user id", name)
	}
	return &out.User, nil
}

func (h *headscale) deleteUser(ctx context.Context, id uint64) error {
	if err := h.call(ctx, http.MethodDelete, "/api/v1/user/"+strconv.FormatUint(id, 10), nil, nil); err != nil {
		return fmt.Errorf("delete Headscale user %d: %w", id, err)
	}
	return nil
}

// preAuthKey creates a single-use, non-ephemeral pre-auth key for one
// login. The key is returned to be handed to tailscaled and nowhere else.
func (h *headscale) preAuthKey(ctx context.Context, userID uint64) (string, error) {
	in := map[string]any{
		"user":       strconv.FormatUint(userID, 10),
		"reusable":   false,
		"ephemeral":  false,
		"expiration": time.Now().Add(preAuthKeyTTL).UTC().Format(time.RFC3339),
	}
	var out struct {
		PreAuthKey struct {
			Key string `json:"key"`
		} `json:"preAuthKey"`
	}
	if err := h.call(ctx, http.MethodPost, "/api/v1/preauthkey", in, &out); err != nil {
		return "", fmt.Errorf("create a pre-auth key for Headscale user %d: %w", userID, err)
	}
	if out.PreAuthKey.Key == "" {
		return "", fmt.Errorf("create a pre-auth key for Headscale user %d: answer has no key", userID)
	}
	return out.PreAuthKey.Key, nil
}

func (h *headscale) nodes(ctx context.Context, user string) ([]hsNode, error) {
	var out struct {
		Nodes []hsNode `json:"nodes"`
	}
	if err := h.call(ctx, http.MethodGet, "/api/v1/node?user="+url.QueryEscape(user), nil, &out); err != nil {
		return nil, fmt.Errorf("list Headscale nodes of user %q: %w", user, err)
	}
	return out.Nodes, nil
}

func (h *headscale) approveRoutes(ctx context.Context, id uint64, routes []string) error {
	if routes == nil {
		routes = []string{}
	}
	path := "/api/v1/node/" + strconv.FormatUint(id, 10) + "/approve_routes"
	if err := h.call(ctx, http.MethodPost, path, map[string]any{"routes": routes}, nil); err != nil {
		return fmt.Errorf("approve routes %v on Headscale node %d: %w", routes, id, err)
	}
	return nil
}

// ---- headscale_user ----

func planHeadscaleUser(ctx context.Context, env *Env) (Plan, error) {
	h, err := headscaleFor(env)
	if err != nil {
		return Plan{}, err
	}
	name := headscaleUserName(env.Spec)
	u, err := h.user(ctx, name)
	if err != nil {
		return Plan{}, err
	}
	if u != nil {
		return Plan{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("Headscale user %s exists (id %d)", name, u.ID)}, nil
	}
	return Plan{Action: messages.ActionCreate, Diff: fmt.Sprintf("create Headscale user %s", name)}, nil
}

type headscaleUserUndo struct {
	ID   uint64 `json:"id"`
	Name string `json:"name"`
}

func applyHeadscaleUser(ctx context.Context, env *Env) (Applied, error) {
	h, err := headscaleFor(env)
	if err != nil {
		return Applied{}, err
	}
	name := headscaleUserName(env.Spec)
	u, err := h.user(ctx, name)
	if err != nil {
		return Applied{}, err
	}
	if u != nil {
		return Applied{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("Headscale user %s exists (id %d)", name, u.ID),
			Outputs: map[string]string{"id": strconv.FormatUint(uint64(u.ID), 10), "name": name}}, nil
	}
	if u, err = h.createUser(ctx, name); err != nil {
		return Applied{}, err
	}
	id := uint64(u.ID)
	return Applied{Action: messages.ActionCreate, Diff: fmt.Sprintf("created Headscale user %s (id %d)", name, id),
		Undo:    headscaleUserUndo{ID: id, Name: name},
		Outputs: map[string]string{"id": strconv.FormatUint(id, 10), "name": name}}, nil
}

func undoHeadscaleUser(ctx context.Context, env *Env, raw json.RawMessage) error {
	var u headscaleUserUndo
	if err := json.Unmarshal(raw, &u); err != nil {
		return fmt.Errorf("undo %s: %w", StepHeadscaleUser, err)
	}
	if u.ID == 0 {
		return nil
	}
	h, err := headscaleFor(env)
	if err != nil {
		return err
	}
	// Headscale refuses to delete a user with nodes. The user was created
	// by this run, so its nodes registered in this run (tailscale_login,
	// whose undo logs them out but leaves them listed): they go with it.
	nodes, err := h.nodes(ctx, u.Name)
	if err != nil {
		return fmt.Errorf("undo %s: %w", StepHeadscaleUser, err)
	}
	for _, n := range nodes {
		if n.User != nil && uint64(n.User.ID) != u.ID {
			continue
		}
		if err := h.call(ctx, http.MethodDelete, "/api/v1/node/"+strconv.FormatUint(uint64(n.ID), 10), nil, nil); err != nil {
			return fmt.Errorf("undo %s: delete node %s (%d) of user %s: %w", StepHeadscaleUser, n.Name, n.ID, u.Name, err)
		}
	}
	return h.deleteUser(ctx, u.ID)
}

// ---- tailscale_login ----

func tailscaledSocket(env *Env) string {
	return env.Settings.Get("TS_SOCKET", DefaultTailscaledSocket)
}

func localClient(env *Env) *local.Client {
	return &local.Client{Socket: tailscaledSocket(env), UseSocketOnly: true}
}

// tailscaledAnswers is tailscale_login's prerequisite: the LocalAPI socket
// exists and answers.
func tailscaledAnswers(ctx context.Context, env *Env) error {
	sock := tailscaledSocket(env)
	if _, err := os.Stat(sock); err != nil {
		return Blocked(fmt.Sprintf("tailscaled's LocalAPI socket %s is missing (%v)", sock, errors.Unwrap(err)),
			"systemctl start tailscaled")
	}
	cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
	defer cancel()
	if _, err := localClient(env).StatusWithoutPeers(cctx); err != nil {
		return Blocked(fmt.Sprintf("tailscaled does not answer on %s: %v", sock, err), "systemctl restart tailscaled")
	}
	return nil
}

// loginWant is what tailscale_login brings about on one node.
type loginWant struct {
	ControlURL string
	// User is the Headscale user the node must be logged in as; empty
	// when the spec leaves it to a given auth key.
	User     string
	Hostname string
	Routes   []netip.Prefix // advertised (routers only)
	RouteAll bool
}

// nodeRole is the node's role in the spec, else the agent's.
func nodeRole(env *Env) string {
	for _, n := range env.Spec.Nodes {
		if n.Name == env.Node && n.Role != "" {
			return n.Role
		}
	}
	return env.Role
}

func wantLogin(env *Env) (loginWant, error) {
	ls, err := loginServer(env.Spec)
	if err != nil {
		return loginWant{}, err
	}
	// Every node accepts routes as the spec says, routers too: with
	// several clusters on one Headscale a router sees the other clusters'
	// routers, and tailscaled reports a router that refuses them as
	// unhealthy ("Some peers are advertising routes but --accept-routes
	// is false"), which fails the network layer's verification.
	w := loginWant{ControlURL: ls, Hostname: nodeHostname(env.Spec, env.Node), RouteAll: boolDefault(env.Spec.Network.AcceptRoutes, true)}
	if env.Spec.Network.AuthKeyFrom == "" || env.Spec.Network.User != "" {
		// Setup makes the key for this user, or the spec names it.
		w.User = headscaleUserName(env.Spec)
	}
	if nodeRole(env) == messages.RoleRouter {
		if w.Routes, err = specRoutes(env.Spec); err != nil {
			return loginWant{}, err
		}
	}
	return w, nil
}

// loginObserved is tailscaled's state as far as the step cares.
type loginObserved struct {
	prefs *ipn.Prefs
	st    *ipnstate.Status
}

func observeLogin(ctx context.Context, lc *local.Client) (loginObserved, error) {
	cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
	defer cancel()
	p, err := lc.GetPrefs(cctx)
	if err != nil {
		return loginObserved{}, fmt.Errorf("tailscaled prefs: %w", err)
	}
	st, err := lc.StatusWithoutPeers(cctx)
	if err != nil {
		return loginObserved{}, fmt.Errorf("tailscaled status: %w", err)
	}
	return loginObserved{prefs: p, st: st}, nil
}

// loggedIn: tailscaled has a login on the wanted control server (Running,
// or Starting/Stopped with a node key), so prefs can be edited without a
// new auth key.
func (o loginObserved) loggedIn(controlURL string) bool {
	if o.prefs.LoggedOut || strings.TrimRight(o.prefs.ControlURL, "/") != controlURL || !o.st.HaveNodeKey {
		return false
	}
	switch o.st.BackendState {
	case ipn.Running.String(), ipn.Starting.String(), ipn.Stopped.String():
		return true
	}
	return false
}

// user is the login name tailscaled is logged in as ("" when unknown).
func (o loginObserved) user() string {
	if o.st.Self == nil {
		return ""
	}
	return o.st.User[o.st.Self.UserID].LoginName
}

// sameLogin: logged in to the wanted server as the wanted user, so prefs
// can be edited without a new key.
func (o loginObserved) sameLogin(w loginWant) bool {
	return o.loggedIn(w.ControlURL) && (w.User == "" || o.user() == "" || o.user() == w.User)
}

// diffs lists what differs from w, one phrase each.
func (o loginObserved) diffs(w loginWant) []string {
	var d []string
	p := o.prefs
	if cur := strings.TrimRight(p.ControlURL, "/"); cur != w.ControlURL {
		d = append(d, fmt.Sprintf("login server %q -> %q", cur, w.ControlURL))
	}
	if !o.loggedIn(w.ControlURL) {
		d = append(d, fmt.Sprintf("backend %s -> logged in", o.st.BackendState))
	} else if !o.sameLogin(w) {
		d = append(d, fmt.Sprintf("Headscale user %q -> %q", o.user(), w.User))
	} else if o.st.BackendState != ipn.Running.String() || !p.WantRunning {
		d = append(d, fmt.Sprintf("backend %s -> Running", o.st.BackendState))
	}
	if p.Hostname != w.Hostname {
		d = append(d, fmt.Sprintf("hostname %q -> %q", p.Hostname, w.Hostname))
	}
	if cur := sortedPrefixes(p.AdvertiseRoutes); !slices.Equal(cur, w.Routes) {
		d = append(d, fmt.Sprintf("advertised routes [%s] -> [%s]",
			strings.Join(prefixStrings(cur), ","), strings.Join(prefixStrings(w.Routes), ",")))
	}
	if p.RouteAll != w.RouteAll {
		d = append(d, fmt.Sprintf("accept-routes %t -> %t", p.RouteAll, w.RouteAll))
	}
	if p.CorpDNS {
		d = append(d, "accept-dns true -> false")
	}
	return d
}

func (o loginObserved) summary() string {
	ip := ""
	if len(o.st.TailscaleIPs) > 0 {
		ip = " (" + o.st.TailscaleIPs[0].String() + ")"
	}
	return fmt.Sprintf("logged in to %s as %s%s", strings.TrimRight(o.prefs.ControlURL, "/"), o.prefs.Hostname, ip)
}

func planTailscaleLogin(ctx context.Context, env *Env) (Plan, error) {
	w, err := wantLogin(env)
	if err != nil {
		return Plan{}, err
	}
	if err := tailscaledAnswers(ctx, env); err != nil {
		var be *BlockedError
		if errors.As(err, &be) {
			return Plan{Action: messages.ActionBlocked, Diff: be.Missing, Blocked: be.Error()}, nil
		}
		return Plan{}, err
	}
	o, err := observeLogin(ctx, localClient(env))
	if err != nil {
		return Plan{}, err
	}
	d := o.diffs(w)
	switch {
	case len(d) == 0:
		return Plan{Action: messages.ActionUnchanged, Diff: o.summary()}, nil
	case o.prefs.ControlURL == "" || (o.prefs.LoggedOut && !o.st.HaveNodeKey):
		return Plan{Action: messages.ActionCreate, Diff: "log in: " + strings.Join(d, "; ")}, nil
	}
	return Plan{Action: messages.ActionUpdate, Diff: strings.Join(d, "; ")}, nil
}

// loginUndo is what tailscaled had before the step changed it.
type loginUndo struct {
	LoggedOut       bool     `json:"logged_out"`
	ControlURL      string   `json:"control_url,omitempty"`
	Hostname        string   `json:"hostname,omitempty"`
	AdvertiseRoutes []string `json:"advertise_routes,omitempty"`
	RouteAll        bool     `json:"route_all"`
	CorpDNS         bool     `json:"corp_dns"`
	WantRunning     bool     `json:"want_running"`
}

func applyTailscaleLogin(ctx context.Context, env *Env) (Applied, error) {
	w, err := wantLogin(env)
	if err != nil {
		return Applied{}, err
	}
	lc := localClient(env)
	o, err := observeLogin(ctx, lc)
	if err != nil {
		return Applied{}, err
	}
	d := o.diffs(w)
	if len(d) == 0 {
		return Applied{Action: messages.ActionUnchanged, Diff: o.summary(), Outputs: loginOutputs(o)}, nil
	}
	p := o.prefs
	undo := loginUndo{
		LoggedOut:       p.LoggedOut || p.ControlURL == "" || !o.st.HaveNodeKey || o.st.BackendState == ipn.NeedsLogin.String(),
		ControlURL:      p.ControlURL,
		Hostname:        p.Hostname,
		AdvertiseRoutes: prefixStrings(p.AdvertiseRoutes),
		RouteAll:        p.RouteAll,
		CorpDNS:         p.CorpDNS,
		WantRunning:     p.WantRunning,
	}
	var known []string // health messages from before this login
	action := messages.ActionUpdate
	if p.ControlURL == "" || (p.LoggedOut && !o.st.HaveNodeKey) {
		action = messages.ActionCreate
	}
	if o.sameLogin(w) {
		// Same login: edit the prefs that differ, no new key.
		mp := &ipn.MaskedPrefs{
			Prefs: ipn.Prefs{WantRunning: true, Hostname: w.Hostname, AdvertiseRoutes: w.Routes,
				RouteAll: w.RouteAll, CorpDNS: false},
			WantRunningSet: true, HostnameSet: true, AdvertiseRoutesSet: true, RouteAllSet: true, CorpDNSSet: true,
		}
		cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
		_, err := lc.EditPrefs(cctx, mp)
		cancel()
		if err != nil {
			return Applied{}, fmt.Errorf("edit tailscaled prefs: %w", err)
		}
	} else {
		known = o.st.Health
		if err := reachable(ctx, w.ControlURL); err != nil {
			return Applied{}, err
		}
		key, err := loginKey(ctx, env)
		if err != nil {
			return Applied{}, err
		}
		haveNodeKey := o.st.HaveNodeKey
		if o.loggedIn(w.ControlURL) {
			// Logged in to this server as another user: log out first (as
			// `tailscale logout` does), so the new key registers a new node
			// under the wanted user. Started with its old node key,
			// tailscaled re-registers that key and Headscale keeps it
			// under the old user (seen in about half the runs).
			cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
			err := lc.Logout(cctx)
			cancel()
			if err != nil {
				return Applied{}, fmt.Errorf("log tailscaled out of %s before logging in as %q: %w", w.ControlURL, w.User, err)
			}
			haveNodeKey = false
		}
		np := p.Clone()
		np.ControlURL = w.ControlURL
		np.WantRunning = true
		np.LoggedOut = false
		np.Hostname = w.Hostname
		np.AdvertiseRoutes = w.Routes
		np.RouteAll = w.RouteAll
		np.CorpDNS = false
		cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
		err = lc.Start(cctx, ipn.Options{AuthKey: key, UpdatePrefs: np})
		if err == nil && !haveNodeKey {
			// As `tailscale up` does: a daemon that never logged in
			// needs the login started; one with a node key logs in
			// with the new key on Start (a second login would spend the
			// single-use key twice).
			err = lc.StartLoginInteractive(cctx)
		}
		cancel()
		if err != nil {
			// The LocalAPI never echoes the key; the error is safe.
			return Applied{}, fmt.Errorf("log tailscaled in to %s: %w", w.ControlURL, err)
		}
	}
	after, err := waitRunning(ctx, lc, w, known, keyFix(env))
	if err != nil {
		return Applied{}, err
	}
	return Applied{Action: action, Diff: strings.Join(d, "; "), Undo: undo, Outputs: loginOutputs(after)}, nil
}

func loginOutputs(o loginObserved) map[string]string {
	out := map[string]string{"hostname": o.prefs.Hostname}
	if len(o.st.TailscaleIPs) > 0 {
		out["ip"] = o.st.TailscaleIPs[0].String()
	}
	return out
}

// reachable dials the login server, so a wrong or down one fails at once
// with its network error (retryable) rather than after the login wait.
func reachable(ctx context.Context, controlURL string) error {
	u, err := url.Parse(controlURL)
	if err != nil {
		return Configf("write network.loginServer as http(s)://HOST[:PORT]", "network.loginServer %q: %v", controlURL, err)
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	d := net.Dialer{Timeout: localAPITimeout}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return fmt.Errorf("login server %s unreachable: %w", controlURL, err)
	}
	c.Close()
	return nil
}

// loginKey is network.authKeyFrom when set, else a new single-use
// pre-auth key for the cluster's Headscale user. It is never logged,
// returned in outputs or kept.
func loginKey(ctx context.Context, env *Env) (string, error) {
	if env.Spec.Network.AuthKeyFrom != "" {
		return secret(env, "network.authKeyFrom", env.Spec.Network.AuthKeyFrom)
	}
	h, err := headscaleFor(env)
	if err != nil {
		return "", err
	}
	var id uint64
	if s := env.Inputs[StepHeadscaleUser+".id"]; s != "" {
		if id, err = strconv.ParseUint(s, 10, 64); err != nil {
			return "", fmt.Errorf("input %s.id %q: %w", StepHeadscaleUser, s, err)
		}
	} else {
		name := headscaleUserName(env.Spec)
		u, err := h.user(ctx, name)
		if err != nil {
			return "", err
		}
		if u == nil {
			return "", fmt.Errorf("Headscale user %s does not exist (step %s creates it)", name, StepHeadscaleUser)
		}
		id = uint64(u.ID)
	}
	return h.preAuthKey(ctx, id)
}

// keyFix says where the login's auth key came from, for a refused login.
func keyFix(env *Env) string {
	if env.Spec.Network.AuthKeyFrom != "" {
		return fmt.Sprintf("put a valid, unexpired pre-auth key for user %s in network.authKeyFrom (%s)",
			headscaleUserName(env.Spec), env.Spec.Network.AuthKeyFrom)
	}
	return fmt.Sprintf("check Headscale user %s and network.loginServer (the key was made by setup)", headscaleUserName(env.Spec))
}

// waitRunning polls tailscaled until it is Running with an IP and the
// wanted prefs, or the login deadline passes (a retryable timeout that
// says what tailscaled reported).
//
// A login the control server refused (tailscaled's health says "last login
// error", and did not before: known) is a config error: another attempt
// with the same key fails the same way.
func waitRunning(ctx context.Context, lc *local.Client, w loginWant, known []string, fix string) (loginObserved, error) {
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	var last loginObserved
	var lastErr error
	for {
		o, err := observeLogin(ctx, lc)
		if err == nil {
			last = o
			if len(o.diffs(w)) == 0 && len(o.st.TailscaleIPs) > 0 && (w.User == "" || o.user() == w.User) {
				return o, nil
			}
			for _, h := range o.st.Health {
				if strings.Contains(h, "last login error") && !slices.Contains(known, h) {
					return o, Configf(fix, "login to %s refused: %s", w.ControlURL, excerpt([]byte(h)))
				}
			}
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			why := fmt.Sprintf("last error %v", lastErr)
			if last.st != nil {
				why = fmt.Sprintf("backend %s", last.st.BackendState)
				if len(last.st.Health) > 0 {
					why += "; health: " + strings.Join(last.st.Health, "; ")
				}
			}
			return last, fmt.Errorf("tailscaled not Running on %s within %v (%s): %w", w.ControlURL, loginTimeout, why, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func undoTailscaleLogin(ctx context.Context, env *Env, raw json.RawMessage) error {
	var u loginUndo
	if err := json.Unmarshal(raw, &u); err != nil {
		return fmt.Errorf("undo %s: %w", StepTailscaleLogin, err)
	}
	lc := localClient(env)
	cctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	if u.LoggedOut {
		if err := lc.Logout(cctx); err != nil {
			return fmt.Errorf("undo %s: log tailscaled out: %w", StepTailscaleLogin, err)
		}
	}
	var routes []netip.Prefix
	for _, r := range u.AdvertiseRoutes {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return fmt.Errorf("undo %s: route %q: %w", StepTailscaleLogin, r, err)
		}
		routes = append(routes, p)
	}
	mp := &ipn.MaskedPrefs{
		Prefs: ipn.Prefs{ControlURL: u.ControlURL, Hostname: u.Hostname, AdvertiseRoutes: routes,
			RouteAll: u.RouteAll, CorpDNS: u.CorpDNS, WantRunning: u.WantRunning && !u.LoggedOut},
		ControlURLSet: true, HostnameSet: true, AdvertiseRoutesSet: true, RouteAllSet: true, CorpDNSSet: true, WantRunningSet: true,
	}
	if _, err := lc.EditPrefs(cctx, mp); err != nil {
		return fmt.Errorf("undo %s: restore tailscaled prefs: %w", StepTailscaleLogin, err)
	}
	return nil
}

// ---- routes_approved ----

// routerApproval is one router's approval state on Headscale.
type routerApproval struct {
	node     string // fleet node name
	hostname string
	id       uint64
	approved []string // sorted
	missing  []string // wanted, not approved
}

// observeRoutes finds each router of the spec on Headscale. A router not
// registered yet is returned in unregistered.
func observeRoutes(ctx context.Context, env *Env) (h *headscale, rs []routerApproval, unregistered []string, err error) {
	want, err := specRoutes(env.Spec)
	if err != nil {
		return nil, nil, nil, err
	}
	if h, err = headscaleFor(env); err != nil {
		return nil, nil, nil, err
	}
	user := headscaleUserName(env.Spec)
	var nodes []hsNode
	// Headscale answers 500 "user not found" for the nodes of a user it
	// does not have: on a bare tailnet (headscale_user not run yet) every
	// router is simply unregistered.
	if u, err := h.user(ctx, user); err != nil {
		return nil, nil, nil, err
	} else if u != nil {
		if nodes, err = h.nodes(ctx, user); err != nil {
			return nil, nil, nil, err
		}
	}
	for _, fn := range env.Spec.Nodes {
		if fn.Role != messages.RoleRouter {
			continue
		}
		host := nodeHostname(env.Spec, fn.Name)
		i := findNode(nodes, host)
		if i < 0 {
			unregistered = append(unregistered, fmt.Sprintf("%s (hostname %s)", fn.Name, host))
			continue
		}
		n := nodes[i]
		var approved []netip.Prefix
		for _, r := range n.ApprovedRoutes {
			if p, err := netip.ParsePrefix(r); err == nil {
				approved = append(approved, p.Masked())
			}
		}
		approved = sortedPrefixes(approved)
		ra := routerApproval{node: fn.Name, hostname: host, id: uint64(n.ID), approved: prefixStrings(approved)}
		for _, p := range want {
			if !slices.Contains(approved, p) {
				ra.missing = append(ra.missing, p.String())
			}
		}
		rs = append(rs, ra)
	}
	return h, rs, unregistered, nil
}

// findNode picks the Headscale node of a hostname: by hostname, else by
// given name; among several (a node that registered again after losing
// its state leaves its old entry behind) the online one, then the newest.
func findNode(nodes []hsNode, host string) int {
	best := -1
	for _, byGiven := range []bool{false, true} {
		for i, n := range nodes {
			if (!byGiven && n.Name != host) || (byGiven && n.GivenName != host) {
				continue
			}
			if best < 0 || (n.Online && !nodes[best].Online) ||
				(n.Online == nodes[best].Online && n.ID > nodes[best].ID) {
				best = i
			}
		}
		if best >= 0 {
			return best
		}
	}
	return -1
}

func routesDiff(rs []routerApproval) (string, bool) {
	var parts []string
	for _, r := range rs {
		if len(r.missing) > 0 {
			parts = append(parts, fmt.Sprintf("approve on %s: %s", r.node, strings.Join(r.missing, ", ")))
		}
	}
	if len(parts) == 0 {
		names := make([]string, len(rs))
		for i, r := range rs {
			names[i] = r.node
		}
		return fmt.Sprintf("routes approved on %d router(s): %s", len(rs), strings.Join(names, ", ")), false
	}
	return strings.Join(parts, "; "), true
}

func planRoutesApproved(ctx context.Context, env *Env) (Plan, error) {
	if !boolDefault(env.Spec.Network.AutoApproveRoutes, true) {
		return Plan{Action: messages.ActionUnchanged, Diff: "network.autoApproveRoutes is false: routes are approved by hand"}, nil
	}
	_, rs, unreg, err := observeRoutes(ctx, env)
	if err != nil {
		return Plan{}, err
	}
	diff, changes := routesDiff(rs)
	if len(unreg) > 0 {
		// A router that has not logged in yet: tailscale_login, earlier in
		// this layer, registers it; a plan made before it ran says so.
		d := "routers not registered on Headscale yet: " + strings.Join(unreg, ", ")
		if changes {
			d += "; " + diff
		}
		return Plan{Action: messages.ActionCreate, Diff: d}, nil
	}
	if !changes {
		return Plan{Action: messages.ActionUnchanged, Diff: diff}, nil
	}
	return Plan{Action: messages.ActionUpdate, Diff: diff}, nil
}

type routesUndo struct {
	Nodes []routesUndoNode `json:"nodes"`
}

type routesUndoNode struct {
	ID       uint64   `json:"id"`
	Node     string   `json:"node"`
	Approved []string `json:"approved"`
}

func applyRoutesApproved(ctx context.Context, env *Env) (Applied, error) {
	if !boolDefault(env.Spec.Network.AutoApproveRoutes, true) {
		return Applied{Action: messages.ActionUnchanged, Diff: "network.autoApproveRoutes is false: routes are approved by hand"}, nil
	}
	h, rs, unreg, err := observeRoutes(ctx, env)
	if err != nil {
		return Applied{}, err
	}
	if len(unreg) > 0 {
		// Retryable: a router that just logged in may not be listed yet.
		return Applied{}, Retry(fmt.Errorf("routers not registered on Headscale user %s: %s (step %s logs them in)",
			headscaleUserName(env.Spec), strings.Join(unreg, ", "), StepTailscaleLogin))
	}
	diff, changes := routesDiff(rs)
	if !changes {
		return Applied{Action: messages.ActionUnchanged, Diff: diff}, nil
	}
	var undo routesUndo
	for _, r := range rs {
		if len(r.missing) == 0 {
			continue
		}
		all := slices.Concat(r.approved, r.missing)
		slices.Sort(all)
		if err := h.approveRoutes(ctx, r.id, all); err != nil {
			return Applied{Undo: routesUndoOrNil(undo)}, fmt.Errorf("router %s: %w", r.node, err)
		}
		undo.Nodes = append(undo.Nodes, routesUndoNode{ID: r.id, Node: r.node, Approved: r.approved})
	}
	return Applied{Action: messages.ActionUpdate, Diff: diff, Undo: undo}, nil
}

func routesUndoOrNil(u routesUndo) any {
	if len(u.Nodes) == 0 {
		return nil
	}
	return u
}

func undoRoutesApproved(ctx context.Context, env *Env, raw json.RawMessage) error {
	var u routesUndo
	if err := json.Unmarshal(raw, &u); err != nil {
		return fmt.Errorf("undo %s: %w", StepRoutesApproved, err)
	}
	if len(u.Nodes) == 0 {
		return nil
	}
	h, err := headscaleFor(env)
	if err != nil {
		return err
	}
	for _, n := range u.Nodes {
		if err := h.approveRoutes(ctx, n.ID, n.Approved); err != nil {
			return fmt.Errorf("undo %s on %s: %w", StepRoutesApproved, n.Node, err)
		}
	}
	return nil
}

// ---- routes_active ----

// routesActiveTimeout bounds the wait for a renewed session to bring the
// approved routes into the router's status.
const routesActiveTimeout = 30 * time.Second

// errNotRunning: tailscaled is not logged in and running.
var errNotRunning = errors.New("not running")

// inactiveRoutes are the spec routes the router's own status does not
// carry, as primary or (standby) in AllowedIPs.
func inactiveRoutes(ctx context.Context, env *Env) ([]string, error) {
	want, err := specRoutes(env.Spec)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
	defer cancel()
	st, err := localClient(env).StatusWithoutPeers(cctx)
	if err != nil {
		return nil, fmt.Errorf("tailscaled status: %w", err)
	}
	if st.BackendState != ipn.Running.String() {
		return nil, fmt.Errorf("tailscaled is %s, not Running (step %s logs it in): %w", st.BackendState, StepTailscaleLogin, errNotRunning)
	}
	var have []netip.Prefix
	if st.Self != nil {
		if st.Self.PrimaryRoutes != nil {
			have = append(have, st.Self.PrimaryRoutes.AsSlice()...)
		}
		if st.Self.AllowedIPs != nil {
			have = append(have, st.Self.AllowedIPs.AsSlice()...)
		}
	}
	var missing []string
	for _, p := range want {
		if !slices.Contains(have, p) {
			missing = append(missing, p.String())
		}
	}
	return missing, nil
}

func planRoutesActive(ctx context.Context, env *Env) (Plan, error) {
	if err := tailscaledAnswers(ctx, env); err != nil {
		var be *BlockedError
		if errors.As(err, &be) {
			return Plan{Action: messages.ActionBlocked, Diff: be.Missing, Blocked: be.Error()}, nil
		}
		return Plan{}, err
	}
	missing, err := inactiveRoutes(ctx, env)
	if errors.Is(err, errNotRunning) {
		// Not logged in yet: a plan made before tailscale_login ran.
		return Plan{Action: messages.ActionUpdate, Diff: "check the routes once logged in: " + err.Error()}, nil
	}
	if err != nil {
		return Plan{}, err
	}
	if len(missing) == 0 {
		return Plan{Action: messages.ActionUnchanged, Diff: "this router's status carries every route"}, nil
	}
	return Plan{Action: messages.ActionUpdate, Diff: "renew the control session: status lacks " + strings.Join(missing, ", ")}, nil
}

func applyRoutesActive(ctx context.Context, env *Env) (Applied, error) {
	missing, err := inactiveRoutes(ctx, env)
	if err != nil {
		return Applied{}, err
	}
	if len(missing) == 0 {
		return Applied{Action: messages.ActionUnchanged, Diff: "this router's status carries every route"}, nil
	}
	diff := "renewed the control session: status lacked " + strings.Join(missing, ", ")
	lc := localClient(env)
	for _, on := range []bool{false, true} {
		cctx, cancel := context.WithTimeout(ctx, localAPITimeout)
		_, err := lc.EditPrefs(cctx, &ipn.MaskedPrefs{Prefs: ipn.Prefs{WantRunning: on}, WantRunningSet: true})
		cancel()
		if err != nil {
			return Applied{}, fmt.Errorf("renew tailscaled's control session (want-running %t): %w", on, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, routesActiveTimeout)
	defer cancel()
	for {
		missing, err = inactiveRoutes(wctx, env)
		if err == nil && len(missing) == 0 {
			return Applied{Action: messages.ActionUpdate, Diff: diff}, nil
		}
		select {
		case <-wctx.Done():
			if err == nil {
				err = fmt.Errorf("status still lacks %s (approved on Headscale? step %s approves them)",
					strings.Join(missing, ", "), StepRoutesApproved)
			}
			return Applied{}, fmt.Errorf("routes not active on this router %v after renewing its session: %w (%w)",
				routesActiveTimeout, err, wctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
