package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodRule = `- id: custom-disk
  title: Custom disk ({observed})
  severity: info
  layer: storage
  when:
    - metric: "disk_percent:/data > 50%"
  suggestion: Clean /data
`

func TestParseMalformed(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error, each "FILE:LINE: ..." where it matters
	}{
		{"not yaml", "- id: x\n\ttitle: T\n", []string{"u.yaml:2: not valid YAML: found a tab"}},
		{"not a list", "id: x\n", []string{`u.yaml:1: unknown top-level field "id"`}},
		{"scalar root", "hello\n", []string{"u.yaml:1: want a list of rules"}},
		{"item not mapping", "- just a string\n", []string{`u.yaml:1: rule "#1": rule: want a mapping`}},
		{"missing fields", "- id: x\n  when:\n    - metric: a > 1\n", []string{
			`u.yaml:1: rule "x": title: required`, `rule "x": severity: required`, `rule "x": layer: required`, `rule "x": suggestion: required`}},
		{"bad severity", "- id: x\n  title: T\n  severity: huge\n  layer: network\n  when: [{metric: a > 1}]\n  suggestion: s\n",
			[]string{`u.yaml:3: rule "x": severity: "huge" is not one of info, warning, critical`}},
		{"unknown field", "- id: x\n  title: T\n  severity: info\n  layer: network\n  colour: red\n  when: [{metric: a > 1}]\n  suggestion: s\n",
			[]string{`u.yaml:5: rule "x": colour: unknown field`}},
		{"bad regex names its rule", "- id: bad-re\n  title: T\n  severity: info\n  layer: network\n  when:\n    - log: '(unclosed'\n  suggestion: s\n",
			[]string{`u.yaml:6: rule "bad-re": when[1].log: invalid regex`}},
		{"bad message regex", "- id: bad-msg\n  title: T\n  severity: info\n  layer: network\n  when:\n    - check: c\n      message: '*x'\n  suggestion: s\n",
			[]string{`u.yaml:7: rule "bad-msg": when[1].message: invalid regex`}},
		{"bad metric", "- id: m\n  title: T\n  severity: info\n  layer: host\n  when:\n    - metric: memory is high\n  suggestion: s\n",
			[]string{`u.yaml:6: rule "m": when[1].metric: "memory is high" is not NAME OP NUMBER`}},
		{"bad observed", "- id: o\n  title: T\n  severity: info\n  layer: host\n  when:\n    - check: c\n      observed: lots\n  suggestion: s\n",
			[]string{`u.yaml:7: rule "o": when[1].observed: "lots" is not OP NUMBER`}},
		{"two kinds", "- id: k\n  title: T\n  severity: info\n  layer: host\n  when:\n    - check: c\n      metric: a > 1\n  suggestion: s\n",
			[]string{`u.yaml:6: rule "k": when[1].condition: want exactly one of check, metric, log, node (got 2)`}},
		{"bad status", "- id: s\n  title: T\n  severity: info\n  layer: host\n  when:\n    - check: c\n      status: [broken]\n  suggestion: s\n",
			[]string{`u.yaml:7: rule "s": when[1].status: "broken" is not one of`}},
		{"bad id", "- id: Bad_ID\n  title: T\n  severity: info\n  layer: host\n  when: [{metric: a > 1}]\n  suggestion: s\n",
			[]string{`u.yaml:1: rule "Bad_ID": id:`}},
		{"duplicate id", goodRule + strings.ReplaceAll(goodRule, "Custom disk", "Other"), []string{`u.yaml:8: rule "custom-disk": id: duplicate id, first defined at line 1`}},
		{"empty when", "- id: w\n  title: T\n  severity: info\n  layer: host\n  when: []\n  suggestion: s\n", []string{`u.yaml:5: rule "w": when: at least one condition`}},
		{"bad reach", "- id: r\n  title: T\n  severity: info\n  layer: host\n  reach: galaxy\n  when: [{metric: a > 1}]\n  suggestion: s\n", []string{`u.yaml:5: rule "r": reach:`}},
		{"bad node", "- id: n\n  title: T\n  severity: info\n  layer: host\n  when: [{node: sleepy}]\n  suggestion: s\n", []string{`u.yaml:5: rule "n": when[1].node:`}},
		{"field twice", "- id: d\n  title: T\n  title: U\n  severity: info\n  layer: host\n  when: [{metric: a > 1}]\n  suggestion: s\n", []string{`u.yaml:3: rule "d": title: given twice`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("u.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.yaml)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestUserFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := builtin(t)

	t.Run("adds and overrides", func(t *testing.T) {
		p := write("ok.yaml", "rules:\n"+indent(goodRule)+indent(`- id: memory-pressure
  title: Memory tight ({observed})
  severity: critical
  layer: host
  when:
    - metric: memory_percent > 70%
  suggestion: Buy memory
  explains:
    - {rule: custom-disk, evidence: [state]}
`))
		kb, err := Load(p)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if len(kb.Rules) != len(base.Rules)+1 {
			t.Errorf("got %d rules, want %d", len(kb.Rules), len(base.Rules)+1)
		}
		r := kb.Rule("memory-pressure")
		if r.Severity != Critical || !strings.HasSuffix(r.Pos, "ok.yaml:9") {
			t.Errorf("override not taken: %+v", r)
		}
		f := met("disk_percent:/data", 60)
		if m, ok := kb.Rule("custom-disk").Match(&f); !ok || m.Title() != "Custom disk (60%)" {
			t.Errorf("custom rule: %q %v", m.Title(), ok)
		}
	})
	t.Run("unknown relation", func(t *testing.T) {
		p := write("rel.yaml", strings.Replace(goodRule, "  suggestion:", "  explains:\n    - {rule: no-such-rule, evidence: [network]}\n  suggestion:", 1))
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), `rel.yaml:7: rule "custom-disk": explains: unknown rule "no-such-rule"`) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("cycle", func(t *testing.T) {
		p := write("cyc.yaml", strings.Replace(goodRule, "  suggestion:", "  caused_by:\n    - {rule: tailnet-unreachable, evidence: [state]}\n  explains:\n    - {rule: tailnet-unreachable, evidence: [state]}\n  suggestion:", 1))
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), "cycle") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("relation without evidence", func(t *testing.T) {
		p := write("noev.yaml", strings.Replace(goodRule, "  suggestion:", "  explains: [pods-pending]\n  suggestion:", 1))
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), `noev.yaml:7: rule "custom-disk": explains: [0] "pods-pending" states no evidence`) {
			t.Errorf("err = %v", err)
		}
		p = write("badev.yaml", strings.Replace(goodRule, "  suggestion:", "  explains:\n    - {rule: pods-pending, evidence: [loud], to: [nowhere]}\n  suggestion:", 1))
		_, err = Load(p)
		if err == nil || !strings.Contains(err.Error(), `"loud" is not one of refused`) || !strings.Contains(err.Error(), `"nowhere" is neither tailnet, routes nor a CIDR`) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		if _, err := Load(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "read rules file") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		kb, err := Load(write("empty.yaml", ""))
		if err != nil || len(kb.Rules) != len(base.Rules) {
			t.Errorf("empty file: %v", err)
		}
	})
}

func indent(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		b.WriteString("  " + l)
	}
	return b.String()
}

// FuzzParse: no input panics the parser, and what it accepts builds a
// knowledge base whose rules all evaluate without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(goodRule))
	for _, name := range []string{"network.yaml", "database.yaml", "cluster.yaml", "application.yaml"} {
		b, _ := builtinFS.ReadFile(name)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		kb, err := New(rs)
		if err != nil {
			return
		}
		facts := []Facts{chk("c", "fail", "x509"), met("a", 2), logl("a.log", "address already in use"), {Offline: true},
			chk("kube_api_ready", "fail", "dial tcp 10.96.0.1:443: i/o timeout"), chk("c", "not_configured", "not configured: X is not set")}
		var ms []Match
		for i := range facts {
			ms = append(ms, kb.Evaluate(&facts[i])...)
		}
		// Every relation's evidence can be judged on every pair of matches.
		for _, c := range ms {
			for _, s := range ms {
				if e, ok := kb.Edge(c.Rule.ID, s.Rule.ID); ok {
					_ = e.Fits(c, s)
					_ = e.String()
				}
			}
			_ = c.Title()
		}
		_ = Markdown(kb)
	})
}
