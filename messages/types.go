package messages

import (
	"encoding/json"
	"time"
)

// Version is the only payload version this build speaks.
const Version = 1

// Outcome is the result of one task on one node.
type Outcome string

const (
	OutcomeOK      Outcome = "ok"
	OutcomeWarn    Outcome = "warn"
	OutcomeFail    Outcome = "fail"
	OutcomeUnknown Outcome = "unknown"
)

// Valid reports whether o is one of the four outcomes.
func (o Outcome) Valid() bool {
	switch o {
	case OutcomeOK, OutcomeWarn, OutcomeFail, OutcomeUnknown:
		return true
	}
	return false
}

// Reasons an outcome is unknown. An unknown outcome always carries one.
const (
	ReasonOffline  = "offline"   // the node was offline (or removed) and the task did not wait for it, or it went away mid-task
	ReasonTimedOut = "timed_out" // the node started the task but no result came by the deadline
	ReasonRejected = "rejected"  // the node refused the task (unknown kind, bad version or args)
	ReasonExpired  = "expired"   // the deadline passed before the node could start the task
)

// Task is one unit of work sent to one or more nodes.
type Task struct {
	V        int             `json:"v"`
	ID       string          `json:"id"`
	Kind     string          `json:"kind"`
	Target   string          `json:"target"` // the selector it was issued with, for the record
	Args     json.RawMessage `json:"args,omitempty"`
	Deadline time.Time       `json:"deadline"`
	IssuedAt time.Time       `json:"issued_at"`
	// Sealed are secret inputs of a setup step (a Talos machine config, a
	// kubeconfig): a JSON object of strings (see ValidateSealed). The
	// controller never stores them: it strips them before a task is
	// written to JetStream and keeps them in memory while the task is open.
	Sealed json.RawMessage `json:"sealed,omitempty"`
}

// Ack tells the controller that a node received a task and either started
// it (Started) or refused it (the refusal follows as a Result).
type Ack struct {
	V       int    `json:"v"`
	TaskID  string `json:"task_id"`
	Started bool   `json:"started"`
}

// Result is one node's outcome for one task.
type Result struct {
	V          int             `json:"v"`
	TaskID     string          `json:"task_id"`
	Node       string          `json:"node"` // informational: the subject is authoritative
	Outcome    Outcome         `json:"outcome"`
	Reason     string          `json:"reason,omitempty"`
	StartedAt  time.Time       `json:"started_at,omitzero"`
	DurationMS int64           `json:"duration_ms"`
	Output     json.RawMessage `json:"output,omitempty"`
	// Sealed are secret outputs of a setup step (a kubeconfig fetched
	// after bootstrap), as Task.Sealed: the controller strips them before
	// the results stream and hands them to the setup runner in memory.
	Sealed json.RawMessage `json:"sealed,omitempty"`
}

// Facts describe a node. Agents send them with every heartbeat.
type Facts struct {
	Hostname     string   `json:"hostname"`
	OS           string   `json:"os"`
	Kernel       string   `json:"kernel,omitempty"`
	Arch         string   `json:"arch"`
	CPUs         int      `json:"cpus"`
	MemoryBytes  uint64   `json:"memory_bytes,omitempty"`
	AgentVersion string   `json:"agent_version"`
	Addresses    []string `json:"addresses,omitempty"`
	TailnetIPs   []string `json:"tailnet_ips,omitempty"`
	BootTime     int64    `json:"boot_time,omitempty"`
	// Tailnet is set when the agent reaches the controller over the tailnet.
	Tailnet *TailnetFacts `json:"tailnet,omitempty"`
}

// NodeClaims are what a node is in the fleet: its cluster, role and
// labels, which decide which tasks and checks it gets. They are fixed at
// enrollment (within the join token's scope) and changed only by the
// operator (nodes.set). A node learns them from EnrollReply and SyncReply;
// Rev grows with every change so a sync carries them only when the node's
// copy is old.
type NodeClaims struct {
	Rev     uint64            `json:"rev"`
	Cluster string            `json:"cluster,omitempty"`
	Role    string            `json:"role,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Heartbeat is an agent's periodic sign of life.
type Heartbeat struct {
	V    int       `json:"v"`
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Cluster, Role and Labels are not sent by current agents: a node's
	// claims are the controller's (NodeClaims). A heartbeat that carries
	// any that differ from the node's enrolled ones is refused.
	Cluster string            `json:"cluster,omitempty"`
	Role    string            `json:"role,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Running []string          `json:"running,omitempty"` // ids of tasks in progress
	// Facts are sent with the first heartbeat after a connect and then about
	// once a minute; nil means "unchanged".
	Facts *Facts `json:"facts,omitempty"`
}

// EnrollRequest exchanges a join token (sent in the connection's
// credentials, not here) for a node identity: the public NKey in the
// subject becomes the node's key. Cluster, Role and Labels are what the
// node asks to be; a token scoped to a cluster, roles or labels refuses
// anything outside its scope and fills in what is left empty.
type EnrollRequest struct {
	V       int               `json:"v"`
	Name    string            `json:"name"`
	Cluster string            `json:"cluster,omitempty"`
	Role    string            `json:"role,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Facts   Facts             `json:"facts"`
}

// EnrollReply confirms an enrollment.
type EnrollReply struct {
	V                 int    `json:"v"`
	Name              string `json:"name"`
	HeartbeatInterval string `json:"heartbeat_interval"`
	MaxMessageBytes   int    `json:"max_message_bytes"`
	// Node is what the node was enrolled as.
	Node *NodeClaims `json:"node,omitempty"`
}

// SyncRequest asks for the tasks this node owes an outcome for.
type SyncRequest struct {
	V int `json:"v"`
	// ClaimsRev is the NodeClaims.Rev the node has (0: none); the reply
	// carries the node's claims when they are newer.
	ClaimsRev uint64 `json:"claims_rev,omitempty"`
}

// SyncReply carries them: every open task the node has no outcome for,
// including those past their deadline that are not settled yet. The
// controller answers once every outcome it had received is stored, so a
// result the node sent before asking whose task is not listed is settled
// (stored, or the task decided without it): the node forgets it. Results
// of listed tasks it sends again; listed tasks it has not seen it runs.
type SyncReply struct {
	V     int    `json:"v"`
	Tasks []Task `json:"tasks"`
	// HeartbeatInterval is the interval the controller expects (Go duration).
	HeartbeatInterval string `json:"heartbeat_interval"`
	// Node is set when the node's claims changed since SyncRequest.ClaimsRev.
	Node *NodeClaims `json:"node,omitempty"`
}

// ResultBatch is how the controller stores results: one message of the
// MGN_RESULTS stream holds the outcomes of one or more nodes for one task.
// For each node the first stored outcome wins.
type ResultBatch struct {
	V       int      `json:"v"`
	TaskID  string   `json:"task_id"`
	Results []Result `json:"results"`
}

// ErrorReply is the reply to any request that was refused.
type ErrorReply struct {
	V     int    `json:"v"`
	Error string `json:"error"`
	Code  string `json:"code"` // machine-readable: bad_request, too_large, bad_version, unknown_kind, not_found, forbidden, internal, unavailable
}

// Error codes used in ErrorReply.Code.
const (
	CodeBadRequest  = "bad_request"
	CodeTooLarge    = "too_large"
	CodeBadVersion  = "bad_version"
	CodeUnknownKind = "unknown_kind"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict"
	CodeInternal    = "internal"
	// CodeUnavailable: the controller cannot answer this now (busy, a
	// failover, a peer's notice of the attempt not arrived yet) and
	// nothing is wrong with the request: ask again later, with backoff.
	CodeUnavailable = "unavailable"
)

// Retryable reports whether a refusal with code may succeed when asked
// again unchanged: unavailable, and internal (a store write that timed
// out; older controllers also said "busy, retry" with it). Every other
// code is about the request itself (a spent token, a taken name, a scope
// it breaks) and asking again cannot help.
func Retryable(code string) bool { return code == CodeUnavailable || code == CodeInternal }

// Event is a state change the controller announces on mgn.evt.KIND.
type Event struct {
	V    int       `json:"v"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"` // node_state, layer_state
	Node string    `json:"node,omitempty"`
	// Cluster is the cluster whose layer changed (layer_state); "" for
	// nodes without a cluster.
	Cluster string `json:"cluster,omitempty"`
	Layer   string `json:"layer,omitempty"`
	From    string `json:"from,omitempty"`
	To      string `json:"to,omitempty"`
}
