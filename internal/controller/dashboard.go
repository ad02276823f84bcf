package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/internal/dashboard"
	"github.com/guildnet/metaguildnet/messages"
)

// The web dashboard (internal/dashboard) on the --http address, reading
// the controller's own state through dashSource. On loopback it is open
// for reading; bound anywhere else the controller refuses to start
// without TLS, and the dashboard asks for a sign-in to read as well.

// httpExposure checks the HTTP address against its TLS settings. The
// address "tailnet" or "tailnet:PORT" serves on the controller's tailnet
// address only (--tailnet's tsnet node, or the host tailscaled's address
// with --listen tailnet): the tailnet encrypts, so TLS is optional there,
// but reading needs a sign-in as anywhere but loopback.
func httpExposure(o Options) (tlsOn, loopback bool, err error) {
	if (o.HTTPTLSCert == "") != (o.HTTPTLSKey == "") {
		return false, false, errors.New("--http-tls-cert and --http-tls-key go together: give both or neither")
	}
	tlsOn = o.HTTPTLSCert != ""
	if rest, ok := strings.CutPrefix(o.HTTP, "tailnet"); ok {
		if _, err := httpTailnetPort(rest); err != nil {
			return false, false, fmt.Errorf("--http %q: %w", o.HTTP, err)
		}
		if !o.Tailnet.Enabled && !strings.HasPrefix(o.Listen, "tailnet") {
			return false, false, fmt.Errorf("--http %s serves on the controller's tailnet address: give --tailnet (or --listen tailnet)", o.HTTP)
		}
		return tlsOn, false, nil
	}
	host, _, err := net.SplitHostPort(o.HTTP)
	if err != nil {
		return false, false, fmt.Errorf("--http %q: %w", o.HTTP, err)
	}
	ip := net.ParseIP(host)
	loopback = host == "localhost" || ip != nil && ip.IsLoopback()
	if !loopback && !tlsOn {
		return false, false, fmt.Errorf("--http %s is not a loopback address: the dashboard and /metrics would travel in plain text; "+
			"give --http-tls-cert and --http-tls-key (the dashboard then needs a sign-in to read), serve it on the tailnet (--http tailnet:PORT), "+
			"or bind 127.0.0.1 and reach it through a tunnel", o.HTTP)
	}
	return tlsOn, loopback, nil
}

// DefaultHTTPTailnetPort is the dashboard's port with --http tailnet.
const DefaultHTTPTailnetPort = 8222

// httpTailnetPort reads the ":PORT" after "tailnet" in --http.
func httpTailnetPort(rest string) (int, error) {
	if rest == "" {
		return DefaultHTTPTailnetPort, nil
	}
	p, ok := strings.CutPrefix(rest, ":")
	n, err := strconv.Atoi(p)
	if !ok || err != nil || n <= 0 || n > 65535 {
		return 0, errors.New("want tailnet or tailnet:PORT")
	}
	return n, nil
}

// listenHTTP opens the HTTP listener: on the tailnet address for
// "tailnet[:PORT]", else on the address given.
func (c *Controller) listenHTTP() (net.Listener, error) {
	rest, ok := strings.CutPrefix(c.opts.HTTP, "tailnet")
	if !ok {
		ln, err := net.Listen("tcp", c.opts.HTTP)
		if err != nil {
			return nil, fmt.Errorf("--http %s: %w", c.opts.HTTP, err)
		}
		return ln, nil
	}
	port, _ := httpTailnetPort(rest) // checked by httpExposure
	if c.tr.node != nil {
		ln, err := c.tr.node.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return nil, fmt.Errorf("--http %s: listen on the tailnet: %w", c.opts.HTTP, err)
		}
		return ln, nil
	}
	if c.tr.host == "" {
		return nil, fmt.Errorf("--http %s: no tailnet address (give --tailnet or --listen tailnet)", c.opts.HTTP)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.tr.host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("--http %s: %w", c.opts.HTTP, err)
	}
	return ln, nil
}

// httpAddr is the address in links to the dashboard: on the tailnet,
// the controller's tailnet IP.
func (c *Controller) httpAddr(ln net.Listener) string {
	if strings.HasPrefix(c.opts.HTTP, "tailnet") && c.tr.host != "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		return net.JoinHostPort(c.tr.host, port)
	}
	return ln.Addr().String()
}

func (c *Controller) mountDashboard(mux *http.ServeMux, tlsOn, requireSignIn bool) error {
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(c.opts.HTTPTLSCert, c.opts.HTTPTLSKey)
		if err != nil {
			return fmt.Errorf("--http-tls-cert/--http-tls-key: %w", err)
		}
		c.httpTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	d, err := dashboard.New(dashboard.Options{Source: &dashSource{c: c}, RequireSignIn: requireSignIn, Secure: tlsOn,
		Log: c.log.Named("dashboard")})
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	c.dash.Store(d)
	mux.Handle("/", d)
	return nil
}

// changed tells open dashboards that state of kind changed.
func (c *Controller) changed(kind string) {
	if d := c.dash.Load(); d != nil {
		d.Notify(kind)
	}
}

// dashboardLogin makes a one-time sign-in link (API verb dashboard.login).
func (c *Controller) dashboardLogin(req messages.DashboardLoginRequest) (*messages.DashboardLoginReply, error) {
	d := c.dash.Load()
	if d == nil {
		return nil, messages.Errorf(messages.CodeNotFound, "the dashboard is off: serve with --http ADDRESS")
	}
	tok, exp := d.NewLogin(req.DashboardLoginTTL())
	c.log.Info("dashboard sign-in link made", zap.Time("expires_at", exp))
	return &messages.DashboardLoginReply{V: messages.Version, URL: c.httpURL + "/login?token=" + tok, Token: tok, ExpiresAt: exp}, nil
}

// dashSource is the controller's state as the dashboard reads it.
type dashSource struct {
	c *Controller

	mu       sync.Mutex
	kb       *rules.KB
	gen      uint64
	findings []messages.Finding
}

func (s *dashSource) Fleet(now time.Time) messages.StatusReply {
	st := s.c.reg.status(now)
	st.Total = len(st.Nodes)
	seen := map[string]bool{}
	for i := range st.Nodes {
		n := &st.Nodes[i]
		n.Layers, n.LastVerified = s.c.ver.layersOf(n.Name)
		if !seen[n.Cluster] {
			seen[n.Cluster] = true
			st.Clusters = append(st.Clusters, s.c.ver.clusterStatus(n.Cluster))
		}
	}
	return st
}

func (s *dashSource) LastChecks(cluster string) []messages.CheckResult {
	return s.c.ver.lastChecks(cluster)
}

// Findings applies the diagnostic rules to every cluster's last checks,
// again only when they changed.
func (s *dashSource) Findings() []messages.Finding {
	checks, gen := s.c.ver.allChecks()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kb != nil && gen == s.gen {
		return s.findings
	}
	if s.kb == nil {
		kb, err := rules.Load(s.c.opts.RulesFile)
		if err != nil {
			if kb, err = rules.Builtin(); err != nil {
				s.c.log.Warn("dashboard: diagnostic rules", zap.Error(err))
				return nil
			}
		}
		s.kb = kb
	}
	idx := map[string]int{}
	var nodes []diagnostics.NodeInput
	for _, c := range checks {
		i, ok := idx[c.Node]
		if !ok {
			i = len(nodes)
			idx[c.Node] = i
			nodes = append(nodes, diagnostics.NodeInput{Name: c.Node, Cluster: c.Cluster})
		}
		nodes[i].Checks = append(nodes[i].Checks, c)
	}
	for _, m := range s.c.reg.members() {
		if i, ok := idx[m.name]; ok {
			nodes[i].Role = m.role
		}
	}
	s.findings = diagnostics.Analyze(s.kb, nodes, time.Now()).Findings
	s.gen = gen
	return s.findings
}

// reportTime reads a report's time from its name (verifier.store).
func reportTime(id string) (time.Time, bool) {
	if !strings.HasPrefix(id, "r") {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102T150405.000000000", strings.Replace(id[1:], "-", ".", 1))
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

func (s *dashSource) Reports(ctx context.Context, since time.Time) ([]dashboard.ReportRef, error) {
	infos, err := s.c.ver.reports.List(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoObjectsFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list reports: %w", err)
	}
	var out []dashboard.ReportRef
	for _, in := range infos {
		if t, ok := reportTime(in.Name); ok && !in.Deleted && !t.Before(since) {
			out = append(out, dashboard.ReportRef{ID: in.Name, Time: t})
		}
	}
	slices.SortFunc(out, func(a, b dashboard.ReportRef) int { return a.Time.Compare(b.Time) })
	return out, nil
}

func (s *dashSource) Report(ctx context.Context, id string) (messages.Report, error) {
	return s.c.ver.get(ctx, id)
}

func (s *dashSource) Diagnose(ctx context.Context, node string) (messages.DiagnoseResult, error) {
	rep, err := s.c.diagnose(ctx, messages.DiagnoseRequest{V: messages.Version, Node: node})
	if err != nil {
		return messages.DiagnoseResult{}, err
	}
	b, err := s.c.diagnoses.GetBytes(ctx, rep.ResultID)
	if err != nil {
		return messages.DiagnoseResult{}, fmt.Errorf("read diagnosis %s: %w", rep.ResultID, err)
	}
	var res messages.DiagnoseResult
	if err := json.Unmarshal(b, &res); err != nil {
		return res, fmt.Errorf("read diagnosis %s: %w", rep.ResultID, err)
	}
	return res, nil
}

// maxTaskScan bounds the task history a node page reads.
const maxTaskScan = 200

func (s *dashSource) NodeTasks(ctx context.Context, node string, max int) ([]messages.TaskReport, error) {
	d := s.c.disp
	ids := map[string]bool{}
	d.mu.Lock()
	for id, ts := range d.tasks {
		if slices.Contains(ts.rec.Targets, node) {
			ids[id] = true
		}
	}
	d.mu.Unlock()
	keys, err := d.history.ListKeys(ctx)
	if err == nil {
		var all []string
		for k := range keys.Keys() {
			all = append(all, k)
		}
		slices.Sort(all) // ids start with their issue time
		for i := len(all) - 1; i >= 0 && i >= len(all)-maxTaskScan; i-- {
			e, err := d.history.Get(ctx, all[i])
			if err != nil {
				continue
			}
			var rec taskRecord
			if json.Unmarshal(e.Value(), &rec) == nil && slices.Contains(rec.Targets, node) {
				ids[all[i]] = true
			}
		}
	} else if !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, fmt.Errorf("task history: %w", err)
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	slices.Sort(sorted)
	slices.Reverse(sorted)
	var out []messages.TaskReport
	for _, id := range sorted[:min(len(sorted), max)] {
		rep, err := d.report(ctx, id, 0)
		if err != nil {
			continue
		}
		rep.Results = slices.DeleteFunc(slices.Clone(rep.Results), func(r messages.NodeResult) bool { return r.Node != node })
		for i := range rep.Results {
			rep.Results[i].Output = nil // outputs are for the CLI; the page shows outcomes
		}
		out = append(out, rep)
	}
	return out, nil
}

// dashRuns is how many setup runs and rollouts the runs page shows,
// newest first.
const dashRuns = 20

// SetupRuns returns the newest setup runs, live ones as they stand.
func (s *dashSource) SetupRuns(ctx context.Context) ([]messages.SetupRun, error) {
	r := s.c.setup
	if r == nil {
		return nil, nil
	}
	ids, err := newestKeys(ctx, s.c.js, r.runs, dashRuns)
	if err != nil {
		return nil, fmt.Errorf("setup runs: %w", err)
	}
	out := make([]messages.SetupRun, 0, len(ids))
	for _, id := range ids {
		if rep, err := r.status(ctx, id); err == nil {
			out = append(out, rep.Run)
		}
	}
	return out, nil
}

// Rollouts returns the newest rollouts with their batches and gates.
func (s *dashSource) Rollouts(ctx context.Context) ([]dashboard.Rollout, error) {
	r := s.c.rollout
	if r == nil {
		return nil, nil
	}
	ids, err := newestKeys(ctx, s.c.js, r.kv, dashRuns)
	if err != nil {
		return nil, fmt.Errorf("rollouts: %w", err)
	}
	out := make([]dashboard.Rollout, 0, len(ids))
	for _, id := range ids {
		rep, err := r.status(ctx, id)
		if err != nil {
			continue
		}
		ro := dashboard.Rollout{ID: rep.Rollout.ID, Status: rep.Rollout.Status, StopReason: rep.Reason}
		for i, b := range rep.Rollout.Batches {
			if i == 0 && b.Started != nil {
				ro.StartedAt = *b.Started
			}
			gate := b.Gate.Status
			if len(b.Gate.ChecksFailed) > 0 {
				gate += ": " + strings.Join(b.Gate.ChecksFailed, ", ")
			}
			ro.Batches = append(ro.Batches, dashboard.RolloutBatch{Nodes: b.Nodes, Status: b.Status, Gate: gate})
		}
		out = append(out, ro)
	}
	return out, nil
}

// newestKeys lists up to n keys of a bucket whose keys start with their
// UTC start time (run and rollout ids), newest first.
// It lists without a consumer (kvKeys): right after a failover the status
// of a run must not wait for a JetStream meta leader.
func newestKeys(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, n int) ([]string, error) {
	ids, err := kvKeys(ctx, js, kv.Bucket())
	if err != nil {
		return nil, err
	}
	slices.Reverse(ids)
	return ids[:min(len(ids), n)], nil
}

// newestID is id, or when id is "" the newest key of kv (newestKeys); with
// none, a not-found error that says what to run (hint). what names the
// records in errors ("setup runs").
func newestID(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, id, what, hint string) (string, error) {
	if id != "" {
		return id, nil
	}
	newest, err := newestKeys(ctx, js, kv, 1)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", what, err)
	}
	if len(newest) == 0 {
		return "", messages.Errorf(messages.CodeNotFound, "%s", hint)
	}
	return newest[0], nil
}
