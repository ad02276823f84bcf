package messages

import (
	"encoding/json"
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
