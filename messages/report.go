package messages

import (
	"encoding/json"
	"strings"
	"time"
)

// Check statuses, as a check reports them.
const (
	CheckPass    = "pass"
	CheckWarn    = "warn"
	CheckFail    = "fail"
	CheckSkipped = "skipped" // a dependency failed; BlockedBy names it
	CheckUnknown = "unknown" // could not be run (node offline, timed out); Message says why
)

// Layer statuses in a report.
const (
	Healthy   = "healthy"
	Degraded  = "degraded"
	Unhealthy = "unhealthy"
	Unknown   = "unknown"
)

// Layer names. Custom checks may add their own.
const (
	LayerNetwork     = "network"
	LayerCluster     = "cluster"
	LayerDatabase    = "database"
	LayerApplication = "application"
	LayerHost        = "host"
)

// CheckResult is the outcome of one verification check on one node. It is
// what the agent's "verify" task returns (as a list) and what reports hold.
type CheckResult struct {
	Name       string          `json:"name"`
	Layer      string          `json:"layer"`
	Passed     bool            `json:"passed"`
	Status     string          `json:"status"`
	DurationMS int64           `json:"duration_ms"`
	Message    string          `json:"message"`
	Observed   json.RawMessage `json:"observed,omitempty"`
	Threshold  json.RawMessage `json:"threshold,omitempty"`
	Node       string          `json:"node"`
	Cluster    string          `json:"cluster,omitempty"`
	BlockedBy  string          `json:"blocked_by,omitempty"`
}

// Observed values with a meaning beyond one check: CheckResult.Observed of
// a check that passed because it does not apply on the node (its message
// starts with NotApplicablePrefix), and the value that replaces an Observed
// or Threshold too large to send.
type (
	ObservedNotApplicable struct {
		Applicable *bool `json:"applicable"` // false (a pointer, so that a value without it is told apart)
	}
	ObservedTruncated struct {
		Truncated bool `json:"truncated"` // always true
		Bytes     int  `json:"bytes"`     // the size of the value it replaces
	}
)

// NotApplicableObserved is the Observed value of a check that does not apply.
func NotApplicableObserved() ObservedNotApplicable {
	no := false
	return ObservedNotApplicable{Applicable: &no}
}

// NotApplicablePrefix starts the message of a check that does not apply.
const NotApplicablePrefix = "not applicable: "

// NotApplicable reports whether c passed only because it does not apply on
// its node.
func (c *CheckResult) NotApplicable() bool {
	if strings.HasPrefix(c.Message, "not applicable") {
		return true
	}
	var o ObservedNotApplicable
	return json.Unmarshal(c.Observed, &o) == nil && o.Applicable != nil && !*o.Applicable
}

// LayerReport groups the checks of one layer.
type LayerReport struct {
	Name   string        `json:"name"`
	Status string        `json:"status"`
	Reason string        `json:"reason,omitempty"` // set when Status is unknown
	Checks []CheckResult `json:"checks"`
}

// NodeReport is one node's part of a report.
type NodeReport struct {
	Name    string            `json:"name"`
	Cluster string            `json:"cluster"`
	Status  string            `json:"status"`
	Reason  string            `json:"reason,omitempty"`
	Layers  map[string]string `json:"layers"` // layer name -> status
}

// Report is the verification report: timestamp, overall status and layers
// with their checks, extended with per-node status, durations, observed values and blocked_by.
type Report struct {
	V             int           `json:"v"`
	Timestamp     time.Time     `json:"timestamp"`
	OverallStatus string        `json:"overall_status"`
	DurationMS    int64         `json:"duration_ms"`
	Layers        []LayerReport `json:"layers"`
	Nodes         []NodeReport  `json:"nodes"`
}

func (r *Report) Validate() error { return checkVersion(r.V) }
