package tasks

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

func TestBuiltinRegistry(t *testing.T) {
	r := Builtin()
	for _, k := range []string{"ping", "facts", "sleep", "verify", "diagnose"} {
		if _, ok := r.Lookup(k); !ok {
			t.Errorf("kind %q not registered", k)
		}
	}
	if _, err := NewRegistry(Ping{}, Ping{}); err == nil {
		t.Fatal("duplicate kind accepted")
	}
}

// With replaces one kind and leaves the original registry alone.
func TestRegistryWith(t *testing.T) {
	r := Builtin()
	v := Verify{Parallel: 7}
	r2 := r.With(v)
	got, _ := r2.Lookup("verify")
	if got.(Verify).Parallel != 7 {
		t.Fatal("With did not replace verify")
	}
	orig, _ := r.Lookup("verify")
	if orig.(Verify).Parallel == 7 {
		t.Fatal("With changed the original registry")
	}
	if len(r2.Kinds()) != len(r.Kinds()) {
		t.Fatalf("kinds %v vs %v", r2.Kinds(), r.Kinds())
	}
}

// ping and sleep answer with their typed outputs and refuse bad arguments.
func TestPingAndSleepPayloads(t *testing.T) {
	env := &Env{Node: "n1"}
	out, err := Ping{}.Run(t.Context(), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(out.Data)
	if p, err := messages.Decode[messages.PingOutput](b, 0); err != nil || p.Pong != "n1" {
		t.Fatalf("ping output %s: %+v %v", b, p, err)
	}
	out, err = Sleep{}.Run(t.Context(), env, json.RawMessage(`{"duration":"1ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(out.Data)
	if s, err := messages.Decode[messages.SleepOutput](b, 0); err != nil || s.Slept != "1ms" {
		t.Fatalf("sleep output %s: %+v %v", b, s, err)
	}
	for _, args := range []string{`{"duration":"forever"}`, `{"duration":"1s","extra":1}`, `{}`} {
		if _, err := (Sleep{}).Run(t.Context(), env, json.RawMessage(args)); !errors.Is(err, ErrBadArgs) {
			t.Errorf("sleep %s: err %v, want ErrBadArgs", args, err)
		}
	}
}
