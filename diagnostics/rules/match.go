package rules

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Facts are what rules match against for one node.
type Facts struct {
	Node    string
	Cluster string
	Role    string
	// Offline is set when the node did not answer (its checks are then
	// unknown with reason offline).
	Offline bool
	Reason  string
	Checks  []messages.CheckResult
	Metrics map[string]float64
	Lines   []Line
}

// Line is one (already redacted) log line.
type Line struct {
	Source string
	Text   string
}

// Match is one rule firing on one node.
type Match struct {
	Rule     *Rule
	Evidence []string
	// Observed is the first observed value that fired the rule, as shown
	// in the title ("350ms", "91.2%"); empty when none.
	Observed string
	// Checks are the names of the checks that fired the rule.
	Checks []string
	// Classes are the evidence classes of what fired the rule (see
	// Classes); Prefixes the addresses its evidence names; BlockedBy the
	// checks that blocked a skipped check that fired it.
	Classes   []string
	Prefixes  []netip.Prefix
	BlockedBy []string
}

// errorPriority orders the classes a title's {error} may say.
var errorPriority = []string{ClassRefused, ClassTimeout, ClassNoRoute, ClassReset, ClassDNS, ClassTLS, ClassConfig, ClassOffline}

// Error is how the observed error reads in a title: "HTTP 502",
// "connection refused", ...; "" when the evidence shows only state.
func (m Match) Error() string {
	for _, c := range m.Classes {
		if strings.HasPrefix(c, classHTTPPref) {
			return ClassLabel(c)
		}
	}
	for _, c := range errorPriority {
		if slices.Contains(m.Classes, c) {
			return ClassLabel(c)
		}
	}
	return ""
}

// Title is the rule's title with {observed} and {error} filled in (or
// removed).
func (m Match) Title() string {
	t := m.Rule.Title
	if e := m.Error(); e != "" {
		t = strings.ReplaceAll(t, "{error}", e)
	}
	if m.Observed != "" {
		t = strings.ReplaceAll(t, "{observed}", m.Observed)
	}
	return StripPlaceholders(t)
}

// addEvidence records the classes and addresses of what fired the rule.
func (m *Match) addEvidence(classes []string, text string) {
	for _, c := range classes {
		if !slices.Contains(m.Classes, c) {
			m.Classes = append(m.Classes, c)
		}
	}
	m.Prefixes = append(m.Prefixes, Prefixes(text)...)
}

// maxEvidence bounds the evidence one match carries.
const maxEvidence = 5

// Evaluate returns every rule that fires on f, in knowledge-base order.
func (kb *KB) Evaluate(f *Facts) []Match {
	var out []Match
	for _, r := range kb.Rules {
		if m, ok := r.Match(f); ok {
			out = append(out, m)
		}
	}
	return out
}

// Match reports whether any of the rule's conditions holds on f, with the
// evidence of every condition that does.
func (r *Rule) Match(f *Facts) (Match, bool) {
	m := Match{Rule: r}
	fired := false
	for i := range r.When {
		if r.When[i].eval(f, &m) {
			fired = true
		}
	}
	if len(m.Evidence) > maxEvidence {
		n := len(m.Evidence) - maxEvidence
		m.Evidence = append(m.Evidence[:maxEvidence], fmt.Sprintf("(%d more)", n))
	}
	return m, fired
}

func (c *Condition) eval(f *Facts, m *Match) bool {
	if c.Role != "" && !strings.EqualFold(c.Role, f.Role) {
		return false
	}
	switch {
	case c.Check != "":
		return c.evalCheck(f, m)
	case c.Metric != nil:
		v, ok := f.Metrics[c.Metric.Name]
		if !ok || !c.Metric.Holds(v) {
			return false
		}
		shown := formatValue(v, c.Metric.Unit)
		m.addEvidence([]string{ClassState}, "")
		m.Evidence = append(m.Evidence, fmt.Sprintf("metric %s = %s (%s)", c.Metric.Name, shown, c.Metric.Text))
		if m.Observed == "" {
			m.Observed = shown
		}
		return true
	case c.Log != nil:
		hit := false
		for _, l := range f.Lines {
			if c.Source != "" && !sourceMatch(c.Source, l.Source) {
				continue
			}
			if c.Log.MatchString(l.Text) {
				cls := Classes("", l.Text)
				if len(c.Class) > 0 && !ClassesFit(c.Class, cls) {
					continue
				}
				m.addEvidence(cls, l.Text)
				m.Evidence = append(m.Evidence, fmt.Sprintf("log %s: %s", l.Source, l.Text))
				hit = true
			}
		}
		return hit
	case c.Node == "offline":
		if f.Offline {
			m.addEvidence([]string{ClassOffline}, "")
			m.Evidence = append(m.Evidence, strings.TrimSuffix("node offline: "+f.Reason, ": "))
			return true
		}
		return false
	}
	return false
}

func sourceMatch(glob, source string) bool {
	if ok, _ := path.Match(glob, source); ok {
		return true
	}
	ok, _ := path.Match(glob, path.Base(source))
	return ok
}

func (c *Condition) evalCheck(f *Facts, m *Match) bool {
	hit := false
	for _, cr := range f.Checks {
		if cr.Name != c.Check {
			continue
		}
		if !c.statusOK(cr.Status) {
			continue
		}
		if c.Message != nil && !c.Message.MatchString(cr.Message) {
			continue
		}
		cls := Classes(cr.Status, cr.Message)
		if len(c.Class) > 0 && !ClassesFit(c.Class, cls) {
			continue
		}
		ev := fmt.Sprintf("check %s: %s", cr.Name, cr.Status)
		if cr.Message != "" {
			ev += ": " + cr.Message
		}
		if c.Observed != nil {
			v, shown, ok := ObservedValue(cr.Observed, c.Field, c.Observed.Unit)
			if !ok || !c.Observed.Holds(v) {
				continue
			}
			ev += fmt.Sprintf(" (observed %s, rule %s)", shown, c.Observed.Text)
			if m.Observed == "" {
				m.Observed = shown
			}
		} else if c.Field != "" && m.Observed == "" {
			// A field named without a comparison is shown in the title.
			if _, shown, ok := ObservedValue(cr.Observed, c.Field, ""); ok {
				m.Observed = shown
			}
		}
		m.Evidence = append(m.Evidence, ev)
		m.addEvidence(cls, cr.Message)
		if cr.BlockedBy != "" && !slices.Contains(m.BlockedBy, cr.BlockedBy) {
			m.BlockedBy = append(m.BlockedBy, cr.BlockedBy)
		}
		if !slices.Contains(m.Checks, cr.Name) {
			m.Checks = append(m.Checks, cr.Name)
		}
		hit = true
	}
	return hit
}

func (c *Condition) statusOK(s string) bool {
	if len(c.Status) > 0 {
		return slices.Contains(c.Status, s)
	}
	if c.Observed != nil {
		return s == messages.CheckPass || s == messages.CheckWarn || s == messages.CheckFail
	}
	return s == messages.CheckWarn || s == messages.CheckFail
}

// observedKeys are tried, in order, when a check's observed value is an
// object and the rule names no field.
var observedKeys = []string{"latency_ms", "query_ms", "duration_ms", "used_pct", "value", "ms", "percent", "seconds"}

// ObservedValue extracts a number from a check's observed value for a
// comparison in unit ("ms" for durations): a JSON number; a string such as
// "350ms", "1.2s", "91%" or "12"; or an object, using field (or, without
// one, the first of latency_ms, query_ms, duration_ms, used_pct, value, ms,
// percent, seconds,
// else its only numeric field). shown is the value as a person reads it.
func ObservedValue(raw json.RawMessage, field, unit string) (v float64, shown string, ok bool) {
	if len(raw) == 0 {
		return 0, "", false
	}
	var x any
	if json.Unmarshal(raw, &x) != nil {
		return 0, "", false
	}
	if obj, isObj := x.(map[string]any); isObj {
		if field != "" {
			x, ok = obj[field]
			if !ok {
				return 0, "", false
			}
			return scalarValue(x, keyUnit(field, unit))
		}
		for _, k := range observedKeys {
			if val, has := obj[k]; has {
				if v, shown, ok := scalarValue(val, keyUnit(k, unit)); ok {
					return v, shown, true
				}
			}
		}
		var only []string
		for k, val := range obj {
			if _, isNum := val.(float64); isNum {
				only = append(only, k)
			}
		}
		if len(only) == 1 {
			return scalarValue(obj[only[0]], keyUnit(only[0], unit))
		}
		return 0, "", false
	}
	return scalarValue(x, unit)
}

// keyUnit infers a field's unit from its name when it has one.
func keyUnit(key, unit string) string {
	switch {
	case strings.HasSuffix(key, "_ms") || key == "ms":
		if unit == "ms" || unit == "" {
			return "ms"
		}
	case strings.HasSuffix(key, "seconds"):
		if unit == "ms" {
			return "s"
		}
	case strings.HasSuffix(key, "_pct") || strings.HasSuffix(key, "percent"):
		if unit == "%" || unit == "" {
			return "%"
		}
	}
	return unit
}

func scalarValue(x any, unit string) (float64, string, bool) {
	switch t := x.(type) {
	case float64:
		if unit == "s" { // a field in seconds compared in ms
			return t * 1000, formatValue(t*1000, "ms"), true
		}
		return t, formatValue(t, unit), true
	case string:
		v, ok := parseQuantity(t)
		return v, strings.TrimSpace(t), ok
	}
	return 0, "", false
}

// parseQuantity reads "350ms", "1.2s", "91.5%", "12", "3d" or a Go duration,
// durations in milliseconds.
func parseQuantity(s string) (float64, bool) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		return float64(d) / float64(time.Millisecond), true
	}
	s = strings.TrimSpace(strings.TrimRight(s, "%d"))
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

func formatValue(v float64, unit string) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if v != float64(int64(v)) {
		s = strconv.FormatFloat(v, 'f', 1, 64)
	}
	switch unit {
	case "d":
		return s + " days"
	}
	return s + unit
}
