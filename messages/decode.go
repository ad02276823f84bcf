package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Error is a refusal with a machine-readable code (one of the Code*
// constants); receivers send it back as an ErrorReply.
type Error struct {
	Code string
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Err: fmt.Errorf(format, args...)}
}

// CodeOf returns the code of err, or CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Message is implemented by every payload type: Validate checks the version
// and the fields after JSON decoding.
type Message interface {
	Validate() error
}

// Decode parses one payload of type T, refusing it if it is larger than max
// bytes (max <= 0 means DefaultMaxMessageBytes), is not a single JSON object,
// or does not validate. Errors are *Error and name the offending field.
func Decode[T any, PT interface {
	*T
	Message
}](data []byte, max int) (T, error) {
	var v T
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	if len(data) > max {
		return v, Errorf(CodeTooLarge, "message of %d bytes exceeds the limit of %d bytes", len(data), max)
	}
	if f, ok := any(&v).(fastDecoder); ok && f.decodeFast(data) {
		// The plain form (see fast.go); validated below like any other.
	} else if err := json.Unmarshal(data, &v); err != nil { // refuses trailing data too
		if strings.Contains(err.Error(), "after top-level value") {
			return v, Errorf(CodeBadRequest, "decode %T: trailing data after the JSON object", v)
		}
		return v, Errorf(CodeBadRequest, "decode %T: %v", v, err)
	}
	return v, validate(PT(&v))
}

// DecodeTaskArgs parses a task's arguments (Task.Args) of type T: strictly,
// unlike Decode, since operators type them by hand (`controller run
// --args`) and a misspelt field must not be silently ignored. Empty or null
// arguments are the zero T, validated like any other. Errors are *Error
// with CodeBadRequest or CodeBadVersion and name the offending field.
func DecodeTaskArgs[T any, PT interface {
	*T
	Message
}](raw []byte, max int) (T, error) {
	var v T
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	if len(raw) > max {
		return v, Errorf(CodeTooLarge, "arguments of %d bytes exceed the limit of %d bytes", len(raw), max)
	}
	if len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			return v, Errorf(CodeBadRequest, "decode %T: %v", v, err)
		}
		if dec.More() {
			return v, Errorf(CodeBadRequest, "decode %T: trailing data after the JSON object", v)
		}
	}
	return v, validate(PT(&v))
}

// validate runs m's Validate, giving an error without a code
// CodeBadRequest and the payload's type.
func validate(m Message) error {
	err := m.Validate()
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return Errorf(CodeBadRequest, "%T: %v", m, err)
}

// Encode marshals a payload. It exists so both sides encode one way.
func Encode(m Message) ([]byte, error) {
	if f, ok := m.(fastEncoder); ok {
		if b, ok := f.appendJSON(make([]byte, 0, f.sizeHint())); ok {
			return b, nil
		}
	}
	return json.Marshal(m)
}

// MustEncode is Encode for values built in code, which cannot fail.
func MustEncode(m Message) []byte {
	b, err := Encode(m)
	if err != nil {
		// Only reachable with unsupported values (channels, NaN), which no
		// payload type holds.
		b, _ = json.Marshal(ErrorReply{V: Version, Code: CodeInternal, Error: err.Error()})
	}
	return b
}

func checkVersion(v int) error {
	if v != Version {
		return Errorf(CodeBadVersion, "unsupported message version v=%d (this build speaks v=%d)", v, Version)
	}
	return nil
}

const (
	maxLabels     = 64
	maxLabelBytes = 253
)

// ValidateLabels checks label keys and values.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("labels: %d labels, at most %d", len(labels), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if k == "" || len(k) > maxLabelBytes || len(labels[k]) > maxLabelBytes {
			return fmt.Errorf("labels: key %q or its value is empty or longer than %d bytes", k, maxLabelBytes)
		}
		if bytes.ContainsAny([]byte(k), "=, \t\n") || bytes.ContainsAny([]byte(labels[k]), ",\n") {
			return fmt.Errorf("labels: %q=%q contains '=', ',' or white space", k, labels[k])
		}
	}
	return nil
}

func optionalName(field, s string, valid func(string) error) error {
	if s == "" {
		return nil
	}
	if err := valid(s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func (t *Task) Validate() error {
	if err := checkVersion(t.V); err != nil {
		return err
	}
	if err := ValidTaskID(t.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if t.Kind == "" || len(t.Kind) > MaxNameLen {
		return fmt.Errorf("kind: want 1 to %d characters, got %q", MaxNameLen, t.Kind)
	}
	if t.Deadline.IsZero() {
		return fmt.Errorf("deadline: missing")
	}
	if t.IssuedAt.IsZero() {
		return fmt.Errorf("issued_at: missing")
	}
	if err := ValidateSealed(t.Sealed); err != nil {
		return fmt.Errorf("sealed: %w", err)
	}
	return nil
}

func (a *Ack) Validate() error {
	if err := checkVersion(a.V); err != nil {
		return err
	}
	if err := ValidTaskID(a.TaskID); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	return nil
}

func (r *Result) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := ValidTaskID(r.TaskID); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	if !r.Outcome.Valid() {
		return fmt.Errorf("outcome: %q is not one of ok, warn, fail, unknown", r.Outcome)
	}
	if r.Outcome == OutcomeUnknown && r.Reason == "" {
		return fmt.Errorf("reason: an unknown outcome needs a reason")
	}
	if err := boundedString("reason", r.Reason, MaxReasonLen); err != nil {
		return err
	}
	if r.DurationMS < 0 {
		return fmt.Errorf("duration_ms: negative")
	}
	if err := ValidateSealed(r.Sealed); err != nil {
		return fmt.Errorf("sealed: %w", err)
	}
	return nil
}

func (h *Heartbeat) Validate() error {
	if err := checkVersion(h.V); err != nil {
		return err
	}
	if err := optionalName("cluster", h.Cluster, ValidClusterName); err != nil {
		return err
	}
	if err := optionalName("role", h.Role, ValidRoleName); err != nil {
		return err
	}
	if err := ValidateLabels(h.Labels); err != nil {
		return err
	}
	if len(h.Running) > MaxRunning {
		return fmt.Errorf("running: %d tasks, at most %d", len(h.Running), MaxRunning)
	}
	for i, id := range h.Running {
		if err := ValidTaskID(id); err != nil {
			return fmt.Errorf("running[%d]: %w", i, err)
		}
	}
	if h.Facts == nil {
		return nil
	}
	return h.Facts.validate()
}

func (e *EnrollRequest) Validate() error {
	if err := checkVersion(e.V); err != nil {
		return err
	}
	if err := ValidNodeName(e.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := optionalName("cluster", e.Cluster, ValidClusterName); err != nil {
		return err
	}
	if err := optionalName("role", e.Role, ValidRoleName); err != nil {
		return err
	}
	if err := ValidateLabels(e.Labels); err != nil {
		return err
	}
	return e.Facts.validate()
}

func (e *EnrollReply) Validate() error {
	if err := checkVersion(e.V); err != nil {
		return err
	}
	if err := ValidNodeName(e.Name); err != nil {
		return err
	}
	return e.Node.validate()
}

func (s *SyncRequest) Validate() error { return checkVersion(s.V) }

func (b *ResultBatch) Validate() error {
	if err := checkVersion(b.V); err != nil {
		return err
	}
	if err := ValidTaskID(b.TaskID); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	for i := range b.Results {
		r := &b.Results[i]
		if err := r.Validate(); err != nil {
			return fmt.Errorf("results[%d]: %w", i, err)
		}
		if r.TaskID != b.TaskID {
			return fmt.Errorf("results[%d]: task_id %q in a batch for %q", i, r.TaskID, b.TaskID)
		}
		if err := ValidNodeName(r.Node); err != nil {
			return fmt.Errorf("results[%d]: node: %w", i, err)
		}
	}
	return nil
}

func (s *SyncReply) Validate() error {
	if err := checkVersion(s.V); err != nil {
		return err
	}
	for i := range s.Tasks {
		if err := s.Tasks[i].Validate(); err != nil {
			return fmt.Errorf("tasks[%d]: %w", i, err)
		}
	}
	return s.Node.validate()
}

func (e *ErrorReply) Validate() error { return checkVersion(e.V) }

func (e *Event) Validate() error {
	if err := checkVersion(e.V); err != nil {
		return err
	}
	return optionalName("cluster", e.Cluster, ValidClusterName)
}

func (s *StatusRequest) Validate() error {
	if err := checkVersion(s.V); err != nil {
		return err
	}
	return validPage(s.Offset, s.Limit)
}

func validPage(offset, limit int) error {
	if offset < 0 || limit < 0 {
		return fmt.Errorf("offset and limit: must not be negative")
	}
	return nil
}
func (s *StatusReply) Validate() error {
	if err := checkVersion(s.V); err != nil {
		return err
	}
	if len(s.Clusters) > MaxClusters {
		return fmt.Errorf("clusters: %d entries, at most %d", len(s.Clusters), MaxClusters)
	}
	for i := range s.Clusters {
		if err := s.Clusters[i].validate(); err != nil {
			return fmt.Errorf("clusters[%d]: %w", i, err)
		}
	}
	return nil
}

func (c *ClusterStatus) validate() error {
	if err := optionalName("name", c.Name, ValidClusterName); err != nil {
		return err
	}
	if c.OverallStatus != "" {
		if err := validLayerStatus("overall_status", c.OverallStatus); err != nil {
			return err
		}
	}
	if len(c.Layers) > MaxClusterLayers {
		return fmt.Errorf("layers: %d entries, at most %d", len(c.Layers), MaxClusterLayers)
	}
	for _, l := range slices.Sorted(maps.Keys(c.Layers)) {
		if l == "" || len(l) > MaxNameLen {
			return fmt.Errorf("layers: name %q is empty or longer than %d bytes", l, MaxNameLen)
		}
		if err := validLayerStatus("layers."+l, c.Layers[l]); err != nil {
			return err
		}
	}
	return nil
}

func (r *RunRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.Target == "" {
		return fmt.Errorf("target: missing (use all, a node name, cluster=C, role=R or k=v,...)")
	}
	if r.Kind == "" {
		return fmt.Errorf("kind: missing")
	}
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d <= 0 || d > MaxRunTimeout {
			return fmt.Errorf("timeout: %q is not a duration between 0 and %v", r.Timeout, MaxRunTimeout)
		}
	}
	return nil
}

func (r *RunReply) Validate() error { return checkVersion(r.V) }

func (r *TaskWaitRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := ValidTaskID(r.TaskID); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	if r.Wait != "" {
		if d, err := time.ParseDuration(r.Wait); err != nil || d < 0 || d > MaxTaskWait {
			return fmt.Errorf("wait: %q is not a duration between 0 and %v", r.Wait, MaxTaskWait)
		}
	}
	return validPage(r.Offset, r.Limit)
}

func (r *TaskReport) Validate() error { return checkVersion(r.V) }

func (r *TokenCreateRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.TTL != "" {
		if d, err := time.ParseDuration(r.TTL); err != nil || d <= 0 {
			return fmt.Errorf("ttl: %q is not a positive duration", r.TTL)
		}
	}
	if len(r.URLs) > 0 {
		if len(r.URLs) > MaxJoinTokenURLs {
			return fmt.Errorf("urls: %d, at most %d", len(r.URLs), MaxJoinTokenURLs)
		}
		for i, u := range r.URLs {
			if strings.Contains(u, ",") {
				return fmt.Errorf("urls[%d]: one URL per entry", i)
			}
			if _, err := ValidateControllerURLs(u); err != nil {
				return fmt.Errorf("urls[%d]: %w", i, err)
			}
		}
	}
	return r.Scope.validate()
}

// maxScopeRoles bounds TokenScope.Roles.
const maxScopeRoles = 16

func (s *TokenScope) validate() error {
	if err := optionalName("scope.cluster", s.Cluster, ValidClusterName); err != nil {
		return err
	}
	if len(s.Roles) > maxScopeRoles {
		return fmt.Errorf("scope.roles: %d roles, at most %d", len(s.Roles), maxScopeRoles)
	}
	for i, r := range s.Roles {
		if err := ValidRoleName(r); err != nil {
			return fmt.Errorf("scope.roles[%d]: %w", i, err)
		}
	}
	if err := ValidateLabels(s.Labels); err != nil {
		return fmt.Errorf("scope.%w", err)
	}
	return nil
}

func (r *NodesSetRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := ValidNodeName(r.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if r.Cluster != nil {
		if err := optionalName("cluster", *r.Cluster, ValidClusterName); err != nil {
			return err
		}
	}
	if r.Role != nil {
		if err := optionalName("role", *r.Role, ValidRoleName); err != nil {
			return err
		}
	}
	if err := ValidateLabels(r.Labels); err != nil {
		return err
	}
	if len(r.UnsetLabels) > maxLabels {
		return fmt.Errorf("unset_labels: %d keys, at most %d", len(r.UnsetLabels), maxLabels)
	}
	for i, k := range r.UnsetLabels {
		if k == "" || len(k) > maxLabelBytes {
			return fmt.Errorf("unset_labels[%d]: empty or longer than %d bytes", i, maxLabelBytes)
		}
		if _, ok := r.Labels[k]; ok {
			return fmt.Errorf("unset_labels[%d]: %q is also in labels", i, k)
		}
	}
	if r.Cluster == nil && r.Role == nil && len(r.Labels) == 0 && len(r.UnsetLabels) == 0 {
		return fmt.Errorf("nothing to change: give cluster, role, labels or unset_labels")
	}
	return nil
}

func (r *NodesSetReply) Validate() error { return checkVersion(r.V) }

func (c *NodeClaims) validate() error {
	if c == nil {
		return nil
	}
	if err := optionalName("node.cluster", c.Cluster, ValidClusterName); err != nil {
		return err
	}
	if err := optionalName("node.role", c.Role, ValidRoleName); err != nil {
		return err
	}
	if err := ValidateLabels(c.Labels); err != nil {
		return fmt.Errorf("node.%w", err)
	}
	return nil
}

func (r *TokenCreateReply) Validate() error { return checkVersion(r.V) }
func (r *NodesRemoveRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := ValidNodeName(r.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	return nil
}
func (r *NodesRemoveReply) Validate() error { return checkVersion(r.V) }

func (r *VerifyRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := validNodeOrCluster(r.Node, r.Cluster); err != nil {
		return err
	}
	for _, l := range r.Layers {
		if err := ValidLayerName(l); err != nil {
			return fmt.Errorf("layers: %w", err)
		}
	}
	if err := validNames("checks", r.Checks, ValidCheckName); err != nil {
		return err
	}
	if r.Timeout != "" {
		if d, err := time.ParseDuration(r.Timeout); err != nil || d <= 0 || d > MaxVerifyTimeout {
			return fmt.Errorf("timeout: %q is not a duration between 0 and %v", r.Timeout, MaxVerifyTimeout)
		}
	}
	return nil
}

func (r *VerifyReply) Validate() error       { return checkVersion(r.V) }
func (r *ReportLastRequest) Validate() error { return checkVersion(r.V) }

func (r *DiagnoseRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := validNodeOrCluster(r.Node, r.Cluster); err != nil {
		return err
	}
	return nil
}

func (r *DiagnoseReply) Validate() error { return checkVersion(r.V) }

// ReportPage picks the rows of one task report page: from offset, at most
// limit rows (default and maximum MaxReportPage) and, past the first row,
// no more than budget bytes of encoded rows. Rows are small for most tasks
// (a fan-out of a thousand pings is one page) and large for some (a
// verification's checks), so pages are bounded by bytes, not only rows.
func ReportPage(rows []NodeResult, offset, limit, budget int) (lo, hi, next int) {
	var scratch []byte
	return PageBySize(offset, limit, MaxReportPage, len(rows), budget, func(i int) int {
		enc, ok := rows[i].appendJSON(scratch[:0])
		scratch = enc
		if !ok {
			b, _ := json.Marshal(&rows[i])
			return len(b) + 1
		}
		return len(enc) + 1
	})
}

// PageBySize picks rows [lo, hi) of total for one reply page: from offset,
// at most limit rows (default and maximum maxRows) and, past the first row,
// no more than budget bytes as size measures each row. Every reply that
// lists rows a node can make large (facts, outputs) is paged this way, so
// no reply exceeds the message limit however large one node made its row.
func PageBySize(offset, limit, maxRows, total, budget int, size func(i int) int) (lo, hi, next int) {
	if limit <= 0 || limit > maxRows {
		limit = maxRows
	}
	lo = min(max(offset, 0), total)
	used := 0
	for hi = lo; hi < total && hi-lo < limit; hi++ {
		n := size(hi)
		if hi > lo && used+n > budget {
			break
		}
		used += n
	}
	if hi < total {
		next = hi
	}
	return lo, hi, next
}

// validNodeOrCluster checks an optional node-or-cluster selection.
func validNodeOrCluster(node, cluster string) error {
	if node != "" {
		if err := ValidNodeName(node); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	if err := optionalName("cluster", cluster, ValidClusterName); err != nil {
		return err
	}
	if node != "" && cluster != "" {
		return fmt.Errorf("node and cluster: give one or neither")
	}
	return nil
}
