package messages

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The fast paths must never disagree with encoding/json: whatever a fast
// decoder accepts decodes to what json.Unmarshal gives, and the fast
// encoder writes what json.Marshal's output decodes to.

func sameAsJSON[T any, PT interface {
	*T
	fastDecoder
}](t *testing.T, data []byte) bool {
	t.Helper()
	var fast T
	if !PT(&fast).decodeFast(data) {
		return false
	}
	var ref T
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", data, err)
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("%q: fast path %+v, encoding/json %+v", data, fast, ref)
	}
	return true
}

func TestFastDecode(t *testing.T) {
	now := time.Date(2026, 11, 27, 8, 0, 0, 123456789, time.UTC)
	r := Result{V: 1, TaskID: "t1", Node: "n1", Outcome: OutcomeOK, Reason: "a <b> & \"c\"\n\u2028é\xff", StartedAt: now,
		DurationMS: 12, Output: json.RawMessage(`{"pong":"n1","list":[1,2.5e3,"x\"y",{"a":null}],"t":true}`)}
	own := MustEncode(&r)
	tests := []struct {
		name string
		in   string
		fast bool // taken by the fast path (else encoding/json decides)
	}{
		{"own result encoding", `{"v":1,"task_id":"t1","node":"n1","outcome":"ok","started_at":"2026-11-27T08:00:00.123456789Z","duration_ms":12,"output":{"pong":"n1","list":[1,2.5e3,"x\"y",{"a":null}],"t":true}}`, true},
		{"white space", " { \"v\" : 1 ,\n\"task_id\":\"t1\" , \"outcome\":\"ok\",\"output\" : [ 1 , 2 ] } \n", true},
		{"scalar output", `{"v":1,"task_id":"t1","outcome":"ok","output":-1.5e-3}`, true},
		{"null output", `{"v":1,"task_id":"t1","outcome":"ok","output":null}`, true},
		{"offset time", `{"v":1,"task_id":"t1","outcome":"ok","started_at":"2026-11-27T09:00:00+01:00"}`, true},
		{"empty", `{}`, true},
		{"escaped string", `{"v":1,"task_id":"t\u0031","outcome":"ok"}`, false},
		{"upper-case key", `{"V":1,"task_id":"t1","outcome":"ok"}`, false},
		{"unknown key", `{"v":1,"task_id":"t1","outcome":"ok","extra":1}`, false},
		{"duplicate key", `{"v":1,"v":2,"task_id":"t1","outcome":"ok"}`, false},
		{"null string", `{"v":1,"task_id":null,"outcome":"ok"}`, false},
		{"float version", `{"v":1.0,"task_id":"t1","outcome":"ok"}`, false},
		{"leading zero", `{"v":01,"task_id":"t1","outcome":"ok"}`, false},
		{"trailing data", `{"v":1,"task_id":"t1","outcome":"ok"} {}`, false},
		{"bad output", `{"v":1,"task_id":"t1","outcome":"ok","output":[1,}`, false},
		{"bad time", `{"v":1,"task_id":"t1","outcome":"ok","started_at":"yesterday"}`, false},
		{"control character", "{\"v\":1,\"task_id\":\"t\x01\",\"outcome\":\"ok\"}", false},
		{"invalid utf-8", "{\"v\":1,\"task_id\":\"t\xff\",\"outcome\":\"ok\"}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameAsJSON[Result](t, []byte(tt.in)); got != tt.fast {
				t.Fatalf("fast path taken: %v, want %v", got, tt.fast)
			}
		})
	}
	// Our own encoding of a result with everything that needs escaping
	// reads back through Decode as it was written.
	got, err := Decode[Result](own, 0)
	if err != nil {
		t.Fatal(err)
	}
	var want Result
	ref, _ := json.Marshal(&r)
	json.Unmarshal(ref, &want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	report := TaskReport{V: 1, TaskID: "t1", Kind: "ping", Target: "all", IssuedAt: now, Deadline: now.Add(time.Minute), Done: true, Total: 2,
		Results: []NodeResult{{Node: "n1", Outcome: OutcomeOK, Output: r.Output}, {Node: "n2", Pending: true}}}
	if !sameAsJSON[TaskReport](t, MustEncode(&report)) {
		t.Fatal("our own report encoding missed the fast path")
	}
	task := `{"v":1,"id":"t1","kind":"ping","target":"cluster=a","args":{"duration":"1s"},"deadline":"2026-11-27T08:00:30Z","issued_at":"2026-11-27T08:00:00Z"}`
	if !sameAsJSON[Task](t, []byte(task)) {
		t.Fatal("a plain task missed the fast path")
	}
	if sameAsJSON[Task](t, []byte(strings.Replace(task, `"kind"`, `"Kind"`, 1))) {
		t.Fatal("a task with a capitalised key took the fast path")
	}
}

func FuzzFastDecode(f *testing.F) {
	seed(f, `{"v":1,"task_id":"t1","node":"n1","outcome":"ok","duration_ms":3,"output":{"a":[1,{"b":"\"}"}]}}`,
		`{"v":1,"id":"t1","kind":"ping","args":[true,false,null],"deadline":"2026-01-01T00:00:00Z","issued_at":"2026-01-01T00:00:00.5+02:00"}`,
		`{"output":"x\\"}`, `{"args":[[[[]]]]}`, `{"output":1e400}`, `{"v":-0}`, `{"output":tru}`)
	f.Add([]byte(`{"v":1,"task_id":"t1","kind":"ping","target":"all","issued_at":"2026-01-01T00:00:00Z","deadline":"2026-01-01T00:00:30Z","done":true,"results":[{"node":"n1","outcome":"ok","reason":"","duration_ms":1,"output":{"pong":"n1"}},{"node":"n2","pending":true,"outcome":"","reason":"","duration_ms":0,"output":null}],"total":2}`))
	f.Add([]byte(`{"done":false,"results":[]}`))
	f.Add([]byte(`{"v":1,"tasks":null,"heartbeat_interval":"5s"}`))
	f.Add([]byte(`{"v":1,"tasks":[]}`))
	f.Add([]byte(`{"done":truex,"results":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsJSON[Result](t, b)
		sameAsJSON[Task](t, b)
		sameAsJSON[TaskReport](t, b)
		sameAsJSON[SyncReply](t, b)
	})
}

func FuzzFastEncode(f *testing.F) {
	f.Add(1, "t1", "n1", "ok", "reason <&> \u2028 \xff", int64(1764230400123456789), int64(5), []byte(`{"a":[1, 2]}`))
	f.Add(1, "", "", "", "", int64(0), int64(-1), []byte(``))
	f.Add(1, "t", "n", "fail", "\x00\x1f\\\"", int64(-1), int64(0), []byte(`{"a":`))
	f.Fuzz(func(t *testing.T, v int, id, node, outcome, reason string, nanos, dur int64, output []byte) {
		r := Result{V: v, TaskID: id, Node: node, Outcome: Outcome(outcome), Reason: reason, DurationMS: dur, Output: output}
		if nanos != 0 {
			r.StartedAt = time.Unix(0, nanos).UTC()
		}
		fast, ok := r.appendJSON(nil)
		ref, err := json.Marshal(&r)
		if ok != (err == nil) {
			t.Fatalf("fast encoder ok=%v, encoding/json err=%v", ok, err)
		}
		if !ok {
			return
		}
		var a, b Result
		if err := json.Unmarshal(fast, &a); err != nil {
			t.Fatalf("fast encoding %q does not decode: %v", fast, err)
		}
		json.Unmarshal(ref, &b)
		ao, bo := a.Output, b.Output
		a.Output, b.Output = nil, nil
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("fast %q\n ref %q", fast, ref)
		}
		var av, bv any
		json.Unmarshal(ao, &av)
		json.Unmarshal(bo, &bv)
		if !reflect.DeepEqual(av, bv) {
			t.Fatalf("output: fast %q, ref %q", ao, bo)
		}
	})
}

func FuzzFastEncodeReport(f *testing.F) {
	f.Add("t1", "ping", "all", int64(1764230400123456789), true, "n1", true, "ok", "<&>", int64(3), []byte(`{"a": 1}`), 2, 1)
	f.Add("", "", "", int64(0), false, "", false, "", "", int64(0), []byte(nil), 0, 0)
	f.Fuzz(func(t *testing.T, id, kind, target string, nanos int64, done bool, node string, pending bool, outcome, reason string, dur int64, output []byte, total, next int) {
		r := TaskReport{V: 1, TaskID: id, Kind: kind, Target: target, Done: done, Total: total, NextOffset: next,
			Results: []NodeResult{{Node: node, Pending: pending, Outcome: Outcome(outcome), Reason: reason, DurationMS: dur, Output: output}, {}}}
		if nanos != 0 {
			r.IssuedAt = time.Unix(0, nanos).UTC()
			r.Deadline = r.IssuedAt.Add(time.Minute)
		}
		fast, ok := r.appendJSON(nil)
		ref, err := json.Marshal(&r)
		if ok != (err == nil) {
			t.Fatalf("fast encoder ok=%v, encoding/json err=%v", ok, err)
		}
		if !ok {
			return
		}
		var a, b TaskReport
		if err := json.Unmarshal(fast, &a); err != nil {
			t.Fatalf("fast encoding %q does not decode: %v", fast, err)
		}
		json.Unmarshal(ref, &b)
		var ao, bo []any
		for i := range a.Results {
			var x, y any
			json.Unmarshal(a.Results[i].Output, &x)
			json.Unmarshal(b.Results[i].Output, &y)
			ao, bo = append(ao, x), append(bo, y)
			a.Results[i].Output, b.Results[i].Output = nil, nil
		}
		if !reflect.DeepEqual(a, b) || !reflect.DeepEqual(ao, bo) {
			t.Fatalf("fast %q\n ref %q", fast, ref)
		}
	})
}

func TestReportPage(t *testing.T) {
	rows := make([]NodeResult, 10)
	for i := range rows {
		rows[i] = NodeResult{Node: fmt.Sprintf("n%d", i), Outcome: OutcomeOK, Output: json.RawMessage(`{"x":"` + strings.Repeat("a", 100) + `"}`)}
	}
	one, _ := rows[0].appendJSON(nil)
	row := len(one) + 1
	tests := []struct {
		name                 string
		offset, limit, bytes int
		lo, hi, next         int
	}{
		{"all fit", 0, 0, 1 << 20, 0, 10, 0},
		{"limit", 0, 3, 1 << 20, 0, 3, 3},
		{"bytes", 0, 0, 4*row + row/2, 0, 4, 4},
		{"from offset", 4, 0, 4 * row, 4, 8, 8},
		{"one row even over budget", 9, 0, 1, 9, 10, 0},
		{"past the end", 12, 0, 1 << 20, 10, 10, 0},
	}
	for _, tt := range tests {
		lo, hi, next := ReportPage(rows, tt.offset, tt.limit, tt.bytes)
		if lo != tt.lo || hi != tt.hi || next != tt.next {
			t.Errorf("%s: got %d,%d,%d want %d,%d,%d", tt.name, lo, hi, next, tt.lo, tt.hi, tt.next)
		}
	}
}

func FuzzFastEncodeSync(f *testing.F) {
	f.Add("5s", true)
	f.Add("<\u2028\xff", false)
	f.Fuzz(func(t *testing.T, hb string, empty bool) {
		rep := SyncReply{V: 1, HeartbeatInterval: hb}
		if empty {
			rep.Tasks = []Task{}
		}
		fast, ok := rep.appendJSON(nil)
		if !ok {
			t.Fatalf("fast encoder refused %+v", rep)
		}
		ref, _ := json.Marshal(&rep)
		var a, b SyncReply
		if err := json.Unmarshal(fast, &a); err != nil {
			t.Fatalf("fast encoding %q does not decode: %v", fast, err)
		}
		json.Unmarshal(ref, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("fast %q\n ref %q", fast, ref)
		}
	})
}
