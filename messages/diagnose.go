package messages

import (
	"encoding/json"
	"fmt"
	"time"
)

// Payloads of diagnosis: the diagnose task's arguments and output (Task.Args,
// Result.Output), and the result `controller diagnose` stores in the object
// store bucket DiagnosesBucket. diagnostics/collect fills Sections on the
// node; diagnostics analyses them into a Diagnosis.

// Finding severities, lowest first.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// DiagnoseArgs are the diagnose task's arguments. V may be left out (see
// VerifyArgs).
type DiagnoseArgs struct {
	V int `json:"v,omitempty"`
	// Collectors to run (system, components, logs, config); empty means all.
	Collectors []string `json:"collectors,omitempty"`
}

// DiagnoseOutput is the diagnose task's output: the node's sections, already
// redacted on the node, and the findings the node can make on its own.
type DiagnoseOutput struct {
	V          int       `json:"v"`
	Node       string    `json:"node"`
	DurationMS int64     `json:"duration_ms"`
	Sections   []Section `json:"sections"`
	Findings   []Finding `json:"findings"`
	RulesError string    `json:"rules_error,omitempty"`
	Trimmed    string    `json:"trimmed,omitempty"` // what was cut to fit the message limit
}

// Section is what one diagnose collector found on a node.
type Section struct {
	Name       string `json:"name"`
	DurationMS int64  `json:"duration_ms"`
	// Error is set when the collector failed as a whole.
	Error string `json:"error,omitempty"`
	// Metrics are numbers rules can compare against thresholds, by name
	// (memory_percent, tailscaled_up, tls_cert_days_left_min, ...).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Lines are log lines that matched a rule pattern, already redacted.
	Lines []LogLine `json:"lines,omitempty"`
	// Notes explain what was skipped or could not be read, and why.
	Notes []string `json:"notes,omitempty"`
	// Data is the collector's detail for people and bundles, a JSON value
	// whose shape the collector defines (diagnostics/collect: SystemData,
	// []Component, []LogSource, ConfigData). Rules never read it.
	Data json.RawMessage `json:"data,omitempty"`
}

// LogLine is one matching log line and where it came from.
type LogLine struct {
	Source string `json:"source"` // file path or "journal:UNIT"
	Text   string `json:"text"`
}

// Finding is one problem, reported once however many nodes show it. A root
// finding carries the findings it explains as Symptoms.
type Finding struct {
	ID         string   `json:"id"`
	Severity   string   `json:"severity"` // info | warning | critical
	Layer      string   `json:"layer"`
	Title      string   `json:"title"`
	Evidence   []string `json:"evidence,omitempty"` // "NODE: what fired the rule", redacted
	Suggestion string   `json:"suggestion"`
	Command    string   `json:"command,omitempty"`
	Docs       string   `json:"docs"`
	Threshold  string   `json:"threshold,omitempty"`
	// Nodes are where this finding was observed.
	Nodes []string `json:"nodes"`
	// Affected are the nodes with this finding or any of its symptoms
	// (roots only).
	Affected []string `json:"affected,omitempty"`
	// Symptoms are findings this one explains (roots only).
	Symptoms []Finding `json:"symptoms,omitempty"`
}

// Passed is a check that passed on every node that ran it.
type Passed struct {
	Layer string `json:"layer"`
	Check string `json:"check"`
	Title string `json:"title"`
	Nodes int    `json:"nodes"`
}

// Diagnosis is the outcome of an analysis.
type Diagnosis struct {
	Timestamp time.Time `json:"timestamp"`
	// Status is healthy (no warning or critical finding), degraded
	// (warnings only) or unhealthy (a critical finding).
	Status   string    `json:"status"`
	Nodes    []string  `json:"nodes"`
	Findings []Finding `json:"findings"` // root causes, by layer then severity
	Healthy  []Passed  `json:"healthy,omitempty"`
}

// DiagnoseResult is what `controller diagnose` produces and stores (object
// store DiagnosesBucket, named by DiagnoseReply.ResultID): the analysis, the
// verification report it was made from, and what each node's collectors
// returned (already redacted on the node), for bundles.
type DiagnoseResult struct {
	V         int                  `json:"v"`
	Diagnosis Diagnosis            `json:"diagnosis"`
	Report    *Report              `json:"report,omitempty"`
	Sections  map[string][]Section `json:"sections,omitempty"`
	// Notes say what could not be collected (node offline, rules file
	// refused, output trimmed).
	Notes []string `json:"notes,omitempty"`
}

// maxFindingDepth bounds how deeply symptoms nest (a root and its symptoms
// are two levels; analysis never makes more).
const maxFindingDepth = 4

// validCollectorName checks a diagnose collector's name (system,
// components, logs, config: lower_snake_case like check names).
func validCollectorName(s string) error {
	if ValidCheckName(s) != nil {
		return fmt.Errorf("collector name %q: want lower_snake_case, 1 to 63 characters, starting with a letter", s)
	}
	return nil
}

func (a *DiagnoseArgs) Validate() error {
	if err := checkArgsVersion(a.V); err != nil {
		return err
	}
	return validNames("collectors", a.Collectors, validCollectorName)
}

func (o *DiagnoseOutput) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if o.Node != "" {
		if err := ValidNodeName(o.Node); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	if o.DurationMS < 0 {
		return fmt.Errorf("duration_ms: negative")
	}
	if err := validSections("sections", o.Sections); err != nil {
		return err
	}
	return validFindings("findings", o.Findings, 0)
}

func (r *DiagnoseResult) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := r.Diagnosis.validate(); err != nil {
		return fmt.Errorf("diagnosis: %w", err)
	}
	if r.Report != nil {
		if err := r.Report.Validate(); err != nil {
			return fmt.Errorf("report: %w", err)
		}
	}
	for node, ss := range r.Sections {
		if err := ValidNodeName(node); err != nil {
			return fmt.Errorf("sections: node: %w", err)
		}
		if err := validSections("sections["+node+"]", ss); err != nil {
			return err
		}
	}
	return nil
}

func (d *Diagnosis) validate() error {
	switch d.Status {
	case Healthy, Degraded, Unhealthy, Unknown:
	default:
		return fmt.Errorf("status: %q is not one of healthy, degraded, unhealthy, unknown", d.Status)
	}
	return validFindings("findings", d.Findings, 0)
}

func validSections(field string, ss []Section) error {
	for i := range ss {
		if ValidCheckName(ss[i].Name) != nil {
			return fmt.Errorf("%s[%d]: name: %q is not a collector name", field, i, ss[i].Name)
		}
		if ss[i].DurationMS < 0 {
			return fmt.Errorf("%s[%d]: duration_ms: negative", field, i)
		}
	}
	return nil
}

func validFindings(field string, fs []Finding, depth int) error {
	if depth >= maxFindingDepth && len(fs) > 0 {
		return fmt.Errorf("%s: symptoms nested more than %d deep", field, maxFindingDepth)
	}
	for i := range fs {
		f := &fs[i]
		at := fmt.Sprintf("%s[%d]", field, i)
		if f.ID == "" {
			return fmt.Errorf("%s: id: missing", at)
		}
		switch f.Severity {
		case SeverityInfo, SeverityWarning, SeverityCritical:
		default:
			return fmt.Errorf("%s: severity: %q is not one of info, warning, critical", at, f.Severity)
		}
		if err := validFindings(at+".symptoms", f.Symptoms, depth+1); err != nil {
			return err
		}
	}
	return nil
}
