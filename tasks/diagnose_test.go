package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/diagnostics/diagtest"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// diagnoseNode plants a node full of secrets and makes it the working
// directory (for .env and .env.local), as the agent's would be.
func diagnoseNode(t testing.TB) (diagtest.Node, *Env) {
	p := diagtest.New(t)
	t.Chdir(p.WorkDir)
	settings := config.Settings{}
	for k, v := range p.Settings {
		settings[k] = v
	}
	return p, &Env{Node: "n1", Cluster: "c1", Role: "worker", Settings: settings}
}

func TestDiagnoseTask(t *testing.T) {
	p, env := diagnoseNode(t)
	task, ok := Builtin().Lookup("diagnose")
	if !ok {
		t.Fatal("diagnose is not registered in Builtin")
	}
	out, err := task.Run(context.Background(), env, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.Outcome != messages.OutcomeWarn || !strings.Contains(out.Reason, "findings") {
		t.Errorf("outcome %s, reason %q", out.Outcome, out.Reason)
	}
	b, err := json.Marshal(out.Data)
	if err != nil {
		t.Fatal(err)
	}
	p.AssertClean(t, "diagnose output", b)
	if len(b) > messages.DefaultMaxMessageBytes {
		t.Errorf("output of %d bytes exceeds the message limit", len(b))
	}
	o, err := messages.Decode[messages.DiagnoseOutput](b, 0) // as the controller reads it
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range o.Sections {
		names = append(names, s.Name)
		if s.Error != "" {
			t.Errorf("section %s: %s", s.Name, s.Error)
		}
	}
	if strings.Join(names, ",") != "system,components,logs,config" {
		t.Errorf("sections = %v", names)
	}
	found := map[string]bool{}
	for _, f := range o.Findings {
		found[f.ID] = true
		for _, s := range f.Symptoms {
			found[s.ID] = true
		}
		if f.Suggestion == "" || f.Docs == "" {
			t.Errorf("finding %s lacks suggestion or docs", f.ID)
		}
	}
	for _, id := range []string{"kubeconfig-cert-expiring", "rethinkdb-connection-refused", "auth-key-rejected"} {
		if !found[id] {
			t.Errorf("finding %s missing; got %v", id, found)
		}
	}
}

func TestDiagnoseArgsAndRulesFile(t *testing.T) {
	_, env := diagnoseNode(t)
	tests := []struct {
		name    string
		args    string
		rules   string // contents of METAGN_RULES_FILE, "" for none
		badArgs bool
		check   func(t *testing.T, o messages.DiagnoseOutput, out Output)
	}{
		{name: "unknown collector", args: `{"collectors":["nope"]}`, badArgs: true},
		{name: "unknown field", args: `{"colectors":["logs"]}`, badArgs: true},
		{name: "subset", args: `{"collectors":["logs","config"]}`, check: func(t *testing.T, o messages.DiagnoseOutput, _ Output) {
			if len(o.Sections) != 2 || o.Sections[0].Name != "logs" || o.Sections[1].Name != "config" {
				t.Errorf("sections = %+v", o.Sections)
			}
		}},
		{name: "bad rules file", args: `{"collectors":["config"]}`, rules: "- id: x\n  title: T\n  severity: loud\n", check: func(t *testing.T, o messages.DiagnoseOutput, out Output) {
			if !strings.Contains(o.RulesError, `.yaml:3: rule "x": severity:`) || out.Outcome != messages.OutcomeWarn {
				t.Errorf("rules error %q, outcome %s", o.RulesError, out.Outcome)
			}
			if len(o.Findings) == 0 {
				t.Error("built-in rules were not used")
			}
		}},
		{name: "user rule fires", args: `{"collectors":["config"]}`,
			rules: "- id: has-env\n  title: Env files present\n  severity: info\n  layer: host\n  when: [{metric: env_files_present >= 2}]\n  suggestion: none needed\n",
			check: func(t *testing.T, o messages.DiagnoseOutput, _ Output) {
				if o.RulesError != "" || !strings.Contains(mustJSON(o.Findings), `"id":"has-env"`) {
					t.Errorf("user rule: err %q findings %s", o.RulesError, mustJSON(o.Findings))
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			delete(env.Settings, "METAGN_RULES_FILE")
			if tc.rules != "" {
				p := filepath.Join(t.TempDir(), "rules.yaml")
				if err := os.WriteFile(p, []byte(tc.rules), 0o600); err != nil {
					t.Fatal(err)
				}
				env.Settings["METAGN_RULES_FILE"] = p
			}
			out, err := Diagnose{}.Run(context.Background(), env, json.RawMessage(tc.args))
			if tc.badArgs {
				if !errors.Is(err, ErrBadArgs) {
					t.Fatalf("err = %v, want ErrBadArgs", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var o messages.DiagnoseOutput
			if err := json.Unmarshal([]byte(mustJSON(out.Data)), &o); err != nil {
				t.Fatal(err)
			}
			tc.check(t, o, out)
		})
	}
}

func TestFitOutput(t *testing.T) {
	var srcs []collect.LogSource
	var lines []collect.LogLine
	for i := range 16 {
		src := collect.LogSource{Source: "f" + string(rune('a'+i))}
		for range 20 {
			l := strings.Repeat("x", 500)
			src.Matches = append(src.Matches, l)
			src.Tail = append(src.Tail, l)
			lines = append(lines, collect.LogLine{Source: src.Source, Text: l})
		}
		srcs = append(srcs, src)
	}
	o := messages.DiagnoseOutput{Sections: []collect.Section{{Name: "logs", Lines: lines, Data: json.RawMessage(mustJSON(srcs))}}}
	cut := fitOutput(&o, 200<<10)
	if size := len(mustJSON(o)); size > 200<<10 || !strings.Contains(cut, "log tails") {
		t.Errorf("after fitting: %d bytes, cut %q", size, cut)
	}
	if fitOutput(&o, 1<<20) != "" {
		t.Error("trimmed an output that fits")
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// BenchmarkDiagnoseScan measures one whole diagnose scan of a node: rules
// loaded, all four collectors (the CPU sample window is 100 ms of it), the
// local analysis and the output encoding. Target: under 1 s.
func BenchmarkDiagnoseScan(b *testing.B) {
	_, env := diagnoseNode(b)
	ctx := context.Background()
	for b.Loop() {
		out, err := Diagnose{}.Run(ctx, env, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := json.Marshal(out.Data); err != nil {
			b.Fatal(err)
		}
	}
}
