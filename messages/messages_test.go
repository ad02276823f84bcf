package messages

import (
	"strings"
	"testing"
	"time"
)

func TestDecodeTask(t *testing.T) {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	good := `{"v":1,"id":"t1","kind":"ping","target":"all","deadline":"` + now + `","issued_at":"` + now + `"}`
	tests := []struct {
		name, in string
		max      int
		code     string
		field    string
	}{
		{"ok", good, 0, "", ""},
		{"too large", good, 10, CodeTooLarge, "exceeds"},
		{"not json", "{", 0, CodeBadRequest, "decode"},
		{"trailing", good + "{}", 0, CodeBadRequest, "trailing"},
		{"version", strings.Replace(good, `"v":1`, `"v":7`, 1), 0, CodeBadVersion, "v=7"},
		{"no id", strings.Replace(good, `"id":"t1"`, `"id":""`, 1), 0, CodeBadRequest, "id"},
		{"dotted id", strings.Replace(good, `"id":"t1"`, `"id":"a.b"`, 1), 0, CodeBadRequest, "id"},
		{"no kind", strings.Replace(good, `"kind":"ping"`, `"kind":""`, 1), 0, CodeBadRequest, "kind"},
		{"no deadline", strings.Replace(good, `"deadline"`, `"x"`, 1), 0, CodeBadRequest, "deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode[Task]([]byte(tt.in), tt.max)
			if tt.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || CodeOf(err) != tt.code || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err %v (code %s), want code %s naming %q", err, CodeOf(err), tt.code, tt.field)
			}
		})
	}
}

func TestDecodeResult(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{`{"v":1,"task_id":"t1","outcome":"ok"}`, ""},
		{`{"v":1,"task_id":"t1","outcome":"unknown","reason":"expired"}`, ""},
		{`{"v":1,"task_id":"t1","outcome":"unknown"}`, "reason"},
		{`{"v":1,"task_id":"t1","outcome":"great"}`, "outcome"},
		{`{"v":1,"task_id":"t1","outcome":"ok","duration_ms":-1}`, "duration_ms"},
	}
	for _, tt := range tests {
		_, err := Decode[Result]([]byte(tt.in), 0)
		if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: err %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestDecodeResultBatch(t *testing.T) {
	tests := []struct {
		name    string
		decode  func([]byte) error
		in      string
		wantErr string
	}{
		{"batch ok", decodeAs[ResultBatch], `{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t1","node":"n1","outcome":"ok"}]}`, ""},
		{"batch other task", decodeAs[ResultBatch], `{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t2","node":"n1","outcome":"ok"}]}`, "results[0]: task_id"},
		{"batch no node", decodeAs[ResultBatch], `{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t1","outcome":"ok"}]}`, "results[0]: node"},
		{"batch bad result", decodeAs[ResultBatch], `{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t1","node":"n1","outcome":"unknown"}]}`, "results[0]: reason"},
	}
	for _, tt := range tests {
		err := tt.decode([]byte(tt.in))
		if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: err %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}

func decodeAs[T any, PT interface {
	*T
	Message
}](b []byte) error {
	_, err := Decode[T, PT](b, 0)
	return err
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"n1", "node-a", "a_b", "x"} {
		if err := ValidNodeName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "all", "-a", "A", "a.b", "a*", "a>", "a b", strings.Repeat("a", 64)} {
		if ValidNodeName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSubjects(t *testing.T) {
	if n, err := NodeFromSubject(ResultPrefix, ResultSubject("n1")); err != nil || n != "n1" {
		t.Fatal(n, err)
	}
	for _, bad := range []string{"mgn.res.n1.t1", "mgn.res.", "mgn.hb.n1"} {
		if _, err := NodeFromSubject(ResultPrefix, bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if n, err := NodeFromSubject(HeartbeatPfx, "mgn.hb.n1"); err != nil || n != "n1" {
		t.Fatal(n, err)
	}
	if _, err := NodeFromSubject(HeartbeatPfx, "mgn.hb.n1.x"); err == nil {
		t.Fatal("accepted extra token")
	}
}

func TestLabels(t *testing.T) {
	if err := ValidateLabels(map[string]string{"zone": "z1", "gpu": ""}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{{"a=b": "c"}, {"": "x"}, {"a": "b,c"}, {"a b": "c"}} {
		if ValidateLabels(bad) == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
