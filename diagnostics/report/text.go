package report

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/guildnet/metaguildnet/messages"
)

// WriteText renders a report for people: a header per
// layer, ✓ ✗ ⚠ per check with its duration; a check that passed on many
// nodes takes one line, a problem takes one line per node with its message,
// and a skipped check names what blocked it.
func WriteText(w io.Writer, r messages.Report) {
	fmt.Fprintf(w, "Verification %s — %s %s in %s\n", r.Timestamp.Format("2006-01-02 15:04:05Z07:00"),
		Mark(r.OverallStatus), strings.ToUpper(r.OverallStatus), fmtMS(r.DurationMS))
	if len(r.Clusters) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
		for _, c := range r.Clusters {
			m := make(map[string]string, len(c.Layers))
			for _, l := range c.Layers {
				m[l.Name] = l.Status
			}
			fmt.Fprintf(tw, "CLUSTER %s\t%s %s\t%s\t\n", ClusterName(c.Name), Mark(c.OverallStatus), c.OverallStatus, LayerSummary(m))
		}
		tw.Flush()
	}
	for _, l := range r.Layers {
		head := fmt.Sprintf("\n[%s] %s %s", strings.ToUpper(l.Name), Mark(l.Status), l.Status)
		if l.Reason != "" {
			head += " (" + l.Reason + ")"
		}
		fmt.Fprintln(w, head)
		type group struct {
			name  string
			pass  []string
			maxMS int64
		}
		var order []string
		groups := map[string]*group{}
		var problems, unconfigured []messages.CheckResult
		for _, c := range l.Checks {
			if c.Status == messages.CheckNotConfigured {
				unconfigured = append(unconfigured, c)
				continue // listed once below: never a pass, not a failure
			}
			if c.Status != messages.CheckPass {
				problems = append(problems, c)
				continue
			}
			if strings.HasPrefix(c.Message, "not applicable") {
				continue // listed once below, not as a pass
			}
			g := groups[c.Name]
			if g == nil {
				g = &group{name: c.Name}
				groups[c.Name] = g
				order = append(order, c.Name)
			}
			g.pass = append(g.pass, where(c))
			g.maxMS = max(g.maxMS, c.DurationMS)
		}
		var na []string
		for _, c := range l.Checks {
			if c.Status == messages.CheckPass && strings.HasPrefix(c.Message, "not applicable") && !slices.Contains(na, c.Name) {
				na = append(na, c.Name)
			}
		}
		for _, name := range order {
			g := groups[name]
			fmt.Fprintf(w, "  ✓ %-28s %-28s %s\n", g.name, summarizeNodes(g.pass), fmtMS(g.maxMS))
		}
		slices.SortStableFunc(problems, func(a, b messages.CheckResult) int { return rank(a.Status) - rank(b.Status) })
		// Skipped checks fold under what blocked them: the root cause is
		// shown once, its symptoms on one line.
		type fold struct {
			checks, nodes []string
		}
		var foldOrder []string
		folds := map[string]*fold{}
		for _, c := range problems {
			if c.Status == messages.CheckSkipped {
				key := c.BlockedBy
				f := folds[key]
				if f == nil {
					f = &fold{}
					folds[key] = f
					foldOrder = append(foldOrder, key)
				}
				if !slices.Contains(f.checks, c.Name) {
					f.checks = append(f.checks, c.Name)
				}
				if w := where(c); !slices.Contains(f.nodes, w) {
					f.nodes = append(f.nodes, w)
				}
				continue
			}
			fmt.Fprintf(w, "  %s %-28s %-28s %s\n", Mark(c.Status), c.Name, "("+where(c)+")", fmtMS(c.DurationMS))
			if c.Message != "" {
				fmt.Fprintf(w, "      %s\n", oneLine(c.Message))
			}
			if len(c.Threshold) > 0 {
				fmt.Fprintf(w, "      → Threshold: %s, observed: %s\n", c.Threshold, orDash(string(c.Observed)))
			}
		}
		if len(na) > 0 {
			fmt.Fprintf(w, "  – not applicable here: %s\n", strings.Join(na, ", "))
		}
		if len(unconfigured) > 0 {
			var names []string
			for _, c := range unconfigured {
				if !slices.Contains(names, c.Name) {
					names = append(names, c.Name)
				}
			}
			fmt.Fprintf(w, "  %s %s\n", Mark(messages.CheckNotConfigured), notConfiguredReason(unconfigured, names))
		}
		for _, key := range foldOrder {
			f := folds[key]
			by := key
			if by == "" {
				by = "a failed dependency"
			}
			fmt.Fprintf(w, "  ↳ skipped, blocked by %s (%s): %s\n", by, summarizeNodes(f.nodes), strings.Join(f.checks, ", "))
		}
	}
	var bad []string
	for _, n := range r.Nodes {
		if n.Status != messages.Healthy {
			bad = append(bad, fmt.Sprintf("%s %s", n.Name, n.Status))
		}
	}
	fmt.Fprintf(w, "\n%d nodes", len(r.Nodes))
	if len(bad) > 0 {
		fmt.Fprintf(w, "; not healthy: %s", strings.Join(bad, ", "))
	}
	fmt.Fprintln(w)
}

func rank(s string) int {
	switch s {
	case messages.CheckFail:
		return 0
	case messages.CheckUnknown:
		return 1
	case messages.CheckWarn:
		return 2
	}
	return 3
}

func where(c messages.CheckResult) string {
	if c.Node != "" {
		return c.Node
	}
	return "cluster " + c.Cluster
}

func summarizeNodes(ns []string) string {
	if len(ns) <= 3 {
		return strings.Join(ns, ", ")
	}
	return fmt.Sprintf("%s, … (%d nodes)", strings.Join(ns[:2], ", "), len(ns))
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
