// Package report combines per-node check results into the verification
// report: timestamp, overall_status and layers with checks, extended with per-node status, durations, observed values and the
// root cause of skipped checks. It is pure data in, data out; the
// controller gathers the inputs.
package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Layer order in reports; custom layers follow, sorted.
var layerOrder = []string{messages.LayerNetwork, messages.LayerHost, messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication}

// NodeScopedLayers run on every node; the others once per cluster.
var NodeScopedLayers = []string{messages.LayerNetwork, messages.LayerHost}

// ClusterScopedLayers run once per cluster.
var ClusterScopedLayers = []string{messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication}

// Run is one verify task's outcome on one node.
type Run struct {
	Node    string
	Cluster string
	// Layers the task covered (used to report an unknown outcome per layer).
	Layers []string
	// Outcome and Reason of the task; an unknown outcome means the node's
	// checks are unknown for Reason (offline, timed_out, ...).
	Outcome messages.Outcome
	Reason  string
	Checks  []messages.CheckResult
}

// Unavailable is a part of the fleet that could not be verified at all,
// e.g. a cluster with no online agent.
type Unavailable struct {
	Node    string
	Cluster string
	Layers  []string
	Reason  string
}

// Build makes the report.
func Build(now time.Time, took time.Duration, nodes []string, clusterOf map[string]string, runs []Run, missing []Unavailable) messages.Report {
	var checks []messages.CheckResult
	for _, r := range runs {
		if r.Outcome == messages.OutcomeUnknown {
			for _, l := range r.Layers {
				checks = append(checks, unknownCheck(l, r.Node, r.Cluster, r.Reason))
			}
			continue
		}
		for _, c := range r.Checks {
			if c.Node == "" {
				c.Node = r.Node
			}
			// The cluster is the controller's to say: a node's check that
			// names another cluster must not move that cluster's state.
			c.Cluster = r.Cluster
			checks = append(checks, c)
		}
	}
	for _, m := range missing {
		for _, l := range m.Layers {
			checks = append(checks, unknownCheck(l, m.Node, m.Cluster, m.Reason))
		}
	}
	rep := messages.Report{V: messages.Version, Timestamp: now.UTC(), DurationMS: took.Milliseconds()}
	byLayer := map[string][]messages.CheckResult{}
	for _, c := range checks {
		byLayer[c.Layer] = append(byLayer[c.Layer], c)
	}
	for _, name := range orderLayers(byLayer) {
		cs := byLayer[name]
		slices.SortStableFunc(cs, func(a, b messages.CheckResult) int {
			return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Node, b.Node))
		})
		st, reason := Status(cs)
		rep.Layers = append(rep.Layers, messages.LayerReport{Name: name, Status: st, Reason: reason, Checks: cs})
	}
	for _, n := range nodes {
		nr := messages.NodeReport{Name: n, Cluster: clusterOf[n], Layers: map[string]string{}}
		var mine []messages.CheckResult
		for _, l := range rep.Layers {
			var lc []messages.CheckResult
			for _, c := range l.Checks {
				if c.Node == n {
					lc = append(lc, c)
				}
			}
			if len(lc) > 0 {
				st, _ := Status(lc)
				nr.Layers[l.Name] = st
				mine = append(mine, lc...)
			}
		}
		nr.Status, nr.Reason = Status(mine)
		if len(mine) == 0 {
			nr.Status = messages.Healthy
		}
		rep.Nodes = append(rep.Nodes, nr)
	}
	rep.OverallStatus = Overall(rep.Layers)
	if len(rep.Layers) == 0 {
		rep.OverallStatus = messages.Unknown
	}
	rep.Clusters = clusters(rep.Layers, nodes, clusterOf)
	return rep
}

// clusters judges each cluster the report covers — its nodes' clusters and
// those its checks name — from that cluster's checks alone, layer by
// layer, in the fleet's layer order. A cluster keeps at most
// messages.MaxClusterLayers layers (the first in that order).
func clusters(layers []messages.LayerReport, nodes []string, clusterOf map[string]string) []messages.ClusterReport {
	var names []string
	for _, n := range nodes {
		names = append(names, clusterOf[n])
	}
	for _, l := range layers {
		for _, c := range l.Checks {
			names = append(names, c.Cluster)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	out := make([]messages.ClusterReport, 0, len(names))
	for _, name := range names {
		var mine []messages.LayerReport
		for _, l := range layers {
			var cs []messages.CheckResult
			for _, c := range l.Checks {
				if c.Cluster == name {
					cs = append(cs, c)
				}
			}
			if len(cs) == 0 || len(mine) == messages.MaxClusterLayers {
				continue
			}
			st, reason := Status(cs)
			mine = append(mine, messages.LayerReport{Name: l.Name, Status: st, Reason: clip(reason, messages.MaxStatusReason)})
		}
		cr := messages.ClusterReport{Name: name, OverallStatus: Overall(mine), Layers: make([]messages.LayerStatus, 0, len(mine))}
		if len(mine) == 0 {
			cr.OverallStatus = messages.Unknown
		}
		for _, l := range mine {
			cr.Layers = append(cr.Layers, messages.LayerStatus{Name: l.Name, Status: l.Status, Reason: l.Reason})
		}
		out = append(out, cr)
	}
	return out
}

// clip shortens s to at most n bytes, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "…"
	return strings.ToValidUTF8(s[:n-len(more)], "") + more
}

// ClusterName is how a cluster is shown to people: "" is NoClusterName.
func ClusterName(name string) string {
	if name == "" {
		return messages.NoClusterName
	}
	return name
}

// LayerSummary shows statuses per layer in the report's layer order, custom
// layers after, sorted: "network✓ host✓ cluster✗".
func LayerSummary(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, l := range layerOrder {
		if s, ok := m[l]; ok {
			parts = append(parts, l+Mark(s))
		}
	}
	var custom []string
	for l := range m {
		if !slices.Contains(layerOrder, l) {
			custom = append(custom, l)
		}
	}
	slices.Sort(custom)
	for _, l := range custom {
		parts = append(parts, l+Mark(m[l]))
	}
	return strings.Join(parts, " ")
}

func unknownCheck(layer, node, cluster, reason string) messages.CheckResult {
	return messages.CheckResult{Name: layer + "_checks", Layer: layer, Status: messages.CheckUnknown,
		Message: reason, Node: node, Cluster: cluster}
}

func orderLayers(m map[string][]messages.CheckResult) []string {
	var out []string
	for _, l := range layerOrder {
		if _, ok := m[l]; ok {
			out = append(out, l)
		}
	}
	var custom []string
	for l := range m {
		if !slices.Contains(layerOrder, l) {
			custom = append(custom, l)
		}
	}
	slices.Sort(custom)
	return append(out, custom...)
}

// Status derives a layer's status from its checks: unhealthy when any
// failed, degraded when any warned or some could not be run, unknown when
// none could be run (the reason says why), healthy otherwise. Skipped
// checks do not count: their root cause is reported where it failed. Nor
// do not_configured ones, which are never a pass: a layer whose checks
// are all not configured is unknown, the reason naming them and what to
// set.
func Status(cs []messages.CheckResult) (status, reason string) {
	var fail, warn, unknown, known int
	var why, blocked, unconfigured []string
	for _, c := range cs {
		switch c.Status {
		case messages.CheckNotConfigured:
			if !slices.Contains(unconfigured, c.Name) {
				unconfigured = append(unconfigured, c.Name)
			}
		case messages.CheckFail:
			fail++
			known++
		case messages.CheckWarn:
			warn++
			known++
		case messages.CheckUnknown:
			unknown++
			w := c.Message
			if c.Node != "" {
				w = c.Node + ": " + w
			}
			if !slices.Contains(why, w) && len(why) < 5 {
				why = append(why, w)
			}
		case messages.CheckPass:
			known++
		case messages.CheckSkipped:
			if c.BlockedBy != "" && !slices.Contains(blocked, c.BlockedBy) {
				blocked = append(blocked, c.BlockedBy)
			}
		}
	}
	if known == 0 && unknown == 0 && len(blocked) == 0 && len(unconfigured) > 0 {
		return messages.Unknown, notConfiguredReason(cs, unconfigured)
	}
	if known == 0 && unknown == 0 && len(blocked) > 0 {
		// Every check here waits on a failure elsewhere: this layer could
		// not be verified, and the cause is reported where it failed.
		return messages.Unknown, "not verified: blocked by " + strings.Join(blocked, ", ")
	}
	switch {
	case fail > 0:
		status = messages.Unhealthy
	case unknown > 0 && known == 0:
		return messages.Unknown, strings.Join(why, "; ")
	case warn > 0 || unknown > 0:
		status = messages.Degraded
	default:
		status = messages.Healthy
	}
	if unknown > 0 {
		reason = "not verified: " + strings.Join(why, "; ")
	}
	return status, reason
}

// notConfiguredReason names the checks that are not configured and the
// settings that would configure them.
func notConfiguredReason(cs []messages.CheckResult, names []string) string {
	var settings []string
	for _, c := range cs {
		if c.Status != messages.CheckNotConfigured {
			continue
		}
		var o messages.ObservedNotConfigured
		if json.Unmarshal(c.Observed, &o) == nil {
			for _, s := range o.Settings {
				if !slices.Contains(settings, s) {
					settings = append(settings, s)
				}
			}
		}
	}
	r := "not configured: " + strings.Join(names, ", ")
	if len(settings) > 0 {
		r += " (set " + strings.Join(settings, ", ") + ")"
	}
	return r
}

// Overall is the worst layer status; unknown counts as degraded when other
// layers are known.
func Overall(layers []messages.LayerReport) string {
	rank := map[string]int{messages.Healthy: 0, messages.Unknown: 1, messages.Degraded: 2, messages.Unhealthy: 3}
	worst := messages.Healthy
	for _, l := range layers {
		if rank[l.Status] > rank[worst] {
			worst = l.Status
		}
	}
	if worst == messages.Unknown && len(layers) > 1 {
		for _, l := range layers {
			if l.Status != messages.Unknown {
				return messages.Degraded
			}
		}
	}
	return worst
}

// Healthy reports whether the report warrants exit code 0.
func Healthy(r messages.Report) bool { return r.OverallStatus == messages.Healthy }

// Mark is the symbol for a status.
func Mark(status string) string {
	switch status {
	case messages.Healthy, messages.CheckPass:
		return "✓"
	case messages.Degraded, messages.CheckWarn:
		return "⚠"
	case messages.Unhealthy, messages.CheckFail:
		return "✗"
	case messages.CheckSkipped:
		return "↳"
	case messages.CheckNotConfigured:
		return "○"
	}
	return "?"
}

func fmtMS(ms int64) string {
	if ms < 1000 {
		return fmt.Sprintf("%dms", ms)
	}
	return fmt.Sprintf("%.1fs", float64(ms)/1000)
}
