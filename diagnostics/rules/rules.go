// Package rules is the diagnostics knowledge base: rules as data that turn
// check results, metrics and log lines into findings with a suggestion, a
// command and a link to docs/TROUBLESHOOTING.md.
//
// The built-in rules are the YAML files embedded from this directory, one
// per layer; a user file (setting METAGN_RULES_FILE) adds rules or replaces
// built-in ones by id. A rule is:
//
//   - id: rethinkdb-slow
//     title: RethinkDB slow response ({observed})
//     severity: warning            # info | warning | critical
//     layer: database
//     when:                        # any one condition fires the rule
//   - check: rethinkdb_query   # a check result ...
//     observed: "> 200ms"      # ... whose observed value exceeds 200 ms
//   - metric: rethinkdb_connect_ms > 200
//   - log: 'rethinkdb.*i/o timeout'
//     suggestion: Check system resources
//     command: kubectl top pods -n default -l app=rethinkdb
//     threshold: 200ms expected
//     explains: [hostapp-clusters-unhealthy]   # findings this one is the cause of
//     reach: cluster               # explains them on any node of the cluster
//
// Conditions: `check: NAME` with optional `status: [warn, fail]` (the
// default; `pass` too when `observed` is given), `message: REGEX` and
// `observed: "OP NUMBER[UNIT]"` (`field:` picks a field of an object);
// `metric: "NAME OP NUMBER[UNIT]"`; `log: REGEX` with optional `source:
// GLOB`; `node: offline`. Any condition may add `role: ROLE`. Units are ms,
// s, m, h (compared in milliseconds), d and %.
//
// The knowledge base is also the source of docs/TROUBLESHOOTING.md: run
// `go generate ./diagnostics/rules` after changing a rule.
package rules

//go:generate go run ./gendocs -o ../../docs/TROUBLESHOOTING.md

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/guildnet/metaguildnet/messages"
)

//go:embed *.yaml
var builtinFS embed.FS

// Severities, from least to most urgent (the wire's, messages.Severity*).
const (
	Info     = messages.SeverityInfo
	Warning  = messages.SeverityWarning
	Critical = messages.SeverityCritical
)

// SeverityRank orders severities: critical 3, warning 2, info 1, other 0.
func SeverityRank(s string) int {
	switch s {
	case Critical:
		return 3
	case Warning:
		return 2
	case Info:
		return 1
	}
	return 0
}

// Layers lists the standard layers in report order.
var Layers = []string{"network", "cluster", "database", "application", "host"}

// DocsFile is where rule docs links point.
const DocsFile = "docs/TROUBLESHOOTING.md"

// Rule is one entry of the knowledge base.
type Rule struct {
	ID         string
	Title      string // may hold {observed}, replaced by the observed value
	Heading    string // the docs heading; defaults to Title without placeholders
	Severity   string
	Layer      string
	When       []Condition
	Details    string // a longer explanation, for the docs
	Suggestion string
	Command    string
	Threshold  string
	Docs       string // defaults to docs/TROUBLESHOOTING.md#<anchor of Heading>
	// Reach is how far this rule's finding explains others: "node" (the
	// default: symptoms on the same node), "cluster" (on any node of the
	// same cluster) or "fleet" (anywhere).
	Reach    string
	Explains []string // ids of rules whose findings this rule's finding causes
	CausedBy []string // ids of rules whose findings cause this one
	// ExplainsEvidence and CausedByEvidence are Explains and CausedBy with
	// the evidence each relation requires, in the same order.
	ExplainsEvidence []Explain
	CausedByEvidence []Explain
	// Pos is "FILE:LINE" where the rule starts.
	Pos string

	lines map[string]int // field -> line, for errors found after parsing
	file  string
}

// Condition is one way a rule fires. Exactly one of Check, Metric, Log and
// Node is set.
type Condition struct {
	Check   string
	Status  []string
	Message *regexp.Regexp
	// Class: the check's message (or the log line) must show one of these
	// evidence classes (see Classes).
	Class    []string
	Observed *Compare
	Field    string

	Metric *Compare

	Log    *regexp.Regexp
	Source string // glob on the log source

	Node string // "offline"
	Role string // the node's role must be this
}

// Compare is "NAME OP VALUE[UNIT]"; Name is empty for observed values.
type Compare struct {
	Name  string
	Op    string // > >= < <= == !=
	Value float64
	Unit  string // "", ms, d, %
	Text  string // as written
}

// Holds reports whether v satisfies the comparison.
func (c *Compare) Holds(v float64) bool {
	switch c.Op {
	case ">":
		return v > c.Value
	case ">=":
		return v >= c.Value
	case "<":
		return v < c.Value
	case "<=":
		return v <= c.Value
	case "==":
		return v == c.Value
	case "!=":
		return v != c.Value
	}
	return false
}

// Reach values.
const (
	ReachNode    = "node"
	ReachCluster = "cluster"
	ReachFleet   = "fleet"
)

// Heading returns the rule's docs heading.
func (r *Rule) heading() string {
	if r.Heading != "" {
		return r.Heading
	}
	return StripPlaceholders(r.Title)
}

var placeholderRE = lazyRE(`\s*\(\{[a-z_]+\}\)|\s*\{[a-z_]+\}`)

// StripPlaceholders removes "{observed}" and "({observed})" from a title.
func StripPlaceholders(s string) string {
	return strings.TrimSpace(placeholderRE().ReplaceAllString(s, ""))
}

// KB is a validated set of rules.
type KB struct {
	Rules []*Rule // in load order: built-in files by layer, then the user file
	byID  map[string]*Rule
}

// Rule returns the rule with the id, or nil.
func (kb *KB) Rule(id string) *Rule { return kb.byID[id] }

// Builtin returns the embedded knowledge base.
func Builtin() (*KB, error) { return Load("") }

// Load returns the embedded rules plus those of userFile when it is not
// empty. A user rule with a built-in rule's id replaces it.
func Load(userFile string) (*KB, error) {
	var sets [][]*Rule
	names, err := fs.Glob(builtinFS, "*.yaml")
	if err != nil {
		return nil, fmt.Errorf("list built-in rules: %w", err)
	}
	slices.SortFunc(names, func(a, b string) int { return layerOrder(a) - layerOrder(b) })
	for _, n := range names {
		b, err := builtinFS.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read built-in rules %s: %w", n, err)
		}
		rs, err := Parse("diagnostics/rules/"+n, b)
		if err != nil {
			return nil, err
		}
		sets = append(sets, rs)
	}
	if userFile != "" {
		b, err := os.ReadFile(userFile)
		if err != nil {
			return nil, fmt.Errorf("read rules file: %w", err)
		}
		rs, err := Parse(userFile, b)
		if err != nil {
			return nil, err
		}
		sets = append(sets, rs)
	}
	return New(sets...)
}

func layerOrder(file string) int {
	i := slices.Index(Layers, strings.TrimSuffix(file, ".yaml"))
	if i < 0 {
		return len(Layers)
	}
	return i
}

// New builds a knowledge base from rule sets; a later rule with an earlier
// one's id replaces it in place. It checks that relations name known rules
// and do not form a cycle.
func New(sets ...[]*Rule) (*KB, error) {
	kb := &KB{byID: make(map[string]*Rule)}
	for _, set := range sets {
		for _, r := range set {
			if old, ok := kb.byID[r.ID]; ok {
				kb.Rules[slices.Index(kb.Rules, old)] = r
			} else {
				kb.Rules = append(kb.Rules, r)
			}
			kb.byID[r.ID] = r
		}
	}
	var errs []error
	for _, r := range kb.Rules {
		for _, rel := range []struct {
			field string
			ids   []string
		}{{"explains", r.Explains}, {"caused_by", r.CausedBy}} {
			for _, id := range rel.ids {
				if kb.byID[id] == nil {
					errs = append(errs, r.errf(rel.field, "unknown rule %q", id))
				} else if id == r.ID {
					errs = append(errs, r.errf(rel.field, "a rule cannot explain itself"))
				}
			}
		}
	}
	if len(errs) == 0 {
		if cyc := kb.cycle(); cyc != nil {
			r := kb.byID[cyc[0]]
			errs = append(errs, r.errf("explains", "relations form a cycle: %s", strings.Join(cyc, " -> ")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return kb, nil
}

// Causes returns the ids of rules explained by the rule with id (its
// explains plus the rules naming it in caused_by).
func (kb *KB) Causes(id string) []string {
	r := kb.byID[id]
	if r == nil {
		return nil
	}
	out := slices.Clone(r.Explains)
	for _, o := range kb.Rules {
		if slices.Contains(o.CausedBy, id) && !slices.Contains(out, o.ID) {
			out = append(out, o.ID)
		}
	}
	return out
}

// Edge returns the evidence the relation "cause explains symptom" requires,
// from cause's explains or symptom's caused_by.
func (kb *KB) Edge(cause, symptom string) (Explain, bool) {
	if r := kb.byID[cause]; r != nil {
		for _, e := range r.ExplainsEvidence {
			if e.Rule == symptom {
				return e, true
			}
		}
	}
	if r := kb.byID[symptom]; r != nil {
		for _, e := range r.CausedByEvidence {
			if e.Rule == cause {
				return e, true
			}
		}
	}
	return Explain{}, false
}

// cycle finds a cycle in the cause graph, or nil.
func (kb *KB) cycle() []string {
	const (
		white = iota
		grey
		black
	)
	color := make(map[string]int, len(kb.Rules))
	var stack []string
	var visit func(id string) []string
	visit = func(id string) []string {
		color[id] = grey
		stack = append(stack, id)
		for _, next := range kb.Causes(id) {
			switch color[next] {
			case grey:
				i := slices.Index(stack, next)
				return append(slices.Clone(stack[i:]), next)
			case white:
				if c := visit(next); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[id] = black
		return nil
	}
	for _, r := range kb.Rules {
		if color[r.ID] == white {
			if c := visit(r.ID); c != nil {
				return c
			}
		}
	}
	return nil
}

// LogPatterns returns every log regex of the knowledge base, for the log
// collector to scan with.
func (kb *KB) LogPatterns() []*regexp.Regexp {
	var out []*regexp.Regexp
	for _, r := range kb.Rules {
		for _, c := range r.When {
			if c.Log != nil {
				out = append(out, c.Log)
			}
		}
	}
	return out
}

// DocsLink returns the rule's docs link.
func (r *Rule) DocsLink() string {
	if r.Docs != "" {
		return r.Docs
	}
	return DocsFile + "#" + Anchor(r.heading())
}

// errf formats an error for a field of the rule: "FILE:LINE: rule "ID":
// field: problem".
func (r *Rule) errf(field, format string, a ...any) error {
	line := r.lines[field]
	if line == 0 {
		line = r.lines[""]
	}
	return fmt.Errorf("%s:%d: rule %q: %s: %s", r.file, line, r.ID, field, fmt.Sprintf(format, a...))
}
