package collect

import (
	"fmt"
	"strings"
)

// EnvEntry is one assignment of a .env file.
type EnvEntry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Line  int    `json:"line"`
}

// ParseDotenv parses .env text: KEY=VALUE lines, optional `export `,
// '#' comments, single or double quotes (double quotes honour \n, \" and
// \\), and ` #` comments after unquoted values. Lines it cannot read are
// reported as problems "line N: ..." and skipped; it never fails as a whole.
func ParseDotenv(text string) (entries []EnvEntry, problems []string) {
	n := 0
	for raw := range strings.Lines(text) {
		n++
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if !ok || !validEnvKey(key) {
			problems = append(problems, fmt.Sprintf("line %d: not a KEY=VALUE assignment", n))
			continue
		}
		v, err := envValue(strings.TrimSpace(val))
		if err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %s: %v", n, key, err))
			continue
		}
		entries = append(entries, EnvEntry{Key: key, Value: v, Line: n})
	}
	return entries, problems
}

func validEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '.' || c == '-') {
			continue
		}
		return false
	}
	return true
}

func envValue(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	switch q := v[0]; q {
	case '\'', '"':
		end := -1
		for i := 1; i < len(v); i++ {
			if q == '"' && v[i] == '\\' {
				i++
				continue
			}
			if v[i] == q {
				end = i
				break
			}
		}
		if end < 0 {
			return "", fmt.Errorf("unterminated %c quote", q)
		}
		inner := v[1:end]
		if q == '"' {
			inner = strings.NewReplacer(`\n`, "\n", `\"`, `"`, `\\`, `\`).Replace(inner)
		}
		return inner, nil
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	return v, nil
}
