package messages

import (
	"encoding/json"
	"time"
)

// Node states in the fleet view.
const (
	StateOnline  = "online"
	StateStale   = "stale"
	StateOffline = "offline"
)

// StatusRequest asks for the fleet view, a page at a time: a fleet of
// thousands of nodes does not fit in one message.
type StatusRequest struct {
	V      int `json:"v"`
	Offset int `json:"offset,omitempty"`
	Limit  int `json:"limit,omitempty"` // default and maximum MaxPage
}

// MaxPage bounds the rows of one status page; MaxReportPage those of one
// task report page, which is bounded by bytes as well (ReportPage).
const (
	MaxPage       = 500
	MaxReportPage = 10000
)

// NodeStatus is one row of the fleet view.
type NodeStatus struct {
	Name         string            `json:"name"`
	Cluster      string            `json:"cluster"`
	Role         string            `json:"role"`
	Labels       map[string]string `json:"labels"`
	State        string            `json:"state"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	AgeMS        int64             `json:"age_ms"`
	AgentVersion string            `json:"agent_version"`
	Addresses    []string          `json:"addresses"`
	Running      []string          `json:"running,omitempty"`
	Facts        Facts             `json:"facts"`
	EnrolledAt   time.Time         `json:"enrolled_at"`
	// Layers is this node's status per layer in the last verification
	// (network, host, cluster, ...), and LastVerified when that was.
	Layers       map[string]string `json:"layers,omitempty"`
	LastVerified time.Time         `json:"last_verified,omitzero"`
	// Tailnet is the node's tailnet facts (also in Facts) when it reaches
	// the controller over the tailnet.
	Tailnet *TailnetFacts `json:"tailnet,omitempty"`
}

// StatusSummary counts nodes by state.
type StatusSummary struct {
	Online  int `json:"online"`
	Stale   int `json:"stale"`
	Offline int `json:"offline"`
}

// ClusterStatus is one cluster's line in the fleet view: its status per
// layer from the verifications that covered it (a verification of another
// cluster leaves it as it was), the worst of them, and when it was last
// verified. OverallStatus is "" while the cluster was never verified. Name
// "" holds the nodes without a cluster (shown as NoClusterName).
type ClusterStatus struct {
	Name          string            `json:"name"`
	OverallStatus string            `json:"overall_status,omitempty"`
	Layers        map[string]string `json:"layers,omitempty"` // layer name -> status
	LastVerified  time.Time         `json:"last_verified,omitzero"`
}

// StatusReply is the fleet view.
type StatusReply struct {
	V     int          `json:"v"`
	Nodes []NodeStatus `json:"nodes"`
	// Clusters has a line for each cluster of the nodes on this page (a
	// cluster whose nodes span pages is on each of them; the client keeps
	// one).
	Clusters          []ClusterStatus `json:"clusters,omitempty"`
	Summary           StatusSummary   `json:"summary"`
	HeartbeatInterval string          `json:"heartbeat_interval"`
	// Total is the number of nodes; NextOffset the offset of the next page
	// (0 when this is the last one). Summary always counts the whole fleet.
	Total      int `json:"total,omitempty"`
	NextOffset int `json:"next_offset,omitempty"`
}

// RunRequest issues a task to the nodes a selector picks.
type RunRequest struct {
	V      int             `json:"v"`
	Target string          `json:"target"`
	Kind   string          `json:"kind"`
	Args   json.RawMessage `json:"args,omitempty"`
	// Timeout is how long nodes have, as a Go duration; default
	// DefaultRunTimeout, at most MaxRunTimeout.
	Timeout string `json:"timeout,omitempty"`
	// SkipOffline settles nodes that are offline at issue time at once as
	// unknown/offline instead of waiting for them until the deadline.
	SkipOffline bool `json:"skip_offline,omitempty"`
}

// RunReply names the task and the nodes it went to.
type RunReply struct {
	V        int       `json:"v"`
	TaskID   string    `json:"task_id"`
	Nodes    []string  `json:"nodes"`
	Deadline time.Time `json:"deadline"`
}

// TaskWaitRequest waits up to Wait for a task to finish, then reports it.
type TaskWaitRequest struct {
	V      int    `json:"v"`
	TaskID string `json:"task_id"`
	Wait   string `json:"wait,omitempty"` // Go duration, at most MaxTaskWait
	// Offset and Limit page the result rows (default and maximum
	// MaxReportPage; a page is also bounded by bytes, see ReportPage).
	Offset int `json:"offset,omitempty"`
	Limit  int `json:"limit,omitempty"`
}

// NodeResult is one row of a task report.
type NodeResult struct {
	Node       string          `json:"node"`
	Pending    bool            `json:"pending,omitempty"`
	Outcome    Outcome         `json:"outcome"`
	Reason     string          `json:"reason"`
	DurationMS int64           `json:"duration_ms"`
	Output     json.RawMessage `json:"output"`
}

// TaskReport is a task with one row per targeted node. Rows whose outcome is
// not yet known have Outcome "" and Pending true.
type TaskReport struct {
	V        int          `json:"v"`
	TaskID   string       `json:"task_id"`
	Kind     string       `json:"kind"`
	Target   string       `json:"target"`
	IssuedAt time.Time    `json:"issued_at"`
	Deadline time.Time    `json:"deadline"`
	Done     bool         `json:"done"`
	Results  []NodeResult `json:"results"`
	// Total is the number of targeted nodes; NextOffset the offset of the
	// next page of Results (0 when this is the last one).
	Total      int `json:"total,omitempty"`
	NextOffset int `json:"next_offset,omitempty"`
}

// TokenCreateRequest asks for a join token.
type TokenCreateRequest struct {
	V        int    `json:"v"`
	TTL      string `json:"ttl,omitempty"` // Go duration, default DefaultTokenTTL
	Reusable bool   `json:"reusable,omitempty"`
	// Scope limits what a node enrolling with the token may be.
	Scope TokenScope `json:"scope,omitzero"`
	// URLs, when set, are the URLs the token carries for agents to dial
	// instead of the controllers' own (a site's relay, docs/HA.md).
	URLs []string `json:"urls,omitempty"`
}

// TokenScope limits the claims of the nodes a join token enrolls: a node
// must ask for this cluster (or none, and gets it), one of these roles (or
// none, and gets the only one when there is one), and labels that agree
// with these (which it gets in any case). Empty fields limit nothing.
type TokenScope struct {
	Cluster string            `json:"cluster,omitempty"`
	Roles   []string          `json:"roles,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// TokenCreateReply carries the token; it is shown once and stored only hashed.
type TokenCreateReply struct {
	V         int        `json:"v"`
	Token     string     `json:"token"`
	ExpiresAt time.Time  `json:"expires_at"`
	Reusable  bool       `json:"reusable"`
	Scope     TokenScope `json:"scope,omitzero"`
}

// NodesRemoveRequest revokes a node.
type NodesRemoveRequest struct {
	V    int    `json:"v"`
	Name string `json:"name"`
}

// NodesSetRequest changes a node's claims (the operator's alone to
// change). Nil fields are left as they are; Labels are set (merged),
// UnsetLabels removed.
type NodesSetRequest struct {
	V           int               `json:"v"`
	Name        string            `json:"name"`
	Cluster     *string           `json:"cluster,omitempty"`
	Role        *string           `json:"role,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	UnsetLabels []string          `json:"unset_labels,omitempty"`
}

// NodesSetReply is the node's claims after the change.
type NodesSetReply struct {
	V    int        `json:"v"`
	Name string     `json:"name"`
	Node NodeClaims `json:"node"`
}

// NodesRemoveReply confirms it.
type NodesRemoveReply struct {
	V            int    `json:"v"`
	Name         string `json:"name"`
	Disconnected int    `json:"disconnected"`
}

// VerifyRequest runs a verification sweep now.
type VerifyRequest struct {
	V       int      `json:"v"`
	Node    string   `json:"node,omitempty"`    // only this node (and its cluster's checks)
	Cluster string   `json:"cluster,omitempty"` // only this cluster
	Layers  []string `json:"layers,omitempty"`  // only these layers
	Timeout string   `json:"timeout,omitempty"` // per task, Go duration; default DefaultVerifyTimeout, at most MaxVerifyTimeout
	// Checks, when set, runs only these checks (and what they depend on)
	// of the selected layers: setup verifies a layer by the checks a
	// spec's require.checks names.
	Checks []string `json:"checks,omitempty"`
}

// VerifyReply names the stored report. Reports can be larger than one
// message, so the report itself is read from the object store bucket
// ReportsBucket under ReportID.
type VerifyReply struct {
	V             int    `json:"v"`
	ReportID      string `json:"report_id"`
	OverallStatus string `json:"overall_status"`
}

// ReportLastRequest asks for the id of the newest report.
type ReportLastRequest struct {
	V int `json:"v"`
}

// ReportsBucket is the JetStream object store bucket holding reports.
const ReportsBucket = "mgn_reports"

// DiagnoseRequest runs verification plus the diagnose collectors and
// analyses the result. Give Node, Cluster, or neither (the whole fleet).
type DiagnoseRequest struct {
	V       int    `json:"v"`
	Node    string `json:"node,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

// DiagnoseReply names the stored result (object store bucket
// DiagnosesBucket) and its overall status.
type DiagnoseReply struct {
	V        int    `json:"v"`
	ResultID string `json:"result_id"`
	Status   string `json:"status"`
}

// DiagnosesBucket is the JetStream object store bucket of diagnoses.
const DiagnosesBucket = "mgn_diagnoses"
