package checks

import (
	"fmt"
	"slices"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/internal/config"
)

// BuiltinChecks returns every built-in check, in report order: network,
// host, cluster (Kubernetes, then Talos), database, application.
func BuiltinChecks() []Check {
	return slices.Concat(NetworkChecks(), HostChecks(), ClusterChecks(), TalosChecks(), DatabaseChecks(), ApplicationChecks())
}

// fromTable completes a family's built-in checks with their name's row of
// the one table of check metadata ([meta.Builtin]): layer, scope and
// dependencies. A check missing from the table is a programming error,
// caught by the package's tests.
func fromTable(cs []Check) []Check {
	for i := range cs {
		m, ok := meta.Lookup(cs[i].Name)
		if !ok {
			panic(fmt.Sprintf("checks: built-in check %q is not in checks/meta's table", cs[i].Name))
		}
		cs[i].Layer, cs[i].Scope, cs[i].DependsOn = m.Layer, m.Scope, slices.Clone(m.DependsOn)
	}
	return cs
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
