package messages

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestSealed(t *testing.T) {
	now := time.Now()
	ok := Task{V: 1, ID: "t1", Kind: "step", Deadline: now, IssuedAt: now, Sealed: json.RawMessage(`{"talos.machine_config":"s3cret","kubeconfig":"k"}`)}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"../x":"v"}`, `{"a/b":"v"}`, `{"A":"v"}`, `{"a..b":"v"}`, `{"a.":"v"}`, `{"a":1}`, `["a"]`, `null`, `{"a":"v"} {}`,
		`{"a":"` + strings.Repeat("x", MaxSealedBytes) + `"}`} {
		task := ok
		task.Sealed = json.RawMessage(bad)
		err := task.Validate()
		if err == nil {
			t.Errorf("sealed %.40s accepted", bad)
		} else if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), `"v"`) {
			t.Errorf("error shows a value: %v", err)
		}
	}
	r := Result{V: 1, TaskID: "t1", Node: "n1", Outcome: OutcomeOK, Sealed: json.RawMessage(`{"kubeconfig":"k"}`)}
	b, err := Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode[Result](b, 0)
	if err != nil || string(back.Sealed) != `{"kubeconfig":"k"}` {
		t.Fatalf("round trip: %s %v", back.Sealed, err)
	}
	if m, err := DecodeSealed(back.Sealed); err != nil || m["kubeconfig"] != "k" {
		t.Fatalf("decode: %v %v", m, err)
	}
	enc, err := EncodeSealed(map[string]string{"kubeconfig": "k"})
	if err != nil || string(enc) != `{"kubeconfig":"k"}` {
		t.Fatalf("encode: %s %v", enc, err)
	}
	if _, err := EncodeSealed(map[string]string{"x/y": "k"}); err == nil {
		t.Fatal("bad key encoded")
	}
}
