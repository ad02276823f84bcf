package diagnostics

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/guildnet/metaguildnet/diagnostics/rules"
)

// Marks used in the text view.
const (
	MarkOK       = "✓"
	MarkCritical = "✗"
	MarkWarning  = "⚠"
	MarkInfo     = "ℹ"
)

// Mark returns the mark for a severity.
func Mark(severity string) string {
	switch severity {
	case rules.Critical:
		return MarkCritical
	case rules.Warning:
		return MarkWarning
	}
	return MarkInfo
}

// TextOptions tune the text view.
type TextOptions struct {
	// Evidence adds "  → Evidence:" lines (what fired each rule, up to 3).
	Evidence bool
}

// WriteText renders d as the diagnosis view people read: a [LAYER]
// header per layer, each finding as "✗ Title" or "⚠ Title" with
// "  → Suggestion:", "  → Command:", "  → Threshold:" and "  → Docs:"
// lines (then, for several nodes, the nodes; evidence when asked; and the
// symptoms folded under the finding), and "✓ Title" for
// each check that passed.
func WriteText(w io.Writer, d Diagnosis, opt TextOptions) error {
	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	multi := len(d.Nodes) > 1

	var layers []string
	for _, f := range d.Findings {
		if !slices.Contains(layers, f.Layer) {
			layers = append(layers, f.Layer)
		}
	}
	for _, h := range d.Healthy {
		if !slices.Contains(layers, h.Layer) {
			layers = append(layers, h.Layer)
		}
	}
	slices.SortStableFunc(layers, func(a, b string) int { return layerRank(a) - layerRank(b) })

	if len(layers) == 0 {
		p("%s No problems found\n", MarkOK)
	}
	for i, l := range layers {
		if i > 0 {
			p("\n")
		}
		p("[%s]\n", strings.ToUpper(l))
		for _, f := range d.Findings {
			if f.Layer != l {
				continue
			}
			p("%s %s\n", Mark(f.Severity), f.Title)
			p("  → Suggestion: %s\n", f.Suggestion)
			if f.Command != "" {
				p("  → Command: %s\n", f.Command)
			}
			if f.Threshold != "" {
				p("  → Threshold: %s\n", f.Threshold)
			}
			if f.Docs != "" {
				p("  → Docs: %s\n", f.Docs)
			}
			if multi && len(f.Nodes) > 0 {
				p("  → Nodes: %s\n", strings.Join(f.Nodes, ", "))
			}
			for j, e := range f.Evidence {
				if !opt.Evidence {
					break
				}
				if j == 3 {
					p("  → Evidence: (%d more)\n", len(f.Evidence)-3)
					break
				}
				p("  → Evidence: %s\n", oneLine(e))
			}
			if len(f.Symptoms) > 0 {
				p("  → Explains %d more finding(s) on %d node(s): %s\n", len(f.Symptoms), len(f.Affected), strings.Join(f.Affected, ", "))
				for _, s := range f.Symptoms {
					p("      %s %s", Mark(s.Severity), s.Title)
					if multi && len(s.Nodes) > 0 {
						p(" (%s)", strings.Join(s.Nodes, ", "))
					}
					p("\n")
				}
			}
		}
		for _, h := range d.Healthy {
			if h.Layer == l {
				p("%s %s\n", MarkOK, h.Title)
			}
		}
	}
	return bw.Flush()
}

// oneLine keeps evidence on one line of the view.
func oneLine(s string) string {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " ⏎ ")
	if len(s) > 200 {
		cut := 200
		for cut > 0 && s[cut]&0xC0 == 0x80 {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
