package checks

// Application checks, cluster-scoped: the GuildNet host app (TLS on
// LISTEN_LOCAL), the workspace operator and the Workspaces it reconciles,
// and the host app's proxy to a running Workspace.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/guildnet/metaguildnet/internal/config"
)

// Application defaults, as GuildNet has them.
const (
	DefaultHostAppURL          = "https://127.0.0.1:8090"
	DefaultHostAppMaxLatency   = time.Second
	DefaultWorkspacePendingMax = 5 * time.Minute
	// DefaultWorkspacePendingWarn is GuildNet's own target for a Workspace
	// to reach Running.
	DefaultWorkspacePendingWarn = 45 * time.Second
	DefaultProxyWarnLatency     = 200 * time.Millisecond
	defaultOperatorNamespace    = "guildnet-system"
	defaultOperatorName         = "workspace-operator"
	defaultHostAppNamespace     = "default"
	hostAppClientKey            = "hostapp.client"
	maxHostAppBody              = 64 << 10
)

// ApplicationChecks are the application layer's checks.
func ApplicationChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "hostapp_healthz",
			Description: "the host app answers GET /healthz with \"ok\" within 1 s (TLS)",
			Timeout:     5 * time.Second,
			Run:         checkHostAppHealthz,
		},
		{
			Name:        "hostapp_api_health",
			Description: "the host app's /api/health and /api/cluster/{id}/health report this node's cluster ok",
			Timeout:     5 * time.Second,
			Run:         checkHostAppAPIHealth,
		},
		{
			Name:        "operator_available",
			Description: "Deployment guildnet-system/workspace-operator is available (unless embedded: GN_EMBED_OPERATOR=1)",
			Timeout:     10 * time.Second,
			Run:         withKube(checkOperatorAvailable),
		},
		{
			Name:        "workspaces_settled",
			Description: "no Workspace is Pending or Failed for longer than METAGN_WORKSPACE_PENDING_MAX; Pending past 45 s warns",
			Timeout:     10 * time.Second,
			Run:         withKube(checkWorkspacesSettled),
		},
		{
			Name:        "proxy_answers",
			Description: "the host app's /proxy/server/{id}/ answers, neither 404 nor 5xx, for a Running Workspace in the host app's namespace",
			Timeout:     10 * time.Second,
			Run:         withKube(checkProxyAnswers),
		},
	})
}

// hostApp is the host app's base URL and a client that trusts it.
type hostApp struct {
	Base   string
	Client *http.Client
}

// HostAppURL is the host app's base URL: HOSTAPP_URL, else https:// and
// LISTEN_LOCAL, else https://127.0.0.1:8090.
func HostAppURL(s config.Settings) string {
	if u := s.Get("HOSTAPP_URL", ""); u != "" {
		return strings.TrimRight(u, "/")
	}
	if l := s.Get("LISTEN_LOCAL", ""); l != "" {
		return "https://" + l
	}
	return DefaultHostAppURL
}

// hostAppClient builds (once per run) the client for the host app: the CA
// in METAGN_HOSTAPP_CA, or no verification with METAGN_HOSTAPP_INSECURE,
// else the system's roots.
func hostAppClient(cx *CheckEnv) (*hostApp, error) {
	h, _, err := LazyClient(cx, hostAppClientKey, func() (*hostApp, func(), error) {
		return newHostAppClient(cx)
	})
	return h, err
}

func newHostAppClient(cx *CheckEnv) (*hostApp, func(), error) {
	base := HostAppURL(cx.Settings)
	if u, err := url.Parse(base); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, nil, fmt.Errorf("host app URL %q is not an http(s) URL", base)
	}
	tc, err := clientTLS(cx.Setting("METAGN_HOSTAPP_CA", ""), settingBool(cx, "METAGN_HOSTAPP_INSECURE"), "setting METAGN_HOSTAPP_CA")
	if err != nil {
		return nil, nil, err
	}
	tr := &http.Transport{TLSClientConfig: tc, Proxy: nil, MaxIdleConns: 2, IdleConnTimeout: 10 * time.Second, TLSHandshakeTimeout: 5 * time.Second}
	// The proxy may redirect; a redirect is an answer.
	h := &hostApp{Base: base, Client: answerClient(tr)}
	return h, tr.CloseIdleConnections, nil
}

// tlsHint adds advice to a certificate error.
func tlsHint(err error) string {
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &uae):
		return err.Error() + " (set METAGN_HOSTAPP_CA to the host app's CA, or METAGN_HOSTAPP_INSECURE=true)"
	case errors.As(err, &hne):
		return err.Error() + " (regenerate the host app's certificate with this address in its SANs)"
	case errors.As(err, &cie):
		return err.Error() + " (the host app's certificate is invalid or expired)"
	}
	return err.Error()
}

func checkHostAppHealthz(ctx context.Context, cx *CheckEnv) Result {
	h, err := hostAppClient(cx)
	if err != nil {
		return Fail("%v", err)
	}
	limit, err := settingMillis(cx, "METAGN_HOSTAPP_MAX_MS", DefaultHostAppMaxLatency)
	if err != nil {
		return Fail("%v", err)
	}
	u := h.Base + "/healthz"
	thr := map[string]any{"max_latency_ms": limit.Milliseconds(), "body": "ok"}
	resp, err := httpGet(ctx, h.Client, u, 1024)
	if err != nil {
		return Fail("host app unreachable: %s", tlsHint(err)).With(map[string]any{"url": u}, thr)
	}
	obs := map[string]any{"url": u, "status": resp.Code, "latency_ms": ms(resp.Latency)}
	body := strings.TrimSpace(string(resp.Body))
	switch {
	case resp.Code != http.StatusOK:
		return Fail("GET %s answered %d %s: %s", u, resp.Code, http.StatusText(resp.Code), firstLine(resp.Body)).With(obs, thr)
	case body != "ok":
		return Fail("GET %s answered 200 with %q, want \"ok\"", u, Truncate(body, 100)).With(obs, thr)
	case resp.Latency > limit:
		return Fail("GET %s answered ok after %s, limit %s", u, resp.Latency.Round(time.Millisecond), limit).With(obs, thr)
	}
	return Pass("host app ok in %s", resp.Latency.Round(time.Millisecond)).With(obs, thr)
}

// apiHealth is the host app's /api/health.
type apiHealth struct {
	Headscale []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"headscale"`
	Clusters []struct {
		ID     string `json:"id"`
		Name   string `json:"name"`
		Status string `json:"status"`
		Code   any    `json:"code"`
		Error  string `json:"error"`
	} `json:"clusters"`
}

// clusterHealth is the host app's /api/cluster/{id}/health.
type clusterHealth struct {
	K8s struct {
		OK bool `json:"ok"`
	} `json:"k8s"`
	RDB struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	} `json:"rdb"`
}

// checkHostAppAPIHealth judges the agent's own cluster (by id or name) from
// /api/health and /api/cluster/{id}/health; other clusters' state is
// reported, never failed on. Without a cluster of its own the agent judges
// every cluster.
func checkHostAppAPIHealth(ctx context.Context, cx *CheckEnv) Result {
	h, err := hostAppClient(cx)
	if err != nil {
		return Fail("%v", err)
	}
	u := h.Base + "/api/health"
	resp, err := httpGet(ctx, h.Client, u, maxHostAppBody)
	if err != nil {
		return Fail("%s", tlsHint(err))
	}
	if resp.Code != http.StatusOK {
		return Fail("GET %s answered %d: %s", u, resp.Code, firstLine(resp.Body))
	}
	var ah apiHealth
	if err := json.Unmarshal(resp.Body, &ah); err != nil {
		return Fail("GET %s: not the expected JSON: %v", u, err)
	}
	var bad, unknown, ok, mine []string
	ownID, ownStatus := "", ""
	for _, c := range ah.Clusters {
		label := c.ID
		if c.Name != "" && c.Name != c.ID {
			label = fmt.Sprintf("%s (%s)", c.Name, c.ID)
		}
		own := cx.Cluster != "" && (c.ID == cx.Cluster || c.Name == cx.Cluster)
		if own {
			ownID, ownStatus = c.ID, c.Status
		}
		switch c.Status {
		case "ok":
			ok = append(ok, label)
		case "unknown", "":
			if own || cx.Cluster == "" {
				unknown = append(unknown, label+" unknown")
			} else {
				bad = append(bad, label+" unknown")
			}
		default:
			d := label + " " + c.Status
			if c.Error != "" {
				d += ": " + c.Error
			}
			if own {
				mine = append(mine, d)
			} else {
				bad = append(bad, d)
			}
		}
	}
	var hsBad []string
	for _, hs := range ah.Headscale {
		if hs.Status != "ok" && hs.Status != "pass" && hs.Status != "healthy" {
			hsBad = append(hsBad, fmt.Sprintf("headscale %s %s", hs.ID, orNone(hs.Status)))
		}
	}
	obs := map[string]any{"clusters_ok": len(ok), "clusters": len(ah.Clusters), "headscale": len(ah.Headscale), "cluster": cx.Cluster}
	if cx.Cluster == "" {
		// No cluster of its own: every cluster counts.
		mine, bad = bad, nil
	} else if ownID == "" {
		return Warn("host app does not report this node's cluster %s (it reports %d clusters)", cx.Cluster, len(ah.Clusters)).With(obs, nil)
	} else if ownStatus != "unknown" && ownStatus != "" {
		// The host app knows the cluster: its own health endpoint says
		// what is wrong with it.
		if p := ownClusterProblem(ctx, h, ownID); p != "" {
			mine = append(mine, p)
		}
	}
	others := ""
	if len(bad) > 0 {
		others = "; other clusters not ok: " + strings.Join(bad, "; ")
	}
	switch {
	case len(mine) > 0:
		return Fail("host app reports clusters not ok: %s%s", strings.Join(slices.Concat(mine, unknown, hsBad), "; "), others).With(obs, nil)
	case len(unknown) > 0 || len(hsBad) > 0:
		return Warn("host app reports: %s%s", strings.Join(slices.Concat(unknown, hsBad), "; "), others).With(obs, nil)
	case len(ah.Clusters) == 0:
		return Warn("host app reports no clusters").With(obs, nil)
	}
	return Pass("host app reports %d clusters ok: %s%s", len(ok), strings.Join(ok, ", "), others).With(obs, nil)
}

// ownClusterProblem reads /api/cluster/{id}/health and says what is not ok,
// or "".
func ownClusterProblem(ctx context.Context, h *hostApp, id string) string {
	u := h.Base + "/api/cluster/" + url.PathEscape(id) + "/health"
	resp, err := httpGet(ctx, h.Client, u, maxHostAppBody)
	if err != nil {
		return tlsHint(err)
	}
	if resp.Code != http.StatusOK {
		return fmt.Sprintf("GET %s answered %d: %s", u, resp.Code, firstLine(resp.Body))
	}
	var ch clusterHealth
	if err := json.Unmarshal(resp.Body, &ch); err != nil {
		return fmt.Sprintf("GET %s: not the expected JSON: %v", u, err)
	}
	var p []string
	if !ch.K8s.OK {
		p = append(p, "Kubernetes not ok")
	}
	if !ch.RDB.OK {
		p = append(p, "RethinkDB not ok: "+orNone(ch.RDB.Error))
	}
	if len(p) == 0 {
		return ""
	}
	return fmt.Sprintf("cluster %s health: %s", id, strings.Join(p, "; "))
}

func checkOperatorAvailable(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	if v := cx.Setting("GN_EMBED_OPERATOR", ""); v == "1" || v == "true" {
		return NotApplicable("operator embedded in the host app (GN_EMBED_OPERATOR=%s)", v)
	}
	ns := cx.Setting("METAGN_OPERATOR_NAMESPACE", defaultOperatorNamespace)
	name := cx.Setting("METAGN_OPERATOR_DEPLOYMENT", defaultOperatorName)
	if p := deploymentProblem(ctx, k, ns, name); p != "" {
		return Fail("workspace operator: %s", p)
	}
	return Pass("Deployment %s available", qualified(ns, name))
}

// workspaceSince estimates since when a Workspace has been in its phase:
// the last write of its status for Failed, its creation for Pending (the
// operator sets no conditions and so no transition times).
func workspaceSince(w *unstructured.Unstructured, phase string) time.Time {
	since := w.GetCreationTimestamp().Time
	if phase == "Failed" {
		for _, mf := range w.GetManagedFields() {
			if mf.Subresource == "status" && mf.Time != nil && mf.Time.After(since) {
				since = mf.Time.Time
			}
		}
	}
	return since
}

func checkWorkspacesSettled(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	max, err := settingDuration(cx, "METAGN_WORKSPACE_PENDING_MAX", DefaultWorkspacePendingMax)
	if err != nil {
		return Fail("%v", err)
	}
	warnAt, err := settingDuration(cx, "METAGN_WORKSPACE_PENDING_WARN", DefaultWorkspacePendingWarn)
	if err != nil {
		return Fail("%v", err)
	}
	wss, err := k.list(ctx, gvrWorkspaces, "", "")
	if err != nil {
		return Fail("%v", err)
	}
	now := time.Now()
	phases := map[string]int{}
	var stuck, slow, settling []string
	for i := range wss {
		w := &wss[i]
		phase := nestedString(w.Object, "status", "phase")
		if phase == "" {
			phase = "Pending"
		}
		phases[phase]++
		if phase != "Pending" && phase != "Failed" {
			continue
		}
		age := now.Sub(workspaceSince(w, phase))
		d := fmt.Sprintf("%s %s for %s", qualified(w.GetNamespace(), w.GetName()), phase, age.Round(time.Second))
		if e := nestedString(w.Object, "status", "lastError"); e != "" {
			d += " (" + Truncate(e, 120) + ")"
		}
		switch {
		case age > max:
			stuck = append(stuck, d)
		case phase == "Pending" && age > warnAt:
			slow = append(slow, d)
		default:
			settling = append(settling, d)
		}
	}
	obs := map[string]any{"workspaces": len(wss), "phases": phases, "stuck": len(stuck), "slow": len(slow)}
	thr := map[string]any{"pending_max": max.String(), "pending_warn": warnAt.String()}
	switch {
	case len(stuck) > 0:
		return Fail("%d Workspaces stuck beyond %s: %s", len(stuck), max, strings.Join(stuck, ", ")).With(obs, thr)
	case len(slow) > 0:
		return Warn("%d Workspaces Pending beyond %s (GuildNet's target for Running): %s", len(slow), warnAt, strings.Join(slow, ", ")).With(obs, thr)
	case len(settling) > 0:
		return Pass("%d Workspaces settled, %d still settling: %s", len(wss)-len(settling), len(settling), strings.Join(settling, ", ")).With(obs, thr)
	}
	return Pass("all %d Workspaces settled", len(wss)).With(obs, thr)
}

func checkProxyAnswers(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	h, err := hostAppClient(cx)
	if err != nil {
		return Fail("%v", err)
	}
	warnAt, err := settingMillis(cx, "METAGN_PROXY_WARN_MS", DefaultProxyWarnLatency)
	if err != nil {
		return Fail("%v", err)
	}
	// GuildNet's proxy resolves workspaces in its own namespace only.
	ns := cx.Setting("METAGN_HOSTAPP_NAMESPACE", defaultHostAppNamespace)
	wss, err := k.list(ctx, gvrWorkspaces, ns, "")
	if err != nil {
		return Fail("%v", err)
	}
	var running []*unstructured.Unstructured
	for i := range wss {
		if nestedString(wss[i].Object, "status", "phase") == "Running" {
			running = append(running, &wss[i])
		}
	}
	if len(running) == 0 {
		return NotApplicable("no Running Workspace in %s, the host app's namespace, to proxy to (%d Workspaces there)", ns, len(wss))
	}
	slices.SortFunc(running, func(a, b *unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
	w := qualified(ns, running[0].GetName())
	u := h.Base + "/proxy/server/" + url.PathEscape(running[0].GetName()) + "/"
	thr := map[string]any{"status": "not 404, < 500", "warn_latency_ms": warnAt.Milliseconds()}
	resp, err := httpGet(ctx, h.Client, u, 4096)
	if err != nil {
		return Fail("proxy to Workspace %s: %s", w, tlsHint(err)).With(map[string]any{"url": u}, thr)
	}
	obs := map[string]any{"url": u, "workspace": w, "status": resp.Code, "latency_ms": ms(resp.Latency)}
	switch {
	case resp.Code == http.StatusNotFound:
		// GuildNet's proxy falls back to a pod path that answers 404 at
		// once when no pod backs the workspace: not an answer.
		return Fail("proxy to Workspace %s answered 404 Not Found: no pod backs it though its phase is Running", w).With(obs, thr)
	case resp.Code >= 500:
		return Fail("proxy to Workspace %s answered %d %s: %s", w, resp.Code, http.StatusText(resp.Code), firstLine(resp.Body)).With(obs, thr)
	case resp.Latency > warnAt:
		return Warn("proxy to Workspace %s answered %d after %s, above %s", w, resp.Code, resp.Latency.Round(time.Millisecond), warnAt).With(obs, thr)
	}
	return Pass("proxy to Workspace %s answered %d in %s", w, resp.Code, resp.Latency.Round(time.Millisecond)).With(obs, thr)
}
