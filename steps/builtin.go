package steps

import "slices"

// Builtin is the one place where the setup steps are listed, in run order
// within each layer. Families add their steps here.
func Builtin() *Registry {
	r, err := NewRegistry(slices.Concat(
		networkSteps,       // network.go: headscale_user, tailscale_login, routes_approved
		talosSteps(),       // talos.go: talos_machine_config, talos_bootstrap, kubeconfig_fetch, kubeconfig_install
		addonSteps(),       // addons.go: k8s_namespaces, guildnet_crds, metallb
		DatabaseSteps(),    // database.go: rethinkdb_service, rethinkdb_databases
		ApplicationSteps(), // application.go: workspace_operator, hostapp_config
	)...)
	if err != nil {
		panic(err) // a mistake in the literal list above; caught by tests
	}
	return r
}
