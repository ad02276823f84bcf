package checks

import (
	"slices"

	"github.com/guildnet/metaguildnet/internal/config"
)

// BuiltinChecks returns every built-in check, in report order: network,
// host, cluster (Kubernetes, then Talos), database, application.
func BuiltinChecks() []Check {
	return slices.Concat(NetworkChecks(), HostChecks(), ClusterChecks(), TalosChecks(), DatabaseChecks(), ApplicationChecks())
}

// Catalog returns the checks this agent knows: the built-in ones plus those
// of the custom check file in setting METAGN_CUSTOM_CHECKS, validated as a
// whole. On an error in the custom file it returns the built-in checks
// with the error, so verification goes on without them.
func Catalog(s config.Settings) ([]Check, error) {
	builtin := BuiltinChecks()
	path := s.Get("METAGN_CUSTOM_CHECKS", "")
	if path == "" {
		return builtin, nil
	}
	custom, err := LoadCustomChecks(path)
	if err != nil {
		return builtin, err
	}
	all := slices.Concat(builtin, custom)
	if err := ValidateChecks(all); err != nil {
		return builtin, err
	}
	return all, nil
}
