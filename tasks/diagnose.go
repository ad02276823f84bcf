package tasks

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/messages"
)

// Diagnose runs the diagnostics collectors on the node (system, components,
// logs, config; see diagnostics/collect) and returns their sections, already
// redacted on the node, with the findings the node can make on its own. The
// controller combines these with the verification report across nodes.
//
// Args (optional): {"collectors": ["system", "logs"]} to run a subset.
// Settings: METAGN_RULES_FILE (extra rules; when it is bad the built-in
// rules are used and rules_error says why), plus the collectors' own.
// The outcome is warn when a finding is warning or critical, else ok.
type Diagnose struct{}

func (Diagnose) Kind() string { return "diagnose" }

// DiagnoseArgs are the diagnose task's arguments.
type DiagnoseArgs struct {
	Collectors []string `json:"collectors,omitempty"`
}

// DiagnoseOutput is the diagnose task's output.
type DiagnoseOutput struct {
	Node       string                `json:"node"`
	DurationMS int64                 `json:"duration_ms"`
	Sections   []collect.Section     `json:"sections"`
	Findings   []diagnostics.Finding `json:"findings"`
	RulesError string                `json:"rules_error,omitempty"`
	Trimmed    string                `json:"trimmed,omitempty"` // what was cut to fit the message limit
}

// Limits of one diagnose run.
const (
	// DiagnoseTimeout bounds a whole scan (the target is under 1 s).
	DiagnoseTimeout = 5 * time.Second
	// diagnoseMaxOutput keeps the output well under the 1 MiB message limit.
	diagnoseMaxOutput = messages.DefaultMaxMessageBytes * 3 / 4
)

func (Diagnose) Run(ctx context.Context, env *Env, args json.RawMessage) (Output, error) {
	start := time.Now()
	var a DiagnoseArgs
	if err := DecodeArgs(args, &a); err != nil {
		return Output{}, err
	}
	cs := collect.Default()
	if len(a.Collectors) > 0 {
		var names []string
		for _, c := range cs {
			names = append(names, c.Name())
		}
		for _, n := range a.Collectors {
			if !slices.Contains(names, n) {
				return Output{}, BadArgs("collectors: %q is not one of %s", n, strings.Join(names, ", "))
			}
		}
		cs = slices.DeleteFunc(cs, func(c collect.Collector) bool { return !slices.Contains(a.Collectors, c.Name()) })
	}

	out := DiagnoseOutput{Node: env.Node}
	kb, err := rules.Load(env.Settings.Get("METAGN_RULES_FILE", ""))
	if err != nil {
		out.RulesError = err.Error()
		if kb, err = rules.Builtin(); err != nil {
			return Output{}, fmt.Errorf("diagnose: built-in rules: %w", err)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, DiagnoseTimeout)
	defer cancel()
	cenv := collect.NewEnv(env.Node, env.Settings)
	cenv.LogPatterns = kb.LogPatterns()
	out.Sections = collect.Run(ctx, cenv, cs)
	d := diagnostics.Analyze(kb, []diagnostics.NodeInput{{Name: env.Node, Cluster: env.Cluster, Role: env.Role, Sections: out.Sections}}, time.Now())
	out.Findings = d.Findings
	out.Trimmed = fitOutput(&out, diagnoseMaxOutput)
	out.DurationMS = time.Since(start).Milliseconds()

	o := Output{Outcome: messages.OutcomeOK, Data: out}
	crit, warn := 0, 0
	for _, f := range d.Findings {
		switch f.Severity {
		case rules.Critical:
			crit++
		case rules.Warning:
			warn++
		}
	}
	o.Reason = fmt.Sprintf("%d findings (%d critical, %d warning)", len(d.Findings), crit, warn)
	if crit+warn > 0 {
		o.Outcome = messages.OutcomeWarn
	}
	if out.RulesError != "" {
		o.Outcome = messages.OutcomeWarn
		o.Reason += "; rules file refused, built-in rules used: " + out.RulesError
	}
	return o, nil
}

// fitOutput trims the logs section until the output encodes within max
// bytes: first the log tails, then matching lines beyond five per source.
// It returns what it cut, or "".
func fitOutput(out *DiagnoseOutput, max int) string {
	size := func() int {
		b, _ := json.Marshal(out)
		return len(b)
	}
	if size() <= max {
		return ""
	}
	var cut []string
	for i := range out.Sections {
		s := &out.Sections[i]
		srcs, ok := s.Data.([]collect.LogSource)
		if !ok {
			continue
		}
		for j := range srcs {
			srcs[j].Tail = nil
		}
		cut = append(cut, "log tails")
		if size() <= max {
			break
		}
		for j := range srcs {
			if len(srcs[j].Matches) > 5 {
				srcs[j].Dropped += len(srcs[j].Matches) - 5
				srcs[j].Matches = srcs[j].Matches[:5]
			}
		}
		if len(s.Lines) > 5*len(srcs) {
			s.Lines = s.Lines[:5*len(srcs)]
		}
		cut = append(cut, "matching lines beyond 5 per source")
	}
	if size() > max {
		for i := range out.Sections {
			out.Sections[i].Data = nil
		}
		cut = append(cut, "section details")
	}
	return strings.Join(cut, ", ")
}
