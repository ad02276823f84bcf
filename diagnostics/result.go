package diagnostics

import "github.com/guildnet/metaguildnet/messages"

// Result is what `controller diagnose` produces and stores; the stored
// format is messages.DiagnoseResult.
type Result = messages.DiagnoseResult
