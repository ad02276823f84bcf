package steps

// Builtin is the one place where the setup steps are listed, in run order
// within each layer. Families add their steps here.
func Builtin() *Registry {
	var list []Step
	// network.go, talos.go, addons.go, database.go, application.go
	list = append(list, DatabaseSteps()...)
	list = append(list, ApplicationSteps()...)
	r, err := NewRegistry(list...)
	if err != nil {
		panic(err) // a mistake in the literal list above; caught by tests
	}
	return r
}
