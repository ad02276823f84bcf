// Package diagnostics turns what nodes report into findings a person can
// act on: a collector → analysis → recommendation pipeline.
//
//   - [collect] gathers sections on a node (system, components, logs,
//     config), redacted on the node.
//   - [rules] is the knowledge base: rules as data that fire on check
//     results, metrics and log lines.
//   - [Analyze] (this package) evaluates the rules on many nodes' check
//     results and sections, and folds symptoms under their root cause.
//   - [WriteText] renders the diagnosis view for people; a
//     [Diagnosis] encodes to JSON with the same fields.
//   - [bundle] writes a redacted support bundle.
//
// Typical use on the controller:
//
//	kb, err := rules.Load(settings["METAGN_RULES_FILE"])
//	nodes := diagnostics.NodesFromReport(report)
//	nodes = diagnostics.WithSections(nodes, "n1", out.Sections) // a diagnose task's output
//	d := diagnostics.Analyze(kb, nodes, time.Now())
//	diagnostics.WriteText(os.Stdout, d, diagnostics.TextOptions{})
package diagnostics

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/diagnostics/redact"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/messages"
)

// Finding, Passed and Diagnosis are the wire types (messages), named here
// for the analysis that makes them.
type (
	Finding   = messages.Finding
	Passed    = messages.Passed
	Diagnosis = messages.Diagnosis
)

// NodeInput is what is known about one node.
type NodeInput struct {
	Name    string
	Cluster string
	Role    string
	// Offline: the node did not answer; Reason says why.
	Offline bool
	Reason  string
	Checks  []messages.CheckResult
	// Sections are the node's diagnose sections (already redacted).
	Sections []collect.Section
}

// NodesFromReport splits a verification report into per-node inputs: each
// check result goes to the node that ran it, and nodes the report marks
// unknown (offline, timed out) are offline here.
func NodesFromReport(r *messages.Report) []NodeInput {
	idx := map[string]int{}
	var out []NodeInput
	node := func(name, cluster string) *NodeInput {
		if i, ok := idx[name]; ok {
			return &out[i]
		}
		idx[name] = len(out)
		out = append(out, NodeInput{Name: name, Cluster: cluster})
		return &out[len(out)-1]
	}
	for _, n := range r.Nodes {
		ni := node(n.Name, n.Cluster)
		// Unknown for another reason (timed out) is not offline.
		if n.Status == messages.Unknown && (n.Reason == "" || strings.Contains(strings.ToLower(n.Reason), messages.ReasonOffline)) {
			ni.Offline, ni.Reason = true, n.Reason
		}
	}
	for _, l := range r.Layers {
		for _, c := range l.Checks {
			if c.Layer == "" {
				c.Layer = l.Name
			}
			ni := node(c.Node, c.Cluster)
			ni.Checks = append(ni.Checks, c)
		}
	}
	return out
}

// WithSections adds a node's diagnose sections (the output of its diagnose
// task) to nodes, appending the node when it is not there yet.
func WithSections(nodes []NodeInput, node string, sections []collect.Section) []NodeInput {
	for i := range nodes {
		if nodes[i].Name == node {
			nodes[i].Sections = append(nodes[i].Sections, sections...)
			return nodes
		}
	}
	return append(nodes, NodeInput{Name: node, Sections: sections})
}

// instance is one rule firing on one node.
type instance struct {
	rule    *rules.Rule
	order   int // the rule's index in the knowledge base
	node    string
	cluster string
	match   rules.Match
}

// Analyze evaluates the knowledge base on every node and folds symptoms
// under their causes: a finding explains another when the rules say so
// (explains / caused_by) and the symptom's own evidence fits what that
// relation requires (an error class, an address the cause makes
// unreachable), or when a check of the second was blocked by a check of
// the first; and the cause's reach (node, cluster, fleet) covers the node
// of the symptom. A configuration error is never folded. Each cause is reported once, with the nodes it
// was seen on, its symptoms and every node affected.
func Analyze(kb *rules.KB, nodes []NodeInput, now time.Time) Diagnosis {
	d := Diagnosis{Timestamp: now.UTC(), Status: messages.Healthy, Findings: []Finding{}}
	order := make(map[string]int, len(kb.Rules))
	for i, r := range kb.Rules {
		order[r.ID] = i
	}

	var insts []*instance
	for i := range nodes {
		n := &nodes[i]
		d.Nodes = append(d.Nodes, n.Name)
		f := facts(n)
		for _, m := range kb.Evaluate(f) {
			insts = append(insts, &instance{rule: m.Rule, order: order[m.Rule.ID], node: n.Name, cluster: n.Cluster, match: m})
		}
	}
	slices.Sort(d.Nodes)
	d.Nodes = slices.Compact(d.Nodes)

	causes := causeGraph(kb, nodes)
	// Edges between instances: i explains j.
	byRule := make(map[string][]*instance)
	for _, i := range insts {
		byRule[i.rule.ID] = append(byRule[i.rule.ID], i)
	}
	explains := make(map[*instance][]*instance)
	incoming := make(map[*instance]int)
	for _, i := range insts {
		for _, sym := range causes[i.rule.ID] {
			reach := causes.reach(i.rule, sym)
			stated, hasStated := kb.Edge(i.rule.ID, sym)
			derived := slices.Contains(causes["\x00derived:"+i.rule.ID], sym)
			for _, j := range byRule[sym] {
				// Folded only when the symptom's own evidence fits the
				// cause: the relation's stated evidence, or (for an
				// edge from blocked_by) a check of it skipped behind
				// one of the cause's checks.
				fits := hasStated && stated.Fits(i.match, j.match) ||
					derived && blockedEvidence.Fits(i.match, j.match)
				if fits && covers(i, j, reach) {
					explains[i] = append(explains[i], j)
					incoming[j]++
				}
			}
		}
	}
	var roots []*instance
	for _, i := range insts {
		if incoming[i] == 0 {
			roots = append(roots, i)
		}
	}
	slices.SortStableFunc(roots, func(a, b *instance) int {
		return cmp.Or(rules.SeverityRank(b.rule.Severity)-rules.SeverityRank(a.rule.Severity), a.order-b.order, strings.Compare(a.node, b.node))
	})
	// Each symptom goes to the first root (most severe) that reaches it.
	claimedBy := make(map[*instance]string) // instance -> root rule id
	for _, r := range roots {
		queue := slices.Clone(explains[r])
		for len(queue) > 0 {
			j := queue[0]
			queue = queue[1:]
			if _, done := claimedBy[j]; done || incoming[j] == 0 {
				continue
			}
			claimedBy[j] = r.rule.ID
			queue = append(queue, explains[j]...)
		}
	}

	// Group roots by rule, and their symptoms by rule.
	rootGroups := map[string][]*instance{}
	var rootIDs []string
	for _, r := range roots {
		if _, ok := rootGroups[r.rule.ID]; !ok {
			rootIDs = append(rootIDs, r.rule.ID)
		}
		rootGroups[r.rule.ID] = append(rootGroups[r.rule.ID], r)
	}
	symptoms := map[string]map[string][]*instance{} // root id -> symptom id -> instances
	for _, i := range insts {
		if root, ok := claimedBy[i]; ok {
			if symptoms[root] == nil {
				symptoms[root] = map[string][]*instance{}
			}
			symptoms[root][i.rule.ID] = append(symptoms[root][i.rule.ID], i)
		}
	}
	for _, id := range rootIDs {
		f := finding(rootGroups[id])
		affected := slices.Clone(f.Nodes)
		symIDs := slices.Collect(maps.Keys(symptoms[id]))
		slices.SortFunc(symIDs, func(a, b string) int {
			ra, rb := kb.Rule(a), kb.Rule(b)
			return cmp.Or(rules.SeverityRank(rb.Severity)-rules.SeverityRank(ra.Severity), order[a]-order[b])
		})
		for _, sid := range symIDs {
			s := finding(symptoms[id][sid])
			affected = append(affected, s.Nodes...)
			f.Symptoms = append(f.Symptoms, s)
		}
		slices.Sort(affected)
		f.Affected = slices.Compact(affected)
		d.Findings = append(d.Findings, f)
		switch f.Severity {
		case rules.Critical:
			d.Status = messages.Unhealthy
		case rules.Warning:
			if d.Status == messages.Healthy {
				d.Status = messages.Degraded
			}
		}
	}
	slices.SortStableFunc(d.Findings, func(a, b Finding) int {
		return cmp.Or(layerRank(a.Layer)-layerRank(b.Layer), rules.SeverityRank(b.Severity)-rules.SeverityRank(a.Severity), order[a.ID]-order[b.ID])
	})
	d.Healthy = passed(nodes, insts)
	return d
}

// facts turns a node's input into what rules match on.
func facts(n *NodeInput) *rules.Facts {
	f := &rules.Facts{Node: n.Name, Cluster: n.Cluster, Role: n.Role, Offline: n.Offline, Reason: n.Reason, Checks: n.Checks}
	if !f.Offline && len(n.Checks) > 0 && !slices.ContainsFunc(n.Checks, func(c messages.CheckResult) bool {
		return c.Status != messages.CheckUnknown || !strings.Contains(strings.ToLower(c.Message), messages.ReasonOffline)
	}) {
		f.Offline, f.Reason = true, n.Checks[0].Message
	}
	for _, s := range n.Sections {
		for k, v := range s.Metrics {
			if f.Metrics == nil {
				f.Metrics = make(map[string]float64)
			}
			f.Metrics[k] = v
		}
		for _, l := range s.Lines {
			f.Lines = append(f.Lines, rules.Line{Source: l.Source, Text: l.Text})
		}
	}
	return f
}

// blockedEvidence is what an edge derived from blocked_by requires.
var blockedEvidence = rules.Explain{Classes: []string{rules.ClassBlocked}}

// graph maps a cause rule id to the rule ids it explains; derived holds the
// edges that came from blocked_by rather than from the rules.
type graph map[string][]string

// causeGraph is the knowledge base's relations plus edges derived from
// blocked_by: when check A was blocked by check B, rules on B explain rules
// on A (unless that would close a cycle).
func causeGraph(kb *rules.KB, nodes []NodeInput) graph {
	g := graph{}
	onCheck := map[string][]string{} // check -> rules matching it
	for _, r := range kb.Rules {
		g[r.ID] = kb.Causes(r.ID)
		for _, c := range r.When {
			if c.Check != "" && !slices.Contains(onCheck[c.Check], r.ID) {
				onCheck[c.Check] = append(onCheck[c.Check], r.ID)
			}
		}
	}
	for _, n := range nodes {
		for _, c := range n.Checks {
			if c.BlockedBy == "" {
				continue
			}
			for _, cause := range onCheck[c.BlockedBy] {
				for _, sym := range onCheck[c.Name] {
					if cause != sym && !slices.Contains(g[cause], sym) && !g.reaches(sym, cause) {
						g[cause] = append(g[cause], sym)
						g["\x00derived:"+cause] = append(g["\x00derived:"+cause], sym)
					}
				}
			}
		}
	}
	return g
}

func (g graph) reaches(from, to string) bool {
	seen := map[string]bool{}
	stack := []string{from}
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if x == to {
			return true
		}
		if seen[x] {
			continue
		}
		seen[x] = true
		stack = append(stack, g[x]...)
	}
	return false
}

// reach is how far cause's finding explains symptom: the rule's reach, or
// cluster for an edge derived from blocked_by (cluster checks run on one
// node for the whole cluster).
func (g graph) reach(cause *rules.Rule, symptom string) string {
	if slices.Contains(g["\x00derived:"+cause.ID], symptom) && cause.Reach == rules.ReachNode {
		return rules.ReachCluster
	}
	return cause.Reach
}

func covers(cause, sym *instance, reach string) bool {
	switch reach {
	case rules.ReachFleet:
		return true
	case rules.ReachCluster:
		return cause.cluster == sym.cluster || cause.node == sym.node
	}
	return cause.node == sym.node
}

// finding merges one rule's instances (on several nodes) into a Finding.
func finding(is []*instance) Finding {
	slices.SortFunc(is, func(a, b *instance) int { return strings.Compare(a.node, b.node) })
	r := is[0].rule
	f := Finding{ID: r.ID, Severity: r.Severity, Layer: r.Layer, Title: is[0].match.Title(),
		Suggestion: r.Suggestion, Command: r.Command, Docs: r.DocsLink(), Threshold: r.Threshold}
	for _, i := range is {
		if f.Title == rules.StripPlaceholders(r.Title) && i.match.Observed != "" {
			f.Title = i.match.Title()
		}
		if !slices.Contains(f.Nodes, i.node) {
			f.Nodes = append(f.Nodes, i.node)
		}
		for _, e := range i.match.Evidence {
			if len(f.Evidence) < maxEvidence {
				// Check messages come from other nodes' tasks; scrub them
				// once more in case one quoted a secret.
				f.Evidence = append(f.Evidence, prefixNode(i.node, scrub.String(e)))
			}
		}
	}
	return f
}

// scrub applies the redaction patterns (no literals) to evidence.
var scrub *redact.Redactor

// maxEvidence bounds the evidence lines of one finding.
const maxEvidence = 10

func prefixNode(node, e string) string {
	if node == "" {
		return e
	}
	return node + ": " + e
}

func layerRank(l string) int {
	if i := slices.Index(rules.Layers, l); i >= 0 {
		return i
	}
	return len(rules.Layers)
}

// passed lists the checks that passed on every node that ran them, applied
// somewhere (a pass that was "not applicable" everywhere is not shown) and
// fired no rule.
func passed(nodes []NodeInput, insts []*instance) []Passed {
	type agg struct {
		layer   string
		ok      bool
		nodes   int
		blamed  bool
		applied bool
	}
	byCheck := map[string]*agg{}
	for _, n := range nodes {
		for _, c := range n.Checks {
			a := byCheck[c.Name]
			if a == nil {
				a = &agg{layer: c.Layer, ok: true}
				byCheck[c.Name] = a
			}
			a.nodes++
			a.ok = a.ok && c.Status == messages.CheckPass
			a.applied = a.applied || !c.NotApplicable()
		}
	}
	for _, i := range insts {
		for _, c := range i.match.Checks {
			if a := byCheck[c]; a != nil {
				a.blamed = true
			}
		}
	}
	var out []Passed
	for name, a := range byCheck {
		if a.ok && a.applied && !a.blamed {
			out = append(out, Passed{Layer: a.layer, Check: name, Title: CheckTitle(name), Nodes: a.nodes})
		}
	}
	slices.SortFunc(out, func(a, b Passed) int {
		return cmp.Or(layerRank(a.Layer)-layerRank(b.Layer), meta.Rank(a.Check)-meta.Rank(b.Check), strings.Compare(a.Check, b.Check))
	})
	return out
}

// CheckTitle is how a passing check reads in the text view.
func CheckTitle(check string) string {
	if c, ok := meta.Lookup(check); ok {
		return c.Title
	}
	return fmt.Sprintf("%s passed", check)
}
