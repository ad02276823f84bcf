package rules

import (
	"github.com/guildnet/metaguildnet/messages"

	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// lazyRE compiles a regexp on first use, so that an idle agent holds none.
func lazyRE(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// maxRuleFile bounds a rule file; larger input is refused before parsing.
const maxRuleFile = 1 << 20

var (
	idRE    = lazyRE(`^[a-z0-9][a-z0-9-]*$`)
	layerRE = lazyRE(`^[a-z][a-z0-9_-]*$`)
	// compareRE parses "[NAME] OP NUMBER[UNIT]".
	compareRE   = lazyRE(`^\s*([A-Za-z0-9_.:/-]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|%)?\s*$`)
	yamlLineRE  = lazyRE(`^yaml: line (\d+): (.*)$`)
	checkStatus = messages.CheckStatuses
)

// Parse reads the rules of one YAML file named file (used in errors). The
// file is a sequence of rules, or a mapping with a `rules:` sequence. Every
// problem is reported as "FILE:LINE: rule "ID": field: problem"; all of them
// are returned together.
func Parse(file string, data []byte) ([]*Rule, error) {
	if len(data) > maxRuleFile {
		return nil, fmt.Errorf("%s:1: rule file is %d bytes, larger than the %d-byte limit", file, len(data), maxRuleFile)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := 1, err.Error()
		if m := yamlLineRE().FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
		}
		return nil, fmt.Errorf("%s:%d: not valid YAML: %s", file, line, strings.TrimPrefix(msg, "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, nil // empty file: no rules
	}
	root := doc.Content[0]
	if root.Kind == yaml.MappingNode {
		var seq *yaml.Node
		for i := 0; i+1 < len(root.Content); i += 2 {
			if k := root.Content[i]; k.Value == "rules" {
				seq = root.Content[i+1]
			} else {
				return nil, fmt.Errorf("%s:%d: unknown top-level field %q (want a list of rules, or rules:)", file, k.Line, k.Value)
			}
		}
		if seq == nil {
			return nil, nil
		}
		root = seq
	}
	if root.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d: want a list of rules", file, root.Line)
	}
	var (
		out  []*Rule
		errs []error
		seen = map[string]int{}
	)
	for i, item := range root.Content {
		r, rerrs := parseRule(file, i+1, item)
		errs = append(errs, rerrs...)
		if r == nil {
			continue
		}
		if prev, dup := seen[r.ID]; dup {
			errs = append(errs, r.errf("id", "duplicate id, first defined at line %d", prev))
			continue
		}
		seen[r.ID] = r.lines[""]
		if len(rerrs) == 0 {
			out = append(out, r)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func parseRule(file string, n int, node *yaml.Node) (*Rule, []error) {
	r := &Rule{file: file, lines: map[string]int{"": node.Line}, Pos: fmt.Sprintf("%s:%d", file, node.Line)}
	if node.Kind != yaml.MappingNode {
		r.ID = "#" + strconv.Itoa(n)
		return nil, []error{r.errf("rule", "want a mapping of fields, got %s", kindName(node))}
	}
	// Find the id first so every error can name the rule.
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == "id" {
			r.ID = node.Content[i+1].Value
		}
	}
	if r.ID == "" {
		r.ID = "#" + strconv.Itoa(n)
	}
	var errs []error
	fail := func(field string, format string, a ...any) { errs = append(errs, r.errf(field, format, a...)) }
	str := func(field string, v *yaml.Node) string {
		if v.Kind != yaml.ScalarNode {
			fail(field, "want a string, got %s", kindName(v))
			return ""
		}
		return v.Value
	}
	haveID := false
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		field := k.Value
		if _, dup := r.lines[field]; dup {
			r.lines[field] = k.Line
			fail(field, "given twice")
			continue
		}
		r.lines[field] = k.Line
		switch field {
		case "id":
			haveID = true
			if s := str(field, v); !idRE().MatchString(s) {
				fail(field, "%q is not a lower-case id of letters, digits and dashes", s)
			}
		case "title":
			r.Title = str(field, v)
		case "heading":
			r.Heading = str(field, v)
		case "severity":
			r.Severity = str(field, v)
			if SeverityRank(r.Severity) == 0 {
				fail(field, "%q is not one of info, warning, critical", r.Severity)
			}
		case "layer":
			r.Layer = str(field, v)
			if !layerRE().MatchString(r.Layer) {
				fail(field, "%q is not a layer name", r.Layer)
			}
		case "reach":
			r.Reach = str(field, v)
			if r.Reach != ReachNode && r.Reach != ReachCluster && r.Reach != ReachFleet {
				fail(field, "%q is not one of node, cluster, fleet", r.Reach)
			}
		case "details":
			r.Details = str(field, v)
		case "suggestion":
			r.Suggestion = str(field, v)
		case "command":
			r.Command = str(field, v)
		case "threshold":
			r.Threshold = str(field, v)
		case "docs":
			r.Docs = str(field, v)
		case "explains", "caused_by":
			es := parseExplains(v, func(f string, a ...any) { fail(field, f, a...) })
			for _, e := range es {
				if field == "explains" {
					r.Explains = append(r.Explains, e.Rule)
					r.ExplainsEvidence = append(r.ExplainsEvidence, e)
				} else {
					r.CausedBy = append(r.CausedBy, e.Rule)
					r.CausedByEvidence = append(r.CausedByEvidence, e)
				}
			}
		case "when":
			if v.Kind != yaml.SequenceNode {
				fail(field, "want a list of conditions, got %s", kindName(v))
				continue
			}
			for j, cn := range v.Content {
				c, cerrs := parseCondition(r, j+1, cn)
				errs = append(errs, cerrs...)
				if c != nil {
					r.When = append(r.When, *c)
				}
			}
		default:
			fail(field, "unknown field")
		}
	}
	required := []struct {
		field string
		ok    bool
	}{{"id", haveID}, {"title", r.Title != ""}, {"severity", r.Severity != ""}, {"layer", r.Layer != ""},
		{"when", len(r.When) > 0 || r.lines["when"] != 0}, {"suggestion", r.Suggestion != ""}}
	for _, q := range required {
		if !q.ok {
			fail(q.field, "required")
		}
	}
	if r.lines["when"] != 0 && len(r.When) == 0 && len(errs) == 0 {
		fail("when", "at least one condition is required")
	}
	if r.Reach == "" {
		r.Reach = ReachNode
	}
	if r.Title != "" && StripPlaceholders(r.Title) == "" && r.Heading == "" {
		fail("title", "is only a placeholder")
	}
	return r, errs
}

func parseCondition(r *Rule, n int, node *yaml.Node) (*Condition, []error) {
	var errs []error
	fail := func(line int, field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: rule %q: when[%d].%s: %s", r.file, line, r.ID, n, field, fmt.Sprintf(format, a...)))
	}
	if node.Kind != yaml.MappingNode {
		fail(node.Line, "condition", "want a mapping, got %s", kindName(node))
		return nil, errs
	}
	c := &Condition{}
	kinds := 0
	seen := map[string]bool{}
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		field, line := k.Value, k.Line
		if seen[field] {
			fail(line, field, "given twice")
			continue
		}
		seen[field] = true
		if field != "status" && field != "class" && v.Kind != yaml.ScalarNode {
			fail(line, field, "want a string, got %s", kindName(v))
			continue
		}
		var err error
		switch field {
		case "check":
			kinds++
			c.Check = v.Value
			if c.Check == "" {
				fail(line, field, "empty check name")
			}
		case "status":
			c.Status = strList(v, func(f string, a ...any) { fail(line, field, f, a...) })
			for _, s := range c.Status {
				if !slices.Contains(checkStatus, s) {
					fail(line, field, "%q is not one of %s", s, strings.Join(checkStatus, ", "))
				}
			}
		case "class":
			c.Class = strList(v, func(f string, a ...any) { fail(line, field, f, a...) })
			for _, s := range c.Class {
				if !validClass(s) {
					fail(line, field, "%q is not one of %s", s, ClassNames)
				}
			}
		case "message":
			if c.Message, err = compileRE(v.Value); err != nil {
				fail(line, field, "invalid regex: %v", err)
			}
		case "observed":
			if c.Observed, err = parseCompare(v.Value, false); err != nil {
				fail(line, field, "%v", err)
			}
		case "field":
			c.Field = v.Value
		case "metric":
			kinds++
			if c.Metric, err = parseCompare(v.Value, true); err != nil {
				fail(line, field, "%v", err)
			}
		case "log":
			kinds++
			if c.Log, err = compileRE(v.Value); err != nil {
				fail(line, field, "invalid regex: %v", err)
			}
		case "source":
			c.Source = v.Value
			if _, err := path.Match(c.Source, ""); err != nil {
				fail(line, field, "invalid glob %q: %v", c.Source, err)
			}
		case "node":
			kinds++
			c.Node = v.Value
			if c.Node != "offline" {
				fail(line, field, "%q: the only node condition is offline", c.Node)
			}
		case "role":
			c.Role = v.Value
		default:
			fail(line, field, "unknown field")
		}
	}
	if kinds != 1 {
		fail(node.Line, "condition", "want exactly one of check, metric, log, node (got %d)", kinds)
	}
	if c.Check == "" && (seen["status"] || seen["message"] || seen["observed"] || seen["field"]) {
		fail(node.Line, "condition", "status, message, observed and field go with check")
	}
	if c.Check == "" && c.Log == nil && seen["class"] {
		fail(node.Line, "class", "class goes with check or log")
	}
	if c.Log == nil && seen["source"] {
		fail(node.Line, "source", "source goes with log")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// compileRE compiles a rule regex, bounded in size so that a user file
// cannot make the agent build a huge automaton.
func compileRE(s string) (*regexp.Regexp, error) {
	if s == "" {
		return nil, errors.New("empty regex")
	}
	if len(s) > 1024 {
		return nil, fmt.Errorf("regex of %d characters is longer than 1024", len(s))
	}
	return regexp.Compile(s)
}

// parseCompare parses "NAME OP NUMBER[UNIT]" (named) or "OP NUMBER[UNIT]".
func parseCompare(s string, named bool) (*Compare, error) {
	m := compareRE().FindStringSubmatch(s)
	if m == nil {
		if named {
			return nil, fmt.Errorf("%q is not NAME OP NUMBER (e.g. memory_percent > 85)", s)
		}
		return nil, fmt.Errorf("%q is not OP NUMBER (e.g. > 200ms)", s)
	}
	if named && m[1] == "" {
		return nil, fmt.Errorf("%q names no metric", s)
	}
	if !named && m[1] != "" {
		return nil, fmt.Errorf("%q: observed values take no name", s)
	}
	v, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", s, err)
	}
	c := &Compare{Name: m[1], Op: m[2], Text: strings.TrimSpace(s)}
	c.Value, c.Unit = normalize(v, m[4])
	return c, nil
}

// normalize converts a quantity to the unit rules compare in: durations to
// milliseconds, everything else as written.
func normalize(v float64, unit string) (float64, string) {
	switch unit {
	case "ms":
		return v, "ms"
	case "s":
		return v * 1000, "ms"
	case "m":
		return v * 60000, "ms"
	case "h":
		return v * 3600000, "ms"
	}
	return v, unit
}

func strList(v *yaml.Node, fail func(string, ...any)) []string {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Value == "" {
			return nil
		}
		return []string{v.Value}
	case yaml.SequenceNode:
		var out []string
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode || e.Value == "" {
				fail("want a list of names, item at line %d is %s", e.Line, kindName(e))
				continue
			}
			out = append(out, e.Value)
		}
		return out
	}
	fail("want a list of names, got %s", kindName(v))
	return nil
}

// parseExplains reads an explains (or caused_by) list: each entry names a
// rule and the evidence its finding must show to be folded under this
// one: `{rule: ID, evidence: [CLASS...], to: [tailnet|routes|CIDR...],
// message: REGEX, cause_message: REGEX}`.
func parseExplains(v *yaml.Node, fail func(string, ...any)) []Explain {
	if v.Kind != yaml.SequenceNode {
		fail("want a list of {rule, evidence} entries, got %s", kindName(v))
		return nil
	}
	var out []Explain
	for i, item := range v.Content {
		if item.Kind == yaml.ScalarNode {
			fail("[%d] %q states no evidence: write {rule: %s, evidence: [%s]} with the classes of evidence the finding must show (%s)", i, item.Value, item.Value, ClassNetwork, ClassNames)
			continue
		}
		if item.Kind != yaml.MappingNode {
			fail("[%d]: want a mapping {rule, evidence}, got %s", i, kindName(item))
			continue
		}
		var e Explain
		seen := map[string]bool{}
		bad := false
		for j := 0; j+1 < len(item.Content); j += 2 {
			k, val := item.Content[j], item.Content[j+1]
			if seen[k.Value] {
				fail("[%d].%s (line %d): given twice", i, k.Value, k.Line)
				bad = true
				continue
			}
			seen[k.Value] = true
			sub := func(f string, a ...any) {
				fail("[%d].%s (line %d): %s", i, k.Value, k.Line, fmt.Sprintf(f, a...))
				bad = true
			}
			switch k.Value {
			case "rule":
				if val.Kind != yaml.ScalarNode || val.Value == "" {
					sub("want a rule id")
					continue
				}
				e.Rule = val.Value
			case "evidence":
				e.Classes = strList(val, sub)
				for _, c := range e.Classes {
					if !validClass(c) {
						sub("%q is not one of %s", c, ClassNames)
					}
				}
			case "to":
				e.ToText = strList(val, sub)
				for _, t := range e.ToText {
					ps, err := parseTo(t)
					if err != nil {
						sub("%v", err)
					}
					e.To = append(e.To, ps...)
				}
			case "message", "cause_message":
				if val.Kind != yaml.ScalarNode {
					sub("want a regex")
					continue
				}
				re, err := compileRE(val.Value)
				if err != nil {
					sub("invalid regex: %v", err)
					continue
				}
				if k.Value == "message" {
					e.Message = re
				} else {
					e.CauseMessage = re
				}
			default:
				sub("unknown field (want rule, evidence, to, message, cause_message)")
			}
		}
		if e.Rule == "" && !bad {
			fail("[%d] (line %d): rule is required", i, item.Line)
			continue
		}
		if len(e.Classes) == 0 && !bad {
			fail("[%d] %q (line %d): evidence is required: the classes of evidence %s's finding must show (%s)", i, e.Rule, item.Line, e.Rule, ClassNames)
			continue
		}
		if !bad {
			out = append(out, e)
		}
	}
	return out
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return "a scalar"
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}
