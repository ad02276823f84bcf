package tasks

import (
	"fmt"
	"slices"
)

// Registry maps task kinds to implementations.
type Registry struct {
	m map[string]Task
}

// NewRegistry returns a registry holding ts. Two tasks of one kind are a
// programming error and reported as such.
func NewRegistry(ts ...Task) (*Registry, error) {
	r := &Registry{m: make(map[string]Task, len(ts))}
	for _, t := range ts {
		if _, dup := r.m[t.Kind()]; dup {
			return nil, fmt.Errorf("task kind %q registered twice", t.Kind())
		}
		r.m[t.Kind()] = t
	}
	return r, nil
}

// Lookup finds the task of a kind.
func (r *Registry) Lookup(kind string) (Task, bool) {
	t, ok := r.m[kind]
	return t, ok
}

// With returns a copy of r in which t replaces the task of its kind (or is
// added). The agent uses it to give verify the LocalAPI of its own tsnet
// node.
func (r *Registry) With(t Task) *Registry {
	m := make(map[string]Task, len(r.m)+1)
	for k, v := range r.m {
		m[k] = v
	}
	m[t.Kind()] = t
	return &Registry{m: m}
}

// Kinds lists the registered kinds, sorted.
func (r *Registry) Kinds() []string {
	ks := make([]string, 0, len(r.m))
	for k := range r.m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Builtin is the one place where the agent's task kinds are listed.
func Builtin() *Registry {
	r, err := NewRegistry(
		Ping{},
		FactsTask{},
		Sleep{},
		Verify{},
		Diagnose{},
		StepTask{},
	)
	if err != nil {
		panic(err) // a duplicate in the literal list above; caught by tests
	}
	return r
}
