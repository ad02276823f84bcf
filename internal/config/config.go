// Package config layers settings: command-line
// flags win over the process environment, which wins over .env.local, which
// wins over .env, which wins over built-in defaults. Every flag --some-name
// can be set as METAGN_SOME_NAME in any of those places.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// EnvPrefix is prepended to a flag's name to form its environment name.
const EnvPrefix = "METAGN_"

// Value is one setting with where it came from ("env", ".env.local:3").
type Value struct {
	Val    string
	Source string
}

// Values are settings by name.
type Values map[string]Value

// Load reads .env then .env.local from dir (either may be missing) and lays
// the process environment over them.
func Load(dir string) (Values, error) {
	v := Values{}
	for _, name := range []string{".env", ".env.local"} {
		if err := v.readFile(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	for _, kv := range os.Environ() {
		k, val, _ := strings.Cut(kv, "=")
		v[k] = Value{Val: val, Source: "environment"}
	}
	return v, nil
}

func (v Values) readFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	kv, err := ParseDotEnv(f, path)
	if err != nil {
		return err
	}
	for k, val := range kv {
		v[k] = val
	}
	return nil
}

// MaxDotEnvBytes bounds a .env file.
const MaxDotEnvBytes = 1 << 20

// ParseDotEnv parses a .env file (see [ScanDotEnv] for the syntax). A
// malformed line is an error naming name:line.
func ParseDotEnv(r io.Reader, name string) (Values, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxDotEnvBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > MaxDotEnvBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, MaxDotEnvBytes)
	}
	out := Values{}
	for _, l := range ScanDotEnv(string(b)) {
		if l.Err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, l.Line, l.Err)
		}
		out[l.Key] = Value{Val: l.Value, Source: fmt.Sprintf("%s:%d", name, l.Line)}
	}
	return out, nil
}

// DotEnvLine is one assignment of a .env file, or why a line is not one.
type DotEnvLine struct {
	Line  int // from 1
	Key   string
	Value string
	// Err says why the line is not an assignment (Key and Value are then
	// empty, or Key alone is set when only the value is malformed). It
	// never quotes the line, which may hold a secret.
	Err error
}

// ScanDotEnv parses .env text: KEY=VALUE lines with KEY of letters,
// digits and '_', an optional "export ", '#' comments, values in single
// or double quotes (double quotes honour \n, \" and \\) and " #" comments
// after unquoted values. It returns every assignment and every malformed
// line, in order, and never fails as a whole; blank and comment lines are
// left out.
func ScanDotEnv(text string) []DotEnvLine {
	var out []DotEnvLine
	n := 0
	for raw := range strings.Lines(text) {
		n++
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, val, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !validKey(k) {
			out = append(out, DotEnvLine{Line: n, Err: errors.New("not a KEY=VALUE assignment (KEY of letters, digits and '_')")})
			continue
		}
		v, err := dotEnvValue(strings.TrimSpace(val))
		if err != nil {
			out = append(out, DotEnvLine{Line: n, Key: k, Err: fmt.Errorf("%s: %w", k, err)})
			continue
		}
		out = append(out, DotEnvLine{Line: n, Key: k, Value: v})
	}
	return out
}

// dotEnvValue unquotes a value, or cuts its trailing comment.
func dotEnvValue(v string) (string, error) {
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

func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// EnvName is the environment name of a flag: --data-dir → METAGN_DATA_DIR.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply sets every flag the user did not give on the command line from its
// METAGN_ name in v. An invalid value is an error naming the variable and
// where it was set.
func Apply(fs *pflag.FlagSet, v Values) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		val, ok := v[EnvName(f.Name)]
		if !ok {
			return
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			if err := sv.Replace(splitList(val.Val)); err != nil {
				errs = append(errs, fmt.Errorf("%s (from %s): %w", EnvName(f.Name), val.Source, err))
			}
			return
		}
		if err := f.Value.Set(val.Val); err != nil {
			errs = append(errs, fmt.Errorf("%s (from %s): %w", EnvName(f.Name), val.Source, err))
		}
	})
	return errors.Join(errs...)
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Settings is a read-only view of configuration values by their
// environment name (KUBECONFIG, TS_ROUTES, RETHINKDB_ADDR, ...), after
// layering of flags, environment, .env.local and .env. Tasks, checks and
// collectors read their settings from it.
type Settings map[string]string

// Get returns the value for key, or def when it is unset or empty.
func (s Settings) Get(key, def string) string {
	if v, ok := s[key]; ok && v != "" {
		return v
	}
	return def
}

// Settings flattens v to plain strings, for tasks that read their settings
// by name (KUBECONFIG, TS_ROUTES, ...).
func (v Values) Settings() Settings {
	m := make(Settings, len(v))
	for k, val := range v {
		m[k] = val.Val
	}
	return m
}

// DefaultDataDir is where the controller keeps its state unless told
// otherwise: $XDG_DATA_HOME/metaguildnet, else ~/.local/share/metaguildnet.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "metaguildnet")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "metaguildnet")
	}
	return filepath.Join(os.TempDir(), "metaguildnet")
}
