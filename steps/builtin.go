package steps

import "slices"

// Builtin is the one place where the setup steps are listed, in run order
// within each layer. Families add their steps here.
func Builtin() *Registry {
	r, err := NewRegistry(slices.Concat(
		// network.go, talos.go, addons.go, database.go, application.go
		networkSteps,
	)...)
	if err != nil {
		panic(err) // a mistake in the literal list above; caught by tests
	}
	return r
}
