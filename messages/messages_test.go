package messages

import (
	"encoding/json"
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

// The verify and diagnose task payloads refuse bad input naming the field.
func TestDecodeTaskPayloads(t *testing.T) {
	type decoder func([]byte) error
	verifyArgs := decoder(func(b []byte) error { _, err := DecodeTaskArgs[VerifyArgs](b, 0); return err })
	diagnoseArgs := decoder(func(b []byte) error { _, err := DecodeTaskArgs[DiagnoseArgs](b, 0); return err })
	verifyOut := decoder(func(b []byte) error { _, err := Decode[VerifyOutput](b, 0); return err })
	diagnoseOut := decoder(func(b []byte) error { _, err := Decode[DiagnoseOutput](b, 0); return err })
	result := decoder(func(b []byte) error { _, err := Decode[DiagnoseResult](b, 0); return err })
	for _, tt := range []struct {
		name string
		dec  decoder
		in   string
		want string // "" = accepted
	}{
		{"verify args empty", verifyArgs, ``, ""},
		{"verify args null", verifyArgs, `null`, ""},
		{"verify args without v", verifyArgs, `{"scope":"node","layers":["host"]}`, ""},
		{"verify args v1", verifyArgs, `{"v":1,"checks":["host_memory"]}`, ""},
		{"verify args v2", verifyArgs, `{"v":2}`, "v=2"},
		{"verify args scope", verifyArgs, `{"scope":"everywhere"}`, "scope:"},
		{"verify args layer", verifyArgs, `{"layers":["Net work"]}`, "layers[0]:"},
		{"verify args check", verifyArgs, `{"checks":["Bad"]}`, "checks[0]:"},
		{"verify args unknown field", verifyArgs, `{"layer":["host"]}`, `unknown field "layer"`},
		{"verify args trailing", verifyArgs, `{} {}`, "trailing"},
		{"diagnose args", diagnoseArgs, `{"collectors":["logs"]}`, ""},
		{"diagnose args collector", diagnoseArgs, `{"collectors":["Logs!"]}`, "collectors[0]:"},
		{"verify output", verifyOut, `{"v":1,"checks":[{"name":"host_memory","layer":"host","status":"pass","node":"n1"}]}`, ""},
		{"verify output no v", verifyOut, `{"checks":[]}`, "v=0"},
		{"verify output no checks", verifyOut, `{"v":1}`, "checks: missing"},
		{"verify output status", verifyOut, `{"v":1,"checks":[{"name":"a","status":"maybe"}]}`, "checks[0]: status:"},
		{"verify output name", verifyOut, `{"v":1,"checks":[{"name":"","status":"pass"}]}`, "checks[0]: name:"},
		{"diagnose output", diagnoseOut, `{"v":1,"node":"n1","sections":[{"name":"logs","data":[{"source":"f"}]}],"findings":[]}`, ""},
		{"diagnose output node", diagnoseOut, `{"v":1,"node":"a b"}`, "node:"},
		{"diagnose output section", diagnoseOut, `{"v":1,"sections":[{"name":""}]}`, "sections[0]: name:"},
		{"diagnose output severity", diagnoseOut, `{"v":1,"findings":[{"id":"x","severity":"loud"}]}`, "findings[0]: severity:"},
		{"diagnose output symptom", diagnoseOut, `{"v":1,"findings":[{"id":"x","severity":"info","symptoms":[{"severity":"info"}]}]}`, "findings[0].symptoms[0]: id:"},
		{"sleep args", decoder(func(b []byte) error { _, err := DecodeTaskArgs[SleepArgs](b, 0); return err }), `{"duration":"2s"}`, ""},
		{"sleep args missing", decoder(func(b []byte) error { _, err := DecodeTaskArgs[SleepArgs](b, 0); return err }), `{}`, "duration:"},
		{"sleep args too long", decoder(func(b []byte) error { _, err := DecodeTaskArgs[SleepArgs](b, 0); return err }), `{"duration":"11m"}`, `duration: "11m" is not a duration between 0 and 10m0s`},
		{"ping output", decoder(func(b []byte) error { _, err := Decode[PingOutput](b, 0); return err }), `{"v":1,"pong":"n1","time":"2026-01-01T00:00:00.123Z"}`, ""},
		{"ping output time", decoder(func(b []byte) error { _, err := Decode[PingOutput](b, 0); return err }), `{"v":1,"pong":"n1","time":"noon"}`, "time:"},
		{"diagnose result", result, `{"v":1,"diagnosis":{"status":"healthy","findings":[]},"sections":{"n1":[{"name":"system"}]}}`, ""},
		{"diagnose result status", result, `{"v":1,"diagnosis":{"status":"fine"}}`, "diagnosis: status:"},
		{"diagnose result report", result, `{"v":1,"diagnosis":{"status":"healthy"},"report":{"v":3}}`, "v=3"},
		{"diagnose result node", result, `{"v":1,"diagnosis":{"status":"healthy"},"sections":{"all":[]}}`, "sections: node:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.dec([]byte(tt.in))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || CodeOf(err) == CodeInternal || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v (code %s), want a coded error naming %q", err, CodeOf(err), tt.want)
			}
		})
	}
}

// A stored diagnosis keeps the field names it was stored with before the
// type moved here (diagnostics.Result); only "v" is new.
func TestDiagnoseResultStoredFormat(t *testing.T) {
	old := `{"diagnosis":{"timestamp":"2026-01-02T03:04:05Z","status":"degraded","nodes":["n1"],` +
		`"findings":[{"id":"tailnet-down","severity":"warning","layer":"network","title":"T","evidence":["n1: x"],` +
		`"suggestion":"S","command":"C","docs":"D","threshold":"H","nodes":["n1"],"affected":["n1"],` +
		`"symptoms":[{"id":"dns","severity":"info","layer":"network","title":"U","suggestion":"","docs":"","nodes":["n1"]}]}],` +
		`"healthy":[{"layer":"host","check":"host_memory","title":"Memory","nodes":1}]},` +
		`"sections":{"n1":[{"name":"logs","duration_ms":3,"error":"e","metrics":{"log_matches":1},` +
		`"lines":[{"source":"f","text":"t"}],"notes":["n"],"data":[{"source":"f","size_bytes":1}]}]},"notes":["x"]}`
	var r DiagnoseResult
	if err := json.Unmarshal([]byte(old), &r); err != nil {
		t.Fatal(err)
	}
	r.V = Version
	b, err := Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,` + old[1:]; string(b) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", b, want)
	}
	if _, err := Decode[DiagnoseResult](b, 0); err != nil {
		t.Fatal(err)
	}
}

func TestCanExplain(t *testing.T) {
	for _, tt := range []struct {
		layer   string
		touched []string
		want    bool
	}{
		{LayerNetwork, []string{LayerNetwork}, true},
		{LayerNetwork, []string{LayerApplication}, true}, // runs on it
		{LayerHost, []string{LayerNetwork}, true},
		{LayerCluster, []string{LayerNetwork}, false}, // above it
		{LayerApplication, []string{LayerNetwork, LayerDatabase}, false},
		{LayerDatabase, []string{LayerNetwork, LayerApplication}, true},
		{"gpu", []string{LayerCluster}, false},
		{"gpu", []string{"gpu"}, true},
	} {
		if got := CanExplain(tt.layer, tt.touched); got != tt.want {
			t.Errorf("CanExplain(%s, %v) = %v, want %v", tt.layer, tt.touched, got, tt.want)
		}
	}
}
