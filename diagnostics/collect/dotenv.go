package collect

import (
	"fmt"

	"github.com/guildnet/metaguildnet/internal/config"
)

// EnvEntry is one assignment of a .env file.
type EnvEntry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Line  int    `json:"line"`
}

// ParseDotenv reads .env text with the agent's own parser
// ([config.ScanDotEnv]), so the config section shows the file as the
// agent reads it. Lines it cannot read are reported as problems
// "line N: ..." and skipped; it never fails as a whole.
func ParseDotenv(text string) (entries []EnvEntry, problems []string) {
	for _, l := range config.ScanDotEnv(text) {
		if l.Err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %v", l.Line, l.Err))
			continue
		}
		entries = append(entries, EnvEntry{Key: l.Key, Value: l.Value, Line: l.Line})
	}
	return entries, problems
}
