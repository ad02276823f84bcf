package messages

import (
	"fmt"
	"regexp"
	"strings"
)

// Subject prefixes and fixed subjects. Builders below are the only way the
// code forms subjects, so the table in the package doc stays true.
const (
	Prefix       = "mgn."
	EnrollPrefix = "mgn.enroll."
	HeartbeatPfx = "mgn.hb."
	SyncPrefix   = "mgn.sync."
	TaskPrefix   = "mgn.task."
	AckPrefix    = "mgn.ack."
	ResultPrefix = "mgn.res."
	StoredPrefix = "mgn.results."
	APIPrefix    = "mgn.api."
	EventPrefix  = "mgn.evt."
	// Reply inboxes, one family per kind of requester. Each is a subject
	// token of its own so that a permission can name the whole family
	// (_INBOX_N.>) and a node exactly its own (_INBOX_N.NODE.>).
	NodeInboxPrefix     = "_INBOX_N."
	EnrollInboxPrefix   = "_INBOX_E."
	OperatorInboxPrefix = "_INBOX." // nats.go's default, used by admin clients
	ResultsStream       = "MGN_RESULTS"
)

// API verbs, used as mgn.api.VERB.
const (
	APIStatus      = "status"
	APIRun         = "run"
	APITaskWait    = "task.wait"
	APITokenCreate = "token.create"
	APINodesRemove = "nodes.remove"
	APINodesSet    = "nodes.set"
	APIVerify      = "verify"
	APIReportLast  = "report.last"
	APIDiagnose    = "diagnose"
)

func EnrollSubject(pubkey string) string  { return EnrollPrefix + pubkey }
func HeartbeatSubject(node string) string { return HeartbeatPfx + node }
func SyncSubject(node string) string      { return SyncPrefix + node }
func TaskSubject(node string) string      { return TaskPrefix + node }
func AckSubject(node string) string       { return AckPrefix + node }
func APISubject(verb string) string       { return APIPrefix + verb }
func EventSubject(kind string) string     { return EventPrefix + kind }

// NodeInbox is the inbox prefix of an enrolled node's connection (the
// agent passes it to nats.CustomInboxPrefix); EnrollInbox that of a
// connection enrolling the public key pub.
func NodeInbox(node string) string  { return NodeInboxPrefix + node }
func EnrollInbox(pub string) string { return EnrollInboxPrefix + pub }

// MaxReplySubjectLen bounds a reply subject the controller answers to: an
// inbox prefix, a 22-character NUID and a request token fit with room.
const MaxReplySubjectLen = 192

// ReplyUnder reports whether reply is a subject under inbox (a prefix from
// NodeInbox, EnrollInbox or OperatorInboxPrefix without its dot): at least
// one more token, no wildcards, no white space, bounded length. The
// controller answers a request only when this holds for the requester's
// own inbox, so a requester cannot make it publish anywhere else.
func ReplyUnder(reply, inbox string) bool {
	inbox = strings.TrimSuffix(inbox, ".") + "."
	rest, ok := strings.CutPrefix(reply, inbox)
	if !ok || rest == "" || len(reply) > MaxReplySubjectLen {
		return false
	}
	for _, tok := range strings.Split(rest, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return false
		}
	}
	return true
}

// ResultSubject is where a node publishes its results; the task id is in
// the payload. One subject per node (not per task) lets the server cache
// the node's publish permission and the controller's interest: a fan-out
// to thousands of nodes would otherwise miss both caches once per result.
func ResultSubject(node string) string { return ResultPrefix + node }

// StoredResultsSubject is where the controller stores results for one task
// (stream MGN_RESULTS, ResultBatch payloads). Agents cannot publish here.
func StoredResultsSubject(taskID string) string { return StoredPrefix + taskID }

// NodeFromSubject returns the NODE token of a subject that starts with
// prefix and has exactly one more token (mgn.hb.NODE and the like).
func NodeFromSubject(prefix, subject string) (string, error) {
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return "", fmt.Errorf("subject %q: want %sNODE", subject, prefix)
	}
	return rest, nil
}

// MaxNameLen bounds node, cluster and role names.
const MaxNameLen = 63

// ValidNodeName reports whether s can be a node name. Names become single
// subject tokens, so they must not contain '.', '*', '>' or white space; we
// go further and allow only what a DNS label allows, plus '_'. "all" is
// reserved for the selector.
func ValidNodeName(s string) error {
	if err := validToken(s); err != nil {
		return err
	}
	if s == "all" {
		return fmt.Errorf("name %q is reserved", s)
	}
	return nil
}

// ValidClusterName checks a cluster name (same alphabet as nodes).
func ValidClusterName(s string) error { return validToken(s) }

// ValidRoleName checks a node's role (controlplane, worker, router, ...;
// same alphabet as nodes).
func ValidRoleName(s string) error { return validToken(s) }

// ValidTaskKind checks a task kind ("ping", "verify"): the name an agent's
// task registry knows a task by (same alphabet as nodes).
func ValidTaskKind(s string) error {
	if err := validToken(s); err != nil {
		return fmt.Errorf("task kind: %w", err)
	}
	return nil
}

// snakeName is the form of check and layer names: lower_snake_case, 1 to
// 63 characters, starting with a letter.
var snakeName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// ValidCheckName checks a verification check's name.
func ValidCheckName(s string) error {
	if !snakeName.MatchString(s) {
		return fmt.Errorf("check name %q: want lower_snake_case, 1 to 63 characters, starting with a letter", s)
	}
	return nil
}

// ValidLayerName checks a report layer's name (network, host, cluster,
// database, application, or a custom check's layer).
func ValidLayerName(s string) error {
	if !snakeName.MatchString(s) {
		return fmt.Errorf("layer name %q: want lower_snake_case, 1 to 63 characters, starting with a letter", s)
	}
	return nil
}

func validToken(s string) error {
	if s == "" {
		return fmt.Errorf("empty name")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("name %q is longer than %d characters", s, MaxNameLen)
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case (r == '-' || r == '_') && i > 0:
		default:
			return fmt.Errorf("name %q: character %q at %d not allowed (use a-z, 0-9, '-', '_', starting with a letter or digit)", s, r, i)
		}
	}
	return nil
}

// ValidTaskID checks a task id: it becomes a subject token too.
func ValidTaskID(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("task id %q: want 1 to 64 characters", s)
	}
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("task id %q: character %q at %d not allowed", s, r, i)
		}
	}
	return nil
}
