package controller

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/diagnostics/report"
	"github.com/guildnet/metaguildnet/messages"
)

// verifier runs verification sweeps: node-scoped checks (network, host) on
// every selected node, cluster-scoped ones (cluster, database, application)
// once per cluster on one agent — a controlplane node when one is online,
// else any online node of that cluster — so the API server is not asked N
// times. It stores each report and keeps every node's last status per layer
// for the fleet view.
type verifier struct {
	c       *Controller
	reports jetstream.ObjectStore
	log     *zap.Logger

	layerStatus   *prometheus.GaugeVec
	checkCounts   *prometheus.GaugeVec
	checkDuration *prometheus.HistogramVec
	sweepDuration prometheus.Histogram

	mu     sync.Mutex
	last   map[string]map[string]string // node -> layer -> status
	lastAt map[string]time.Time
	// clusters is each cluster's last status per layer, merged from every
	// report that covered it: a verification of one cluster leaves the
	// others as they were. It drives layer_state events, mgn_layer_status
	// and the fleet view's cluster lines.
	clusters map[string]map[string]layerState // cluster -> layer -> state
	lastID   string
	// checks is each cluster's newest check results (the dashboard's
	// cells, reasons and findings), checksAt the time of the report they
	// came from, and gen counts changes to them.
	checks   map[string]map[checkKey]messages.CheckResult
	checksAt map[string]time.Time
	gen      uint64

	// Background sweeps and operator requests (verify, diagnose) each have
	// their own slot: one sweep at a time and one operator verification at
	// a time, so an operator never waits behind a sweep.
	sweepSlot    chan struct{}
	operatorSlot chan struct{}
}

func newVerifier(c *Controller, store jetstream.ObjectStore) *verifier {
	v := &verifier{c: c, reports: store, log: c.log.Named("verify"),
		last: map[string]map[string]string{}, lastAt: map[string]time.Time{}, clusters: map[string]map[string]layerState{},
		checks: map[string]map[checkKey]messages.CheckResult{}, checksAt: map[string]time.Time{},
		sweepSlot: make(chan struct{}, 1), operatorSlot: make(chan struct{}, 1),
		layerStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mgn_layer_status", Help: "Each cluster's status per layer in the last verification that covered it (1 for the current status; cluster \"\" is the nodes without one).",
		}, []string{"cluster", "layer", "status"}),
		checkCounts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mgn_checks", Help: "Check results in the last verification that covered the cluster, by cluster, layer and status.",
		}, []string{"cluster", "layer", "status"}),
		checkDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mgn_check_duration_seconds", Help: "Duration of each check run, by cluster and layer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"cluster", "layer"}),
		sweepDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mgn_verify_duration_seconds", Help: "Duration of whole verification sweeps.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
	}
	c.met.reg.MustRegister(v.layerStatus, v.checkCounts, v.checkDuration, v.sweepDuration)
	return v
}

// member is what planning needs to know of a node. hostApp marks the node
// that runs GuildNet's host app (role hostapp, or label
// guildnet.io/hostapp=true).
type member struct {
	name, cluster, role, state string
	hostApp                    bool
}

// The role and label that mark the host app's node: the host app listens
// on that machine's loopback, so only an agent there can check it.
const (
	hostAppRole  = "hostapp"
	hostAppLabel = "guildnet.io/hostapp"
)

func (r *registry) members() []member {
	now := time.Now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]member, 0, len(r.nodes))
	for _, n := range r.nodes {
		hostApp := n.rec.Role == hostAppRole || n.rec.Labels[hostAppLabel] == "true"
		out = append(out, member{n.rec.Name, n.rec.Cluster, n.rec.Role, r.stateAt(n, now), hostApp})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// clusterAgents picks where a cluster's checks run. The host app's checks
// (meta.HostAppChecks) go to the online node that runs the host app
// (hostApp): it listens on that machine's loopback. The other cluster
// checks go to one agent (agent): an online controlplane node (the host
// app's, when it is one: then one agent runs them all), else an online
// node that does not run the host app, else the host app's node.
// When hostApp is "" and hostAppDown names a node, the cluster has a host
// app node that is not online: its checks cannot be run anywhere else.
// agent is "" when no node of the cluster is online.
func clusterAgents(ms []member) (agent, hostApp, hostAppDown string) {
	cp, other := "", ""
	for _, m := range ms {
		if m.hostApp {
			if m.state == messages.StateOnline {
				if hostApp == "" {
					hostApp = m.name
				}
			} else if hostAppDown == "" {
				hostAppDown = m.name
			}
		}
		if m.state != messages.StateOnline {
			continue
		}
		if m.role == "controlplane" && (cp == "" || m.name == hostApp) {
			cp = m.name
		}
		if other == "" && !m.hostApp {
			other = m.name
		}
	}
	if hostApp != "" {
		hostAppDown = ""
	}
	return cmp.Or(cp, other, hostApp), hostApp, hostAppDown
}

// wantScope says which of the requested layers a scope runs: its own
// built-in layers, and custom layers (whose checks say their own scope).
func wantScope(layers, scoped []string) ([]string, bool) {
	if len(layers) == 0 {
		return scoped, true
	}
	var mine []string
	for _, l := range layers {
		builtin := slices.Contains(report.NodeScopedLayers, l) || slices.Contains(report.ClusterScopedLayers, l)
		if !builtin || slices.Contains(scoped, l) {
			mine = append(mine, l)
		}
	}
	return mine, len(mine) > 0
}

// run performs an operator's verification (API verify and diagnose) and
// stores its report. It waits only for another operator's verification,
// never for a background sweep.
func (v *verifier) run(ctx context.Context, req messages.VerifyRequest) (messages.Report, string, error) {
	return v.runIn(ctx, v.operatorSlot, "another operator's verification", req)
}

// sweep performs a background sweep, one at a time.
func (v *verifier) sweep(ctx context.Context, req messages.VerifyRequest) (messages.Report, string, error) {
	return v.runIn(ctx, v.sweepSlot, "the previous sweep", req)
}

// runIn verifies once slot is free, or gives up with ctx.
func (v *verifier) runIn(ctx context.Context, slot chan struct{}, holder string, req messages.VerifyRequest) (messages.Report, string, error) {
	select {
	case slot <- struct{}{}:
		defer func() { <-slot }()
	case <-ctx.Done():
		return messages.Report{}, "", fmt.Errorf("verify: waiting for %s to finish: %w", holder, context.Cause(ctx))
	}
	start := time.Now()
	all := v.c.reg.members()
	var sel []member
	switch {
	case req.Node != "":
		for _, m := range all {
			if m.name == req.Node {
				sel = append(sel, m)
			}
		}
		if len(sel) == 0 {
			return messages.Report{}, "", messages.Errorf(messages.CodeNotFound, "no node named %q (see `controller status`)", req.Node)
		}
	case req.Cluster != "":
		for _, m := range all {
			if m.cluster == req.Cluster {
				sel = append(sel, m)
			}
		}
		if len(sel) == 0 {
			return messages.Report{}, "", messages.Errorf(messages.CodeNotFound, "no node in cluster %q (see `controller status`)", req.Cluster)
		}
	default:
		sel = all
	}
	if len(sel) == 0 {
		return messages.Report{}, "", messages.Errorf(messages.CodeNotFound, "no nodes enrolled yet")
	}
	timeout := messages.DefaultVerifyTimeout.String()
	if req.Timeout != "" {
		timeout = req.Timeout
	}
	nodes := make([]string, 0, len(sel))
	clusterOf := map[string]string{}
	states := map[string]string{}
	for _, m := range sel {
		nodes = append(nodes, m.name)
		clusterOf[m.name] = m.cluster
		states[m.name] = m.state
	}
	// Cluster-scoped checks: one agent per cluster touched by the selection.
	clusters := map[string][]member{}
	for _, m := range all {
		if slices.ContainsFunc(sel, func(s member) bool { return s.cluster == m.cluster }) {
			clusters[m.cluster] = append(clusters[m.cluster], m)
		}
	}
	type issued struct {
		id     string
		layers []string
		// only: keep just these checks' results, and the others' that did
		// not pass (the dependencies a host app node ran to gate its own
		// checks are the cluster agent's to report, unless they explain a
		// skip).
		only []string
	}
	var tasks []issued
	var missing []report.Unavailable
	if layers, ok := wantScope(req.Layers, report.NodeScopedLayers); ok {
		args := messages.MustEncode(&messages.VerifyArgs{V: messages.Version, Scope: messages.ScopeNode, Layers: nonEmpty(req.Layers), Checks: nonEmpty(req.Checks)})
		rep, err := v.c.disp.issueTo(ctx, messages.RunRequest{Kind: "verify", Target: "verify:node", Args: args, Timeout: timeout, SkipOffline: true}, nodes, states)
		if err != nil {
			return messages.Report{}, "", fmt.Errorf("verify: issue node checks: %w", err)
		}
		tasks = append(tasks, issued{id: rep.TaskID, layers: layers})
	}
	if layers, ok := wantScope(req.Layers, report.ClusterScopedLayers); ok {
		// Three groups, one task each: agents that run all of their
		// cluster's checks; agents whose cluster's host app runs on
		// another node (they leave its checks out); and those host app
		// nodes (they run only its checks).
		hostAppChecks := meta.HostAppChecks()
		hostAppLayer := len(req.Layers) == 0 || slices.Contains(req.Layers, messages.LayerApplication)
		var whole, split, hostApps []string
		for _, name := range sortedKeys(clusters) {
			a, h, down := clusterAgents(clusters[name])
			if a == "" {
				missing = append(missing, report.Unavailable{Cluster: name, Layers: layers,
					Reason: fmt.Sprintf("no online agent in cluster %q", name)})
				continue
			}
			for _, n := range []string{a, h} {
				if _, in := clusterOf[n]; n != "" && !in {
					clusterOf[n] = name
				}
			}
			switch {
			case !hostAppLayer || h == a || h == "" && down == "":
				whole = append(whole, a)
			case h == "":
				split = append(split, a)
				missing = append(missing, report.Unavailable{Node: down, Cluster: name, Layers: []string{messages.LayerApplication},
					Reason: fmt.Sprintf("the host app's node %s is not online: its checks (%s) run only there", down, strings.Join(hostAppChecks, ", "))})
			default:
				split = append(split, a)
				hostApps = append(hostApps, h)
			}
		}
		for _, g := range []struct {
			target string
			agents []string
			args   messages.VerifyArgs
			layers []string
		}{
			{"verify:cluster", whole, messages.VerifyArgs{Layers: nonEmpty(req.Layers), Checks: nonEmpty(req.Checks)}, layers},
			{"verify:cluster", split, messages.VerifyArgs{Layers: nonEmpty(req.Layers), Checks: nonEmpty(req.Checks), Exclude: hostAppChecks}, layers},
			{"verify:hostapp", hostApps, messages.VerifyArgs{Checks: onlyAsked(hostAppChecks, req.Checks)}, []string{messages.LayerApplication}},
		} {
			if len(g.agents) == 0 || g.target == "verify:hostapp" && len(g.args.Checks) == 0 ||
				len(g.args.Exclude) > 0 && len(req.Checks) > 0 && len(exceptOf(req.Checks, g.args.Exclude)) == 0 {
				continue
			}
			g.args.V, g.args.Scope = messages.Version, messages.ScopeCluster
			st := map[string]string{}
			for _, a := range g.agents {
				st[a] = messages.StateOnline
			}
			rep, err := v.c.disp.issueTo(ctx, messages.RunRequest{Kind: "verify", Target: g.target, Args: messages.MustEncode(&g.args), Timeout: timeout, SkipOffline: true}, g.agents, st)
			if err != nil {
				return messages.Report{}, "", fmt.Errorf("verify: issue cluster checks (%s): %w", g.target, err)
			}
			it := issued{id: rep.TaskID, layers: g.layers}
			if g.target == "verify:hostapp" {
				it.only = hostAppChecks
			}
			tasks = append(tasks, it)
		}
	}
	var runs []report.Run
	for _, t := range tasks {
		tr, err := v.c.disp.wait(ctx, t.id)
		if err != nil {
			return messages.Report{}, "", fmt.Errorf("verify: wait for %s: %w", t.id, err)
		}
		for _, r := range tr.Results {
			run := report.Run{Node: r.Node, Cluster: clusterOf[r.Node], Layers: t.layers, Outcome: r.Outcome, Reason: r.Reason}
			if r.Outcome == messages.OutcomeUnknown && r.Reason == messages.ReasonRejected {
				run.Reason = "rejected: " + string(r.Output)
			}
			if r.Outcome != messages.OutcomeUnknown {
				out, err := messages.Decode[messages.VerifyOutput](r.Output, v.c.opts.MaxMessageBytes)
				if err != nil {
					run.Outcome, run.Reason = messages.OutcomeUnknown, fmt.Sprintf("unreadable verify output: %s", truncate(err.Error(), 200))
				}
				run.Checks = out.Checks
				if t.only != nil {
					run.Checks = slices.DeleteFunc(run.Checks, func(c messages.CheckResult) bool {
						return !slices.Contains(t.only, c.Name) && (c.Status == messages.CheckPass || c.Status == messages.CheckWarn)
					})
				}
			}
			runs = append(runs, run)
		}
	}
	rep := report.Build(time.Now(), time.Since(start), nodes, clusterOf, runs, missing)
	id, err := v.store(ctx, rep)
	if err != nil {
		return rep, "", err
	}
	v.record(rep, id)
	v.sweepDuration.Observe(float64(rep.DurationMS) / 1000) // here, not in record: a restart's restored reports are not new verifications
	return rep, id, nil
}

func nonEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// store writes the report to the object store (reports of large fleets are
// larger than one message; the object store chunks them).
func (v *verifier) store(ctx context.Context, rep messages.Report) (string, error) {
	b, err := json.Marshal(rep)
	if err != nil {
		return "", fmt.Errorf("encode report: %w", err)
	}
	id := "r" + rep.Timestamp.UTC().Format("20060102T150405.000000000")
	id = strings.ReplaceAll(id, ".", "-")
	if _, err := v.reports.Put(ctx, jetstream.ObjectMeta{Name: id}, bytes.NewReader(b)); err != nil {
		return "", fmt.Errorf("store report: %w", err)
	}
	return id, nil
}

// layerState is one cluster's last status of one layer and the time of
// the report it came from.
type layerState struct {
	status string
	at     time.Time
}

// record updates the fleet view, metrics and change events from a report.
// Only the clusters the report covers change, each layer only by a report
// no older than the one it has (a sweep and an operator's verification may
// finish out of order); events and metrics are per cluster.
func (v *verifier) record(rep messages.Report, id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if id > v.lastID { // a sweep and an operator's verification may finish out of order
		v.lastID = id
	}
	for _, n := range rep.Nodes {
		if rep.Timestamp.Before(v.lastAt[n.Name]) {
			continue // a newer report has judged it
		}
		m := v.last[n.Name]
		if m == nil {
			m = map[string]string{}
			v.last[n.Name] = m
		}
		for l, s := range n.Layers {
			m[l] = s
		}
		v.lastAt[n.Name] = rep.Timestamp
	}
	partial := v.partialClusters(rep)
	v.recordChecks(rep, partial)
	type key struct{ cluster, layer string }
	counts := map[key]map[string]int{}
	for _, l := range rep.Layers {
		for _, c := range l.Checks {
			k := key{c.Cluster, l.Name}
			if counts[k] == nil {
				counts[k] = map[string]int{}
			}
			counts[k][c.Status]++
			if c.Status == messages.CheckPass || c.Status == messages.CheckWarn || c.Status == messages.CheckFail {
				v.checkDuration.WithLabelValues(c.Cluster, l.Name).Observe(float64(c.DurationMS) / 1000)
			}
		}
	}
	for _, cr := range rep.Clusters {
		state := v.clusters[cr.Name]
		if state == nil {
			state = map[string]layerState{}
			v.clusters[cr.Name] = state
		}
		for _, l := range cr.Layers {
			prev, ok := state[l.Name]
			if ok && rep.Timestamp.Before(prev.at) {
				continue // a newer report has judged it
			}
			if !ok && len(state) >= messages.MaxClusterLayers {
				continue // report.Build keeps no more; nor do we
			}
			if members, ok := partial[cr.Name]; ok && slices.Contains(report.NodeScopedLayers, l.Name) {
				// Verified on some of its nodes only: the others' last
				// status of this layer still counts.
				l.Status = v.nodesLayer(members, l.Name, l.Status)
			}
			state[l.Name] = layerState{status: l.Status, at: rep.Timestamp}
			for _, s := range []string{messages.Healthy, messages.Degraded, messages.Unhealthy, messages.Unknown} {
				val := 0.0
				if s == l.Status {
					val = 1
				}
				v.layerStatus.WithLabelValues(cr.Name, l.Name, s).Set(val)
			}
			for _, s := range messages.CheckStatuses {
				v.checkCounts.WithLabelValues(cr.Name, l.Name, s).Set(float64(counts[key{cr.Name, l.Name}][s]))
			}
			if ok && prev.status == l.Status || !ok && l.Status == messages.Healthy {
				continue // no change, or healthy from the start: nothing to announce
			}
			from := prev.status
			if !ok {
				from = "none"
			}
			v.c.log.Info("layer state", zap.String("cluster", cr.Name), zap.String("layer", l.Name), zap.String("from", from),
				zap.String("to", l.Status), zap.String("reason", l.Reason))
			ev := messages.Event{V: messages.Version, Time: time.Now().UTC(), Kind: "layer_state", Cluster: cr.Name, Layer: l.Name, From: from, To: l.Status}
			v.c.nc.Publish(messages.EventSubject("layer_state"), messages.MustEncode(&ev))
		}
	}
	v.c.changed("report")
}

// checkKey names one check's result on one node.
type checkKey struct{ name, node string }

// recordChecks keeps each covered cluster's newest check results: a report
// that covers a cluster whole replaces them, one that covers some of its
// nodes (verify --node) replaces those nodes' results.
func (v *verifier) recordChecks(rep messages.Report, partial map[string][]string) {
	covered := map[string]bool{}
	for _, cr := range rep.Clusters {
		if rep.Timestamp.Before(v.checksAt[cr.Name]) {
			continue // a newer report has judged it
		}
		covered[cr.Name] = true
		if _, ok := partial[cr.Name]; !ok || v.checks[cr.Name] == nil {
			v.checks[cr.Name] = map[checkKey]messages.CheckResult{}
		}
		v.checksAt[cr.Name] = rep.Timestamp
	}
	for _, l := range rep.Layers {
		for _, c := range l.Checks {
			if !covered[c.Cluster] {
				continue
			}
			if c.Layer == "" {
				c.Layer = l.Name
			}
			v.checks[c.Cluster][checkKey{c.Name, c.Node}] = c
		}
	}
	if len(covered) > 0 {
		v.gen++
	}
}

// lastChecks returns a cluster's newest check results, by layer, name and
// node.
func (v *verifier) lastChecks(cluster string) []messages.CheckResult {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.checks[cluster]
	out := make([]messages.CheckResult, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b messages.CheckResult) int {
		return cmp.Or(cmp.Compare(a.Layer, b.Layer), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Node, b.Node))
	})
	return out
}

// allChecks returns every cluster's newest check results and the
// generation they are of.
func (v *verifier) allChecks() ([]messages.CheckResult, uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []messages.CheckResult
	for _, m := range v.checks {
		for _, c := range m {
			out = append(out, c)
		}
	}
	return out, v.gen
}

// partialClusters returns the clusters rep covers on some of their nodes
// only (a verify --node), each with all its enrolled nodes.
func (v *verifier) partialClusters(rep messages.Report) map[string][]string {
	in := make(map[string]bool, len(rep.Nodes))
	for _, n := range rep.Nodes {
		in[n.Name] = true
	}
	covered := make(map[string]bool, len(rep.Clusters))
	for _, c := range rep.Clusters {
		covered[c.Name] = true
	}
	members := map[string][]string{}
	partial := map[string]bool{}
	for _, m := range v.c.reg.members() {
		if covered[m.cluster] {
			members[m.cluster] = append(members[m.cluster], m.name)
			partial[m.cluster] = partial[m.cluster] || !in[m.name]
		}
	}
	for c, p := range partial {
		if !p {
			delete(members, c)
		}
	}
	return members
}

// nodesLayer judges a node-scoped layer of a cluster from its nodes' last
// statuses (v.mu held): the worst, unknown counting as degraded beside
// known ones, as the report judges layers. fallback is for no status.
func (v *verifier) nodesLayer(nodes []string, layer, fallback string) string {
	var ls []messages.LayerReport
	for _, n := range nodes {
		if s, ok := v.last[n][layer]; ok {
			ls = append(ls, messages.LayerReport{Name: n, Status: s})
		}
	}
	if len(ls) == 0 {
		return fallback
	}
	return report.Overall(ls)
}

// clusterStatus is a cluster's line in the fleet view.
func (v *verifier) clusterStatus(name string) messages.ClusterStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	cs := messages.ClusterStatus{Name: name}
	state := v.clusters[name]
	if len(state) == 0 {
		return cs
	}
	cs.Layers = make(map[string]string, len(state))
	layers := make([]messages.LayerReport, 0, len(state))
	for l, st := range state {
		cs.Layers[l] = st.status
		layers = append(layers, messages.LayerReport{Name: l, Status: st.status})
		if st.at.After(cs.LastVerified) {
			cs.LastVerified = st.at
		}
	}
	cs.OverallStatus = report.Overall(layers)
	return cs
}

// layersOf returns a node's last per-layer statuses for the fleet view.
func (v *verifier) layersOf(node string) (map[string]string, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.last[node]
	if m == nil {
		return nil, time.Time{}
	}
	out := make(map[string]string, len(m))
	for k, s := range m {
		out[k] = s
	}
	return out, v.lastAt[node]
}

// maxReportsOnStart bounds how many stored reports a restart reads to find
// the last state of every cluster.
const maxReportsOnStart = 64

// loadLast restores the fleet view after a restart: the newest report, and
// older ones (newest first, at most maxReportsOnStart) until every enrolled
// node's cluster has its last state — the newest report may have covered
// one cluster only.
//
// It reads without a consumer (objList, objGetBytes): it runs on every
// activation of a cluster peer, which must not wait for a JetStream meta
// leader.
func (v *verifier) loadLast(ctx context.Context) {
	infos, err := objList(ctx, v.c.js, messages.ReportsBucket)
	if err != nil {
		v.log.Warn("restore the last verification", zap.Error(err))
		return
	}
	var ids []string
	for _, in := range infos {
		if !in.Deleted {
			ids = append(ids, in.Name)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	want := map[string]bool{}
	for _, m := range v.c.reg.members() {
		want[m.cluster] = true
	}
	for i, id := range ids {
		if i == maxReportsOnStart {
			break
		}
		rep, err := v.get(ctx, id)
		if err != nil {
			v.log.Warn("restore the last verification", zap.String("report", id), zap.Error(err))
			continue
		}
		v.record(rep, id)
		for _, c := range rep.Clusters {
			delete(want, c.Name)
		}
		if len(want) == 0 {
			return
		}
	}
}

func (v *verifier) lastReportID(ctx context.Context) (string, error) {
	v.mu.Lock()
	id := v.lastID
	v.mu.Unlock()
	if id != "" {
		return id, nil
	}
	infos, err := v.reports.List(ctx)
	if err != nil {
		if err == jetstream.ErrNoObjectsFound {
			return "", nil
		}
		return "", fmt.Errorf("list reports: %w", err)
	}
	for _, in := range infos {
		if !in.Deleted && in.Name > id {
			id = in.Name
		}
	}
	return id, nil
}

func (v *verifier) get(ctx context.Context, id string) (messages.Report, error) {
	b, err := objGetBytes(ctx, v.c.js, messages.ReportsBucket, id)
	if err != nil {
		return messages.Report{}, fmt.Errorf("report %s: %w", id, err)
	}
	var rep messages.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("report %s: %w", id, err)
	}
	return rep, nil
}

// sweeps runs verification continuously: every interval, with per-layer
// overrides (a layer due sooner runs on its own).
func (v *verifier) sweeps(stop <-chan struct{}, every time.Duration, perLayer map[string]time.Duration) {
	if every <= 0 {
		return
	}
	next := map[string]time.Time{}
	layers := append(slices.Clone(report.NodeScopedLayers), report.ClusterScopedLayers...)
	for l := range perLayer {
		if !slices.Contains(layers, l) {
			layers = append(layers, l)
		}
	}
	interval := func(l string) time.Duration {
		if d, ok := perLayer[l]; ok && d > 0 {
			return d
		}
		return every
	}
	tickEvery := every
	for _, d := range perLayer {
		if d > 0 && d < tickEvery {
			tickEvery = d
		}
	}
	tick := time.NewTicker(min(tickEvery, time.Second*5))
	defer tick.Stop()
	// A sweep in progress ends with the controller: Close waits for this
	// goroutine, and must not wait for a sweep's deadline.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	go func() {
		<-stop
		cancelBase()
	}()
	first := time.Now().Add(min(every, 10*time.Second)) // let agents connect after a start
	for _, l := range layers {
		next[l] = first
	}
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			var due []string
			for _, l := range layers {
				if !now.Before(next[l]) {
					due = append(due, l)
					next[l] = now.Add(interval(l))
				}
			}
			if len(due) == 0 || !v.c.acting() || len(v.c.reg.members()) == 0 {
				continue
			}
			if len(due) == len(layers) {
				due = nil // all of them, custom layers included
			}
			ctx, cancel := context.WithTimeout(base, sweepTimeout)
			rep, id, err := v.sweep(ctx, messages.VerifyRequest{V: messages.Version, Layers: due})
			cancel()
			if err != nil {
				if base.Err() == nil {
					v.log.Warn("sweep", zap.Error(err))
				}
				continue
			}
			v.log.Debug("sweep", zap.String("report", id), zap.String("overall", rep.OverallStatus), zap.Int64("duration_ms", rep.DurationMS))
		}
	}
}

// onlyAsked narrows checks to those asked for (all when asked is empty).
func onlyAsked(checks, asked []string) []string {
	if len(asked) == 0 {
		return checks
	}
	var out []string
	for _, c := range checks {
		if slices.Contains(asked, c) {
			out = append(out, c)
		}
	}
	return out
}

// exceptOf is checks without those in drop.
func exceptOf(checks, drop []string) []string {
	var out []string
	for _, c := range checks {
		if !slices.Contains(drop, c) {
			out = append(out, c)
		}
	}
	return out
}
