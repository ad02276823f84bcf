package diagnostics

import (
	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/messages"
)

// Result is what `controller diagnose` produces and stores: the analysis,
// the verification report it was made from, and what each node's
// collectors returned (already redacted on the node), for bundles.
type Result struct {
	Diagnosis Diagnosis                    `json:"diagnosis"`
	Report    *messages.Report             `json:"report,omitempty"`
	Sections  map[string][]collect.Section `json:"sections,omitempty"`
	// Notes say what could not be collected (node offline, rules file
	// refused, output trimmed).
	Notes []string `json:"notes,omitempty"`
}
