package dashboard

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// page is what the layout renders; Content is the live part (fetched
// again after each change), Extra what stays put (the diagnosis panel).
type page struct {
	Title   string
	Nav     string
	Session *session
	Data    any
	Content template.HTML
	Extra   template.HTML
}

// CSRF is the session's token for forms and the page's meta tag.
func (p page) CSRF() string {
	if p.Session == nil {
		return ""
	}
	return p.Session.csrf
}

var funcs = template.FuncMap{
	"mark": mark,
	"ago":  ago,
	"clusterName": func(c string) string {
		if c == "" {
			return messages.NoClusterName
		}
		return c
	},
	"pct": func(a, b int) int {
		if b == 0 {
			return 0
		}
		return a * 100 / b
	},
	"add":   func(a, b int) int { return a + b },
	"bytes": humanBytes,
	"raw":   compactJSON,
	"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"ms":    func(v int64) string { return strconv.FormatInt(v, 10) + " ms" },
	"rtt":   func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + " ms" },
	"join":  strings.Join,
}

// mark is the text beside a status colour: colour is never the only sign.
func mark(status string) string {
	switch status {
	case messages.Healthy, messages.CheckPass, messages.StateOnline, messages.RunSucceeded, "critical-free":
		return "✓"
	case messages.Degraded, messages.CheckWarn, messages.StateStale, "warning":
		return "!"
	case messages.Unhealthy, messages.CheckFail, messages.StateOffline, messages.RunFailed, "critical":
		return "✗"
	case messages.RunRunning:
		return "…"
	case "n/a":
		return "–"
	case messages.CheckNotConfigured:
		return "○" // as report.Mark: not a pass, says what to set
	}
	return "?"
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(b uint64) string {
	if b == 0 {
		return "—"
	}
	return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + " GiB"
}

// compactJSON shows an observed or threshold value on one line, clipped.
func compactJSON(r json.RawMessage) string {
	if len(r) == 0 {
		return ""
	}
	var b bytes.Buffer
	if json.Compact(&b, r) != nil {
		return "(unreadable)"
	}
	s := b.String()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// render writes name's content, whole in the layout or, for the page's
// own refresh (header X-Partial), alone.
func (s *Server) render(w http.ResponseWriter, r *http.Request, name string, p page) {
	var buf bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&buf, name, p); err != nil {
		s.log.Warn("dashboard: render", zap.String("page", name), zap.Error(err))
		http.Error(w, "render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.Header.Get("X-Partial") == "1" {
		w.Write(buf.Bytes())
		return
	}
	p.Content = template.HTML(buf.String()) // made by html/template above
	if err := s.tmpl.ExecuteTemplate(w, "layout", p); err != nil {
		s.log.Warn("dashboard: render layout", zap.String("page", name), zap.Error(err))
	}
}

// pageOf reads the 1-based page number q from r.
func pageOf(r *http.Request, q string) int {
	n, err := strconv.Atoi(r.URL.Query().Get(q))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// pager is one page of a list.
type pager struct {
	Page, Pages, Total, From, To int
	Param                        string
	Base                         string // the query without the page parameter
}

func (p pager) Prev() string { return p.link(p.Page - 1) }
func (p pager) Next() string { return p.link(p.Page + 1) }
func (p pager) link(n int) string {
	q := p.Base
	if q != "" {
		q += "&"
	}
	return "?" + q + p.Param + "=" + strconv.Itoa(n)
}

func paginate(r *http.Request, param string, total, size int) (pager, int, int) {
	pages := max(1, (total+size-1)/size)
	n := min(pageOf(r, param), pages)
	lo := (n - 1) * size
	hi := min(total, lo+size)
	q := r.URL.Query()
	q.Del(param)
	return pager{Page: n, Pages: pages, Total: total, From: lo + 1, To: hi, Param: param, Base: q.Encode()}, lo, hi
}

// layerOrder is the layers in GuildNet's order, then any custom ones.
var layerOrder = []string{messages.LayerNetwork, messages.LayerHost, messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication}

func orderLayers(seen map[string]bool) []string {
	var out []string
	for _, l := range layerOrder {
		out = append(out, l)
		delete(seen, l)
	}
	var extra []string
	for l := range seen {
		extra = append(extra, l)
	}
	slices.Sort(extra)
	return append(out, extra...)
}

// cell is one status cell: text and colour both say the status.
type cell struct {
	Layer, Status, Reason, Link string
}

// clusterRow is one cluster in the fleet grid.
type clusterRow struct {
	Name, Overall                 string
	Cells                         []cell
	Nodes, Online, Stale, Offline int
	LastVerified                  time.Time
}

// nodeRow is one node in a paged list.
type nodeRow struct {
	Name, Cluster, Role, State, Version string
	LastSeen                            time.Time
	Cells                               []cell
}

// reasons gives, per layer, why a cluster's layer is not healthy: its
// failing checks, the first few named.
func reasons(checks []messages.CheckResult) map[string]string {
	out := map[string][]string{}
	for _, c := range checks {
		if c.Status == messages.CheckPass || c.Status == messages.CheckSkipped {
			continue
		}
		l := out[c.Layer]
		if len(l) < 3 {
			msg := c.Message
			if len(msg) > 120 {
				msg = msg[:120] + "…"
			}
			out[c.Layer] = append(l, fmt.Sprintf("%s %s on %s: %s", c.Name, c.Status, c.Node, msg))
		}
	}
	m := make(map[string]string, len(out))
	for k, v := range out {
		m[k] = strings.Join(v, "; ")
	}
	return m
}

func nodeCells(n messages.NodeStatus, layers []string) []cell {
	cells := make([]cell, 0, len(layers))
	for _, l := range layers {
		st, ok := n.Layers[l]
		c := cell{Layer: l, Status: st, Link: "/node?name=" + n.Name + "#layer-" + l}
		switch {
		case n.State != messages.StateOnline:
			// What the node said before it went away is no longer known.
			c.Status, c.Reason = messages.Unknown, "node "+n.State
		case !ok && n.LastVerified.IsZero():
			c.Status, c.Reason = messages.Unknown, "not verified yet"
		case !ok:
			// A cluster-scoped layer is checked once per cluster, on
			// another of its nodes.
			c.Status, c.Reason = "n/a", l+" is checked on another node of the cluster"
		}
		cells = append(cells, c)
	}
	return cells
}

func (s *Server) fleetPage(w http.ResponseWriter, r *http.Request, sess *session) {
	now := time.Now()
	fl := s.src.Fleet(now)
	seen := map[string]bool{}
	for _, c := range fl.Clusters {
		for l := range c.Layers {
			seen[l] = true
		}
	}
	layers := orderLayers(seen)
	counts := map[string]*clusterRow{}
	for _, n := range fl.Nodes {
		row := counts[n.Cluster]
		if row == nil {
			row = &clusterRow{}
			counts[n.Cluster] = row
		}
		row.Nodes++
		switch n.State {
		case messages.StateOnline:
			row.Online++
		case messages.StateStale:
			row.Stale++
		default:
			row.Offline++
		}
	}
	clusters := slices.Clone(fl.Clusters)
	slices.SortFunc(clusters, func(a, b messages.ClusterStatus) int { return cmp.Compare(a.Name, b.Name) })
	cp, clo, chi := paginate(r, "cpage", len(clusters), s.o.PageSize)
	rows := make([]clusterRow, 0, chi-clo)
	for _, c := range clusters[clo:chi] {
		row := clusterRow{Name: c.Name, Overall: c.OverallStatus, LastVerified: c.LastVerified}
		if n := counts[c.Name]; n != nil {
			row.Nodes, row.Online, row.Stale, row.Offline = n.Nodes, n.Online, n.Stale, n.Offline
		}
		if row.Overall == "" {
			row.Overall = messages.Unknown
		}
		why := reasons(s.src.LastChecks(c.Name))
		for _, l := range layers {
			st, ok := c.Layers[l]
			ce := cell{Layer: l, Status: st, Reason: why[l], Link: "/cluster?name=" + c.Name + "#layer-" + l}
			if !ok {
				ce.Status, ce.Reason = messages.Unknown, "not verified yet"
			} else if ce.Reason == "" {
				ce.Reason = l + " " + st
			}
			row.Cells = append(row.Cells, ce)
		}
		rows = append(rows, row)
	}
	nodes := fl.Nodes
	state := r.URL.Query().Get("state")
	if state != "" {
		nodes = slices.DeleteFunc(slices.Clone(nodes), func(n messages.NodeStatus) bool { return n.State != state })
	}
	np, lo, hi := paginate(r, "page", len(nodes), s.o.PageSize)
	nrows := make([]nodeRow, 0, hi-lo)
	for _, n := range nodes[lo:hi] {
		nrows = append(nrows, nodeRow{Name: n.Name, Cluster: n.Cluster, Role: n.Role, State: n.State,
			Version: n.AgentVersion, LastSeen: n.LastSeen, Cells: nodeCells(n, layers)})
	}
	ctx, cancel := requestCtx(r, 5*time.Second)
	defer cancel()
	runs, _ := s.src.SetupRuns(ctx)
	rollouts, _ := s.src.Rollouts(ctx)
	s.render(w, r, "fleet", page{Title: "Fleet", Nav: "fleet", Session: sess, Data: map[string]any{
		"Summary": fl.Summary, "Total": len(fl.Nodes), "Layers": layers, "Clusters": rows, "ClusterPager": cp,
		"Nodes": nrows, "NodePager": np, "State": state, "Findings": s.src.Findings(),
		"Runs": runViews(runs, true), "Rollouts": rollouts, "Heartbeat": fl.HeartbeatInterval,
	}})
}

// runView is a setup run with its progress.
type runView struct {
	messages.SetupRun
	Done, Total int
	ETA         string
}

func runViews(runs []messages.SetupRun, runningOnly bool) []runView {
	var out []runView
	for _, run := range runs {
		if runningOnly && run.Status != messages.RunRunning {
			continue
		}
		v := runView{SetupRun: run}
		var spent int64
		for _, l := range run.Layers {
			for _, st := range l.Steps {
				v.Total++
				if st.Outcome != "" {
					v.Done++
					spent += st.DurationMS
				}
			}
		}
		if v.Done > 0 && v.Done < v.Total && run.Status == messages.RunRunning {
			left := time.Duration(spent/int64(v.Done)*int64(v.Total-v.Done)) * time.Millisecond
			v.ETA = "about " + left.Round(time.Second).String()
		}
		out = append(out, v)
	}
	return out
}

func (s *Server) runsPage(w http.ResponseWriter, r *http.Request, sess *session) {
	ctx, cancel := requestCtx(r, 5*time.Second)
	defer cancel()
	runs, err := s.src.SetupRuns(ctx)
	rollouts, err2 := s.src.Rollouts(ctx)
	var notes []string
	for _, e := range []error{err, err2} {
		if e != nil {
			notes = append(notes, e.Error())
		}
	}
	s.render(w, r, "runs", page{Title: "Setup runs and rollouts", Nav: "runs", Session: sess, Data: map[string]any{
		"Runs": runViews(runs, false), "Rollouts": rollouts, "Notes": notes}})
}

func findNode(fl messages.StatusReply, name string) (messages.NodeStatus, bool) {
	for _, n := range fl.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return messages.NodeStatus{}, false
}

func (s *Server) clusterPage(w http.ResponseWriter, r *http.Request, sess *session) {
	name := r.URL.Query().Get("name")
	fl := s.src.Fleet(time.Now())
	var cs *messages.ClusterStatus
	for i := range fl.Clusters {
		if fl.Clusters[i].Name == name {
			cs = &fl.Clusters[i]
		}
	}
	if cs == nil {
		http.Error(w, fmt.Sprintf("no cluster %q", name), http.StatusNotFound)
		return
	}
	seen := map[string]bool{}
	for l := range cs.Layers {
		seen[l] = true
	}
	layers := orderLayers(seen)
	var nodes []messages.NodeStatus
	for _, n := range fl.Nodes {
		if n.Cluster == name {
			nodes = append(nodes, n)
		}
	}
	np, lo, hi := paginate(r, "page", len(nodes), s.o.PageSize)
	rows := make([]nodeRow, 0, hi-lo)
	for _, n := range nodes[lo:hi] {
		rows = append(rows, nodeRow{Name: n.Name, Cluster: n.Cluster, Role: n.Role, State: n.State,
			Version: n.AgentVersion, LastSeen: n.LastSeen, Cells: nodeCells(n, layers)})
	}
	ctx, cancel := requestCtx(r, 10*time.Second)
	defer cancel()
	tl, plots := s.hist.timeline(ctx, s.src, name, layers, time.Now())
	why := reasons(s.src.LastChecks(name))
	var cells []cell
	for _, l := range layers {
		st, ok := cs.Layers[l]
		if !ok {
			st = messages.Unknown
		}
		cells = append(cells, cell{Layer: l, Status: st, Reason: why[l]})
	}
	overall := cs.OverallStatus
	if overall == "" {
		overall = messages.Unknown
	}
	s.render(w, r, "cluster", page{Title: "Cluster " + funcs["clusterName"].(func(string) string)(name), Nav: "fleet", Session: sess, Data: map[string]any{
		"Name": name, "Overall": overall, "LastVerified": cs.LastVerified, "Layers": layers, "Cells": cells,
		"Nodes": rows, "NodePager": np, "Timeline": tl, "Plots": plots,
	}})
}

// checkRow is a check's last result on the node page.
type checkRow struct {
	messages.CheckResult
	Observed, Threshold string
}

func (s *Server) nodePage(w http.ResponseWriter, r *http.Request, sess *session) {
	s.renderNode(w, r, sess, nil, "")
}

func (s *Server) renderNode(w http.ResponseWriter, r *http.Request, sess *session, diag *messages.DiagnoseResult, diagErr string) {
	name := r.URL.Query().Get("name")
	fl := s.src.Fleet(time.Now())
	n, ok := findNode(fl, name)
	if !ok {
		http.Error(w, fmt.Sprintf("no node %q", name), http.StatusNotFound)
		return
	}
	var checks []checkRow
	for _, c := range s.src.LastChecks(n.Cluster) {
		if c.Node == name {
			checks = append(checks, checkRow{CheckResult: c, Observed: compactJSON(c.Observed), Threshold: compactJSON(c.Threshold)})
		}
	}
	slices.SortStableFunc(checks, func(a, b checkRow) int {
		return cmp.Or(cmp.Compare(slices.Index(layerOrder, a.Layer), slices.Index(layerOrder, b.Layer)), cmp.Compare(a.Name, b.Name))
	})
	ctx, cancel := requestCtx(r, 5*time.Second)
	defer cancel()
	tasks, err := s.src.NodeTasks(ctx, name, 10)
	var taskErr string
	if err != nil {
		taskErr = err.Error()
	}
	seen := map[string]bool{}
	for l := range n.Layers {
		seen[l] = true
	}
	data := map[string]any{"Node": n, "Checks": checks, "Tasks": tasks, "TaskErr": taskErr,
		"Cells": nodeCells(n, orderLayers(seen))}
	p := page{Title: "Node " + name, Nav: "fleet", Session: sess, Data: data}
	var extra bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&extra, "diagnose", map[string]any{"Node": name, "CSRF": p.CSRF(), "SignedIn": sess != nil,
		"Result": diag, "Error": diagErr}); err != nil {
		s.log.Warn("dashboard: render diagnose panel", zap.Error(err))
	}
	p.Extra = template.HTML(extra.String())
	s.render(w, r, "node", p)
}

// diagnose runs a diagnosis of one node now. From the page's script
// (X-Partial) it answers with the findings panel alone; from a plain form,
// with the node page.
func (s *Server) diagnose(w http.ResponseWriter, r *http.Request, sess *session) {
	name := r.URL.Query().Get("name")
	if err := messages.ValidNodeName(name); err != nil {
		http.Error(w, "name: "+err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case s.diag <- struct{}{}:
		defer func() { <-s.diag }()
	default:
		http.Error(w, "a diagnosis is running already: try again when it is done", http.StatusTooManyRequests)
		return
	}
	ctx, cancel := requestCtx(r, messages.APITimeout(messages.APIDiagnose))
	defer cancel()
	res, err := s.src.Diagnose(ctx, name)
	var msg string
	if err != nil {
		msg = err.Error()
	}
	s.log.Info("dashboard: diagnose now", zap.String("node", name), zap.String("remote", r.RemoteAddr), zap.Bool("ok", err == nil))
	if r.Header.Get("X-Partial") == "1" {
		var res2 *messages.DiagnoseResult
		if err == nil {
			res2 = &res
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := s.tmpl.ExecuteTemplate(w, "diagnosis", map[string]any{"Result": res2, "Error": msg}); err != nil {
			s.log.Warn("dashboard: render diagnosis", zap.Error(err))
		}
		return
	}
	r.Header.Del("X-Partial")
	if err != nil {
		s.renderNode(w, r, sess, nil, msg)
		return
	}
	s.renderNode(w, r, sess, &res, "")
}
