package messages

import (
	"encoding/json"
	"time"
	"unicode/utf8"
)

// Fast paths for the two payloads every fan-out moves once per node: a
// Task (decoded by each agent) and a Result (encoded by each agent,
// decoded by the controller). encoding/json spends most of its time on
// reflection and on time.Time; these do neither, and allocate only the
// strings they return.
//
// They are paths, not codecs: a decoder handles the plain form our own
// encoders produce (known lower-case keys once each, strings without
// escapes, integers) and reports false on anything else, and Decode then
// runs encoding/json, whose semantics stay the reference. A fuzz test
// checks that whatever a fast path accepts, encoding/json decodes to the
// same value.

// fastDecoder is implemented by payloads with a fast decoding path.
type fastDecoder interface {
	decodeFast(data []byte) bool
}

// fastEncoder is implemented by payloads with a fast encoding path; ok is
// false when the value needs encoding/json (which may then refuse it).
// sizeHint is about the encoded size, to allocate once.
type fastEncoder interface {
	appendJSON(b []byte) (out []byte, ok bool)
	sizeHint() int
}

// SyncReply has fast paths for the common reply, with no tasks and no
// change of the node's claims; one that carries either goes through
// encoding/json.
func (r *SyncReply) sizeHint() int { return 96 }

func (r *SyncReply) appendJSON(b []byte) ([]byte, bool) {
	if len(r.Tasks) > 0 || r.Node != nil {
		return b, false
	}
	b = append(b, `{"v":`...)
	b = appendInt(b, int64(r.V))
	if r.Tasks == nil {
		b = append(b, `,"tasks":null`...)
	} else {
		b = append(b, `,"tasks":[]`...)
	}
	b = appendString(append(b, `,"heartbeat_interval":`...), r.HeartbeatInterval)
	return append(b, '}'), true
}

func (r *SyncReply) decodeFast(data []byte) bool {
	var v SyncReply
	ok := scanObject(data, func(s *scanner, key []byte) (field int, ok bool) {
		switch string(key) {
		case "v":
			v.V, ok = s.int()
		case "tasks":
			field = 1
			ok = s.emptyList(&v.Tasks) // tasks: encoding/json
		case "heartbeat_interval":
			field = 2
			v.HeartbeatInterval, ok = s.str()
		}
		return field, ok
	})
	if ok {
		*r = v
	}
	return ok
}

func (r *Result) sizeHint() int {
	return 192 + len(r.TaskID) + len(r.Node) + len(r.Reason) + len(r.Output) + len(r.Sealed)
}

func (n *NodeResult) sizeHint() int { return 96 + len(n.Node) + len(n.Reason) + len(n.Output) }

func (r *TaskReport) sizeHint() int {
	n := 256 + len(r.Target)
	for i := range r.Results {
		n += r.Results[i].sizeHint()
	}
	return n
}

func (r *Result) appendJSON(b []byte) ([]byte, bool) {
	if len(r.Output) > 0 && !json.Valid(r.Output) || len(r.Sealed) > 0 && !json.Valid(r.Sealed) {
		return b, false
	}
	b = append(b, `{"v":`...)
	b = appendInt(b, int64(r.V))
	b = append(b, `,"task_id":`...)
	b = appendString(b, r.TaskID)
	b = append(b, `,"node":`...)
	b = appendString(b, r.Node)
	b = append(b, `,"outcome":`...)
	b = appendString(b, string(r.Outcome))
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, r.Reason)
	}
	if !r.StartedAt.IsZero() {
		var ok bool
		if b, ok = appendTime(append(b, `,"started_at":`...), r.StartedAt); !ok {
			return b, false // encoding/json refuses it
		}
	}
	b = append(b, `,"duration_ms":`...)
	b = appendInt(b, r.DurationMS)
	if len(r.Output) > 0 {
		b = append(b, `,"output":`...)
		b = append(b, r.Output...)
	}
	if len(r.Sealed) > 0 {
		b = append(b, `,"sealed":`...)
		b = append(b, r.Sealed...)
	}
	return append(b, '}'), true
}

func (n *NodeResult) appendJSON(b []byte) ([]byte, bool) {
	if n.Output != nil && !json.Valid(n.Output) {
		return b, false // (as encoding/json, an empty non-nil Output too)
	}
	b = append(b, `{"node":`...)
	b = appendString(b, n.Node)
	if n.Pending {
		b = append(b, `,"pending":true`...)
	}
	b = append(b, `,"outcome":`...)
	b = appendString(b, string(n.Outcome))
	b = append(b, `,"reason":`...)
	b = appendString(b, n.Reason)
	b = append(b, `,"duration_ms":`...)
	b = appendInt(b, n.DurationMS)
	b = append(b, `,"output":`...)
	if len(n.Output) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, n.Output...)
	}
	return append(b, '}'), true
}

// appendJSON encodes a task report: thousands of rows, answered while the
// operator waits for a fan-out.
func (r *TaskReport) appendJSON(b []byte) ([]byte, bool) {
	b = append(b, `{"v":`...)
	b = appendInt(b, int64(r.V))
	b = append(b, `,"task_id":`...)
	b = appendString(b, r.TaskID)
	b = append(b, `,"kind":`...)
	b = appendString(b, r.Kind)
	b = append(b, `,"target":`...)
	b = appendString(b, r.Target)
	var ok bool
	if b, ok = appendTime(append(b, `,"issued_at":`...), r.IssuedAt); !ok {
		return b, false
	}
	if b, ok = appendTime(append(b, `,"deadline":`...), r.Deadline); !ok {
		return b, false
	}
	if r.Done {
		b = append(b, `,"done":true`...)
	} else {
		b = append(b, `,"done":false`...)
	}
	b = append(b, `,"results":`...)
	if r.Results == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range r.Results {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = r.Results[i].appendJSON(b); !ok {
				return b, false
			}
		}
		b = append(b, ']')
	}
	if r.Total != 0 {
		b = appendInt(append(b, `,"total":`...), int64(r.Total))
	}
	if r.NextOffset != 0 {
		b = appendInt(append(b, `,"next_offset":`...), int64(r.NextOffset))
	}
	return append(b, '}'), true
}

// appendTime appends t as time.Time's MarshalJSON does; false where that
// fails (years outside 0-9999).
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	if y := t.Year(); y < 0 || y > 9999 {
		return b, false
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

func (r *TaskReport) decodeFast(data []byte) bool {
	var v TaskReport
	ok := scanObject(data, func(s *scanner, key []byte) (field int, ok bool) {
		switch string(key) {
		case "v":
			v.V, ok = s.int()
		case "task_id":
			field = 1
			v.TaskID, ok = s.str()
		case "kind":
			field = 2
			v.Kind, ok = s.str()
		case "target":
			field = 3
			v.Target, ok = s.str()
		case "issued_at":
			field = 4
			v.IssuedAt, ok = s.time()
		case "deadline":
			field = 5
			v.Deadline, ok = s.time()
		case "done":
			field = 6
			v.Done, ok = s.boolean()
		case "results":
			field = 7
			v.Results, ok = s.nodeResults()
		case "total":
			field = 8
			v.Total, ok = s.int()
		case "next_offset":
			field = 9
			v.NextOffset, ok = s.int()
		}
		return field, ok
	})
	if ok {
		*r = v
	}
	return ok
}

// emptyList reads null (leaving *v nil) or [] (setting it empty); anything
// else is not for the fast path.
func (s *scanner) emptyList(v *[]Task) bool {
	s.ws()
	if len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "null" && (s.i+4 == len(s.b) || isDelim(s.b[s.i+4])) {
		s.i += 4
		return true
	}
	if s.lit('[') && s.lit(']') {
		*v = []Task{}
		return true
	}
	return false
}

// nodeResults reads an array of report rows.
func (s *scanner) nodeResults() ([]NodeResult, bool) {
	if !s.lit('[') {
		return nil, false
	}
	out := []NodeResult{}
	if s.lit(']') {
		return out, true
	}
	for {
		var n NodeResult
		ok := s.object(func(s *scanner, key []byte) (field int, ok bool) {
			switch string(key) {
			case "node":
				n.Node, ok = s.str()
			case "pending":
				field = 1
				n.Pending, ok = s.boolean()
			case "outcome":
				field = 2
				n.Outcome, ok = s.outcome()
			case "reason":
				field = 3
				n.Reason, ok = s.str()
			case "duration_ms":
				field = 4
				n.DurationMS, ok = s.int64()
			case "output":
				field = 5
				n.Output, ok = s.raw()
			}
			return field, ok
		})
		if !ok {
			return nil, false
		}
		out = append(out, n)
		if s.lit(']') {
			return out, true
		}
		if !s.lit(',') {
			return nil, false
		}
	}
}

func (r *Result) decodeFast(data []byte) bool {
	var v Result
	ok := scanObject(data, func(s *scanner, key []byte) (field int, ok bool) {
		switch string(key) {
		case "v":
			v.V, ok = s.int()
		case "task_id":
			field = 1
			v.TaskID, ok = s.str()
		case "node":
			field = 2
			v.Node, ok = s.str()
		case "outcome":
			field = 3
			v.Outcome, ok = s.outcome()
		case "reason":
			field = 4
			v.Reason, ok = s.str()
		case "started_at":
			field = 5
			v.StartedAt, ok = s.time()
		case "duration_ms":
			field = 6
			v.DurationMS, ok = s.int64()
		case "output":
			field = 7
			v.Output, ok = s.raw()
		case "sealed":
			field = 8
			v.Sealed, ok = s.raw()
		}
		return field, ok
	})
	if ok {
		*r = v
	}
	return ok
}

func (t *Task) decodeFast(data []byte) bool {
	var v Task
	ok := scanObject(data, func(s *scanner, key []byte) (field int, ok bool) {
		switch string(key) {
		case "v":
			v.V, ok = s.int()
		case "id":
			field = 1
			v.ID, ok = s.str()
		case "kind":
			field = 2
			v.Kind, ok = s.str()
		case "target":
			field = 3
			v.Target, ok = s.str()
		case "args":
			field = 4
			v.Args, ok = s.raw()
		case "deadline":
			field = 5
			v.Deadline, ok = s.time()
		case "issued_at":
			field = 6
			v.IssuedAt, ok = s.time()
		case "sealed":
			field = 7
			v.Sealed, ok = s.raw()
		}
		return field, ok
	})
	if ok {
		*t = v
	}
	return ok
}

// scanner reads the plain subset of JSON the fast paths accept.
type scanner struct {
	b []byte
	i int
}

// scanObject reads one object and nothing after it (see object).
func scanObject(data []byte, value func(s *scanner, key []byte) (field int, ok bool)) bool {
	s := &scanner{b: data}
	return s.object(value) && s.end()
}

// object reads one object. For each key, value reads the value (the
// scanner is positioned at it) and says which field (0 to 31) it was and
// whether it could read it; an unknown key or a repeated field ends the
// fast path.
func (s *scanner) object(value func(s *scanner, key []byte) (field int, ok bool)) bool {
	if !s.lit('{') {
		return false
	}
	if s.lit('}') {
		return true
	}
	var seen uint32
	for {
		key, ok := s.strBytes()
		if !ok || !s.lit(':') {
			return false
		}
		field, ok := value(s, key)
		if !ok || seen&(1<<field) != 0 {
			return false
		}
		seen |= 1 << field
		if s.lit('}') {
			return true
		}
		if !s.lit(',') {
			return false
		}
	}
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// lit consumes c (after white space) if it is next.
func (s *scanner) lit(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// strBytes reads a string without escapes or control characters, in
// valid UTF-8: what encoding/json would return unchanged.
func (s *scanner) strBytes() ([]byte, bool) {
	if !s.lit('"') {
		return nil, false
	}
	start := s.i
	ascii := true
	for ; s.i < len(s.b); s.i++ {
		c := s.b[s.i]
		switch {
		case c == '"':
			out := s.b[start:s.i]
			s.i++
			if !ascii && !utf8.Valid(out) {
				return nil, false
			}
			return out, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// boolean reads true or false.
func (s *scanner) boolean() (v, ok bool) {
	s.ws()
	for _, lit := range [...]string{"true", "false"} {
		if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit &&
			(s.i+len(lit) == len(s.b) || isDelim(s.b[s.i+len(lit)])) {
			s.i += len(lit)
			return lit == "true", true
		}
	}
	return false, false
}

func (s *scanner) str() (string, bool) {
	b, ok := s.strBytes()
	return string(b), ok
}

// int reads an integer without fraction or exponent that fits in 53 bits
// (far beyond any field's range, and exact in every JSON reader).
func (s *scanner) int() (int, bool) {
	s.ws()
	neg := s.i < len(s.b) && s.b[s.i] == '-'
	if neg {
		s.i++
	}
	start := s.i
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		if s.i-start >= 15 {
			return 0, false
		}
		n = n*10 + int(s.b[s.i]-'0')
		s.i++
	}
	digits := s.i - start
	if digits == 0 || digits > 1 && s.b[start] == '0' {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	if neg {
		n = -n
	}
	return n, true
}

func (s *scanner) int64() (int64, bool) {
	n, ok := s.int()
	return int64(n), ok
}

// outcome reads an outcome; the four valid ones are not allocated.
func (s *scanner) outcome() (Outcome, bool) {
	b, ok := s.strBytes()
	for _, o := range [...]Outcome{OutcomeOK, OutcomeWarn, OutcomeFail, OutcomeUnknown} {
		if string(b) == string(o) {
			return o, ok
		}
	}
	return Outcome(b), ok
}

// time reads an RFC 3339 time the way time.Time's UnmarshalJSON does.
func (s *scanner) time() (time.Time, bool) {
	b, ok := s.strBytes()
	if !ok {
		return time.Time{}, false
	}
	var t time.Time
	if t.UnmarshalText(b) != nil {
		return time.Time{}, false
	}
	return t, true
}

// raw reads any JSON value and returns a copy of its bytes.
func (s *scanner) raw() (json.RawMessage, bool) {
	s.ws()
	start := s.i
	if !s.skip(0) {
		return nil, false
	}
	v := s.b[start:s.i]
	if !json.Valid(v) {
		return nil, false
	}
	return append(json.RawMessage(nil), v...), true
}

// skip moves past one value. It only finds the value's end; raw validates
// what it spans.
func (s *scanner) skip(depth int) bool {
	if depth > 32 || s.i >= len(s.b) {
		return false // deeper values are left to encoding/json
	}
	switch c := s.b[s.i]; c {
	case '"':
		for s.i++; s.i < len(s.b); {
			switch s.b[s.i] {
			case '\\':
				s.i += 2
			case '"':
				s.i++
				return true
			default:
				s.i++
			}
		}
		return false
	case '{', '[':
		closer := byte(']')
		if c == '{' {
			closer = '}'
		}
		s.i++
		if s.lit(closer) {
			return true
		}
		for {
			s.ws()
			if !s.skip(depth + 1) {
				return false
			}
			if c == '{' {
				if !s.lit(':') {
					return false
				}
				s.ws()
				if !s.skip(depth + 1) {
					return false
				}
			}
			if s.lit(closer) {
				return true
			}
			if !s.lit(',') {
				return false
			}
		}
	default: // number, true, false, null: up to the next delimiter
		start := s.i
		for s.i < len(s.b) && !isDelim(s.b[s.i]) {
			s.i++
		}
		return s.i > start
	}
}

func isDelim(c byte) bool {
	switch c {
	case ',', '}', ']', ':', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

func appendInt(b []byte, n int64) []byte {
	if n < 0 {
		b = append(b, '-')
		if n == -n { // math.MinInt64
			return append(b, "9223372036854775808"...)
		}
		n = -n
	}
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// (HTML-safe, invalid UTF-8 as U+FFFD).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
