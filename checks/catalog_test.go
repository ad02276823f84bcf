package checks

import (
	"os"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/checks/meta"
)

// TestChecksDocumented keeps docs/CHECKS.md's table in step with the code.
func TestChecksDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/CHECKS.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ := strings.Cut(rest, "`")
			rows[name] = line
		}
	}
	for _, c := range BuiltinChecks() {
		row, ok := rows[c.Name]
		if !ok {
			t.Errorf("docs/CHECKS.md has no row for %s", c.Name)
			continue
		}
		cells := strings.Split(row, "|")
		if len(cells) < 6 {
			t.Errorf("%s: short row", c.Name)
			continue
		}
		layer, scope, deps, timeout := strings.TrimSpace(cells[2]), strings.TrimSpace(cells[3]), strings.TrimSpace(cells[4]), strings.TrimSpace(cells[5])
		if layer != c.Layer || scope != string(c.Scope) || deps != strings.Join(c.DependsOn, ", ") || timeout != c.Timeout.String() {
			t.Errorf("%s: documented as %s | %s | %s | %s, code has %s | %s | %s | %s", c.Name, layer, scope, deps, timeout, c.Layer, c.Scope, strings.Join(c.DependsOn, ", "), c.Timeout)
		}
	}
}

// The families implement exactly the rows of the metadata table, in its
// order: the table diagnostics reads is the one the agent runs.
func TestBuiltinChecksMatchTable(t *testing.T) {
	got := BuiltinChecks()
	if len(got) != len(meta.Builtin) {
		t.Errorf("%d built-in checks, %d rows in checks/meta", len(got), len(meta.Builtin))
	}
	for i, m := range meta.Builtin {
		if i >= len(got) {
			t.Errorf("row %s has no check", m.Name)
			continue
		}
		if got[i].Name != m.Name {
			t.Errorf("check %d is %s, the table has %s there", i, got[i].Name, m.Name)
		}
		if m.Title == "" {
			t.Errorf("%s: no title", m.Name)
		}
	}
}
