package messages

import (
	"encoding/json"
	"fmt"
	"slices"
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
	// CheckNotConfigured: the check has nothing to look at because a
	// setting it needs is unset (Message names the setting). Never a
	// pass: a layer whose checks are all not configured is unknown, and a
	// check the cluster requires (METAGN_REQUIRE_CHECKS/_LAYERS, the fleet
	// spec's require block) fails instead.
	CheckNotConfigured = "not_configured"
)

// CheckStatuses lists every check status, in the order reports and metrics
// show them.
var CheckStatuses = []string{CheckPass, CheckWarn, CheckFail, CheckSkipped, CheckUnknown, CheckNotConfigured}

// ValidCheckStatus reports whether s is a check status.
func ValidCheckStatus(s string) bool {
	switch s {
	case CheckPass, CheckWarn, CheckFail, CheckSkipped, CheckUnknown, CheckNotConfigured:
		return true
	}
	return false
}

// NotConfiguredPrefix starts the message of a not_configured check.
const NotConfiguredPrefix = "not configured: "

// ObservedNotConfigured is the Observed value of a not_configured check:
// the settings that would configure it.
type ObservedNotConfigured struct {
	Configured *bool    `json:"configured"` // false
	Settings   []string `json:"settings,omitempty"`
}

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

// LayerStack is GuildNet's layers bottom up: each runs on the ones before it.
var LayerStack = []string{LayerNetwork, LayerCluster, LayerDatabase, LayerApplication}

// CanExplain reports whether a fault in layer can explain a failure in
// one of touched: the same layer, a layer below it in LayerStack, or the
// host, which everything runs on. A custom layer explains only itself.
func CanExplain(layer string, touched []string) bool {
	if layer == LayerHost || slices.Contains(touched, layer) {
		return true
	}
	li := slices.Index(LayerStack, layer)
	if li < 0 {
		return false
	}
	for _, t := range touched {
		if slices.Index(LayerStack, t) > li {
			return true
		}
	}
	return false
}

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

// LayerStatus is a layer's status without its checks.
type LayerStatus struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"` // set when Status is not healthy for a reason (unknown, not verified)
}

// ClusterReport is one cluster's part of a report: the status of each
// layer judged from that cluster's checks alone (its nodes' node checks
// and its cluster checks), and the worst of them. The checks themselves
// are in Report.Layers, each naming its cluster, so a report does not
// carry them twice. Nodes without a cluster are under Name "" (the fleet
// view shows it as "(no cluster)").
type ClusterReport struct {
	Name          string        `json:"name"`
	OverallStatus string        `json:"overall_status"`
	Layers        []LayerStatus `json:"layers"`
}

// NoClusterName is how people are shown the cluster "" (nodes enrolled
// without one); on the wire it stays "".
const NoClusterName = "(no cluster)"

// Report is the verification report: timestamp, overall status and layers
// with their checks, extended with per-node status, durations, observed values and blocked_by.
// OverallStatus and Layers are the fleet roll-up over every cluster the
// verification covered; Clusters has the same per cluster.
type Report struct {
	V             int             `json:"v"`
	Timestamp     time.Time       `json:"timestamp"`
	OverallStatus string          `json:"overall_status"`
	DurationMS    int64           `json:"duration_ms"`
	Layers        []LayerReport   `json:"layers"`
	Clusters      []ClusterReport `json:"clusters"`
	Nodes         []NodeReport    `json:"nodes"`
}

// Bounds of the per-cluster parts of reports and of the fleet view.
const (
	// MaxClusters bounds the clusters one report or status page lists.
	MaxClusters = 1 << 14
	// MaxClusterLayers bounds the layers of one cluster (the built-in five
	// and custom ones); the controller keeps no more per cluster.
	MaxClusterLayers = 64
	// MaxStatusReason bounds LayerStatus.Reason (report.Build clips it).
	MaxStatusReason = 4096
)

func (r *Report) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Clusters) > MaxClusters {
		return fmt.Errorf("clusters: %d entries, at most %d", len(r.Clusters), MaxClusters)
	}
	seen := make(map[string]bool, len(r.Clusters))
	for i := range r.Clusters {
		c := &r.Clusters[i]
		if seen[c.Name] {
			return fmt.Errorf("clusters[%d]: %q listed twice", i, c.Name)
		}
		seen[c.Name] = true
		if err := c.validate(); err != nil {
			return fmt.Errorf("clusters[%d]: %w", i, err)
		}
	}
	return nil
}

func (c *ClusterReport) validate() error {
	if err := optionalName("name", c.Name, ValidClusterName); err != nil {
		return err
	}
	if err := validLayerStatus("overall_status", c.OverallStatus); err != nil {
		return err
	}
	if len(c.Layers) > MaxClusterLayers {
		return fmt.Errorf("layers: %d entries, at most %d", len(c.Layers), MaxClusterLayers)
	}
	seen := make(map[string]bool, len(c.Layers))
	for i, l := range c.Layers {
		if l.Name == "" || len(l.Name) > MaxNameLen || seen[l.Name] {
			return fmt.Errorf("layers[%d]: name %q is empty, longer than %d bytes or listed twice", i, l.Name, MaxNameLen)
		}
		seen[l.Name] = true
		if err := validLayerStatus(fmt.Sprintf("layers[%d].status", i), l.Status); err != nil {
			return err
		}
		if err := boundedString(fmt.Sprintf("layers[%d].reason", i), l.Reason, MaxStatusReason); err != nil {
			return err
		}
	}
	return nil
}

// validLayerStatus checks a layer or overall status.
func validLayerStatus(field, s string) error {
	switch s {
	case Healthy, Degraded, Unhealthy, Unknown:
		return nil
	}
	return fmt.Errorf("%s: %q is not one of healthy, degraded, unhealthy, unknown", field, s)
}
