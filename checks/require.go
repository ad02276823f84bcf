package checks

import (
	"fmt"
	"slices"
	"strings"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// Which checks a node must run. A check that is not configured (a setting
// it needs is unset) reports not_configured, which is never a pass but not
// a failure either: a Talos check on a cluster without Talos has nothing to
// look at. A check the cluster requires fails instead, naming the setting
// to set and where the requirement came from.
//
// The requirement is the union of the agent's settings
// METAGN_REQUIRE_LAYERS and METAGN_REQUIRE_CHECKS (comma-separated names;
// "none" for none) and what the verify task asks for (the fleet spec's
// require block, which the controller passes in messages.VerifyArgs).
// GuildNet always has a Kubernetes API (~/.guildnet/kubeconfig), so by
// default kube_api_ready is required: without a kubeconfig it fails with
// "set KUBECONFIG" rather than leaving the cluster layer not configured.

// Settings of the requirement, and their defaults.
const (
	RequireLayersSetting = "METAGN_REQUIRE_LAYERS"
	RequireChecksSetting = "METAGN_REQUIRE_CHECKS"
	// DefaultRequiredChecks is METAGN_REQUIRE_CHECKS when unset.
	DefaultRequiredChecks = "kube_api_ready"
	// DefaultRequiredLayers is METAGN_REQUIRE_LAYERS when unset.
	DefaultRequiredLayers = ""
	// requireNone is the value that requires nothing.
	requireNone = "none"
)

// Requirement is the set of layers and checks a run must run, each with
// where it was asked for (for messages).
type Requirement struct {
	layers map[string]string // layer -> source
	checks map[string]string // check -> source
}

// RequirementFrom builds the requirement from the settings plus extra (the
// verify task's require block; nil for none). A malformed name is an error
// naming the setting.
func RequirementFrom(s config.Settings, extra *messages.FleetRequire) (Requirement, error) {
	r := Requirement{layers: map[string]string{}, checks: map[string]string{}}
	add := func(into map[string]string, setting, def, what string, valid func(string) error) error {
		v := strings.TrimSpace(s.Get(setting, def))
		if strings.EqualFold(v, requireNone) {
			return nil
		}
		for item := range strings.SplitSeq(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			if err := valid(item); err != nil {
				return fmt.Errorf("setting %s: %s %q: %v", setting, what, item, err)
			}
			if _, ok := into[item]; !ok {
				into[item] = setting
			}
		}
		return nil
	}
	if err := add(r.layers, RequireLayersSetting, DefaultRequiredLayers, "layer", messages.ValidLayerName); err != nil {
		return r, err
	}
	if err := add(r.checks, RequireChecksSetting, DefaultRequiredChecks, "check", messages.ValidCheckName); err != nil {
		return r, err
	}
	if extra != nil {
		for _, l := range extra.Layers {
			if _, ok := r.layers[l]; !ok {
				r.layers[l] = "the fleet spec's require.layers"
			}
		}
		for _, c := range extra.Checks {
			if _, ok := r.checks[c]; !ok {
				r.checks[c] = "the fleet spec's require.checks"
			}
		}
	}
	return r, nil
}

// Required reports whether c must run, and names the setting or spec that
// says so.
func (r *Requirement) Required(c *Check) (source string, ok bool) {
	if r == nil {
		return "", false
	}
	if s, ok := r.checks[c.Name]; ok {
		return s + " names " + c.Name, true
	}
	if s, ok := r.layers[c.Layer]; ok {
		return s + " names layer " + c.Layer, true
	}
	return "", false
}

// Checks and Layers list the requirement, sorted.
func (r *Requirement) Checks() []string { return sortedKeys(r.checks) }
func (r *Requirement) Layers() []string { return sortedKeys(r.layers) }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// apply turns a required check's not_configured result into a failure
// that says what to set.
func (r *Requirement) apply(c *Check, res messages.CheckResult) messages.CheckResult {
	if res.Status != messages.CheckNotConfigured {
		return res
	}
	src, ok := r.Required(c)
	if !ok {
		return res
	}
	what := strings.TrimPrefix(res.Message, messages.NotConfiguredPrefix)
	msg := fmt.Sprintf("required (%s) but not configured: %s", src, what)
	if set := notConfiguredSettings(res); len(set) > 0 {
		msg += "; set " + strings.Join(set, " or ")
	}
	res.Status, res.Passed = messages.CheckFail, false
	res.Message = Truncate(msg, MaxCheckMessageBytes)
	return res
}

// notConfiguredSettings returns the settings a not_configured result names.
func notConfiguredSettings(res messages.CheckResult) []string {
	var o messages.ObservedNotConfigured
	if err := jsonUnmarshal(res.Observed, &o); err != nil {
		return nil
	}
	return o.Settings
}
