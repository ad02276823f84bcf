package tasks

import "testing"

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
