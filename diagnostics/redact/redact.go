// Package redact removes secrets from text before it leaves a node.
//
// Every diagnostics collector passes what it returns through a [Redactor]:
// values of settings and .env entries whose names look secret, Tailscale and
// Headscale keys, bearer tokens, JWTs, PEM private keys, passwords in URLs
// and "key: value" pairs with a secret-looking key. Redaction errs on the
// side of hiding too much.
//
//	r := redact.New(settings["TS_AUTHKEY"])
//	safe := r.String(line)
package redact

import (
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Mask replaces every secret.
const Mask = "[REDACTED]"

// minLiteral is the shortest literal secret value scrubbed verbatim; shorter
// values ("1", "no") would destroy the text around them.
const minLiteral = 4

// secretWords are the name fragments that make a setting or field secret.
var secretWords = []string{"TOKEN", "PASSWORD", "PASSWD", "PASS", "SECRET", "KEY", "AUTH", "CREDENTIAL", "PRIVATE"}

// IsSecretName reports whether a setting, environment variable or field
// named name holds a secret (TS_AUTHKEY, RETHINKDB_PASS, api_key,
// client-key-data, token, ...).
func IsSecretName(name string) bool {
	u := strings.ToUpper(name)
	for _, w := range secretWords {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// patterns are compiled on first use so that an idle agent does not hold them.
var patterns = sync.OnceValue(func() []rule {
	return []rule{
		// PEM private keys, also when the END line is missing (truncated tail).
		{re: regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)`), repl: Mask},
		// Tailscale and Headscale keys.
		{re: regexp.MustCompile(`(?:tskey|hskey)-[A-Za-z0-9_-]*`), repl: Mask},
		// Authorization headers.
		{re: regexp.MustCompile(`(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{6,}`), repl: "${1}${2}" + Mask},
		// "token VALUE" where VALUE looks like one (has a digit), not prose.
		{re: regexp.MustCompile(`(?i)\b(token)(\s+)[A-Za-z0-9._~+/=-]*[0-9][A-Za-z0-9._~+/=-]*`), repl: "${1}${2}" + Mask},
		// JWTs.
		{re: regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`), repl: Mask},
		// Passwords in URLs: scheme://user:password@host.
		{re: regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]*@`), repl: "${1}:" + Mask + "@"},
		// key=value, key: value, "key": "value" with a secret-looking key,
		// except file names such as server.key or tls.pem.
		{re: regexp.MustCompile(`(?i)([A-Za-z0-9_.-]*(?:token|passw(?:or)?d|pass|secret|key|auth|credential)[A-Za-z0-9_.-]*)("?'?\s*[:=]\s*"?'?)([^\s"',;&}\[\]]+)`),
			repl: "${1}${2}" + Mask, skip: regexp.MustCompile(`(?i)\.(key|pem|crt)$`)},
	}
})

type rule struct {
	re   *regexp.Regexp
	repl string
	skip *regexp.Regexp // matches of group 1 that are left alone
}

func (p rule) apply(s string) string {
	if p.skip == nil {
		return p.re.ReplaceAllString(s, p.repl)
	}
	var b strings.Builder
	last := 0
	for _, m := range p.re.FindAllStringSubmatchIndex(s, -1) {
		if p.skip.MatchString(s[m[2]:m[3]]) {
			continue
		}
		b.WriteString(s[last:m[0]])
		b.Write(p.re.ExpandString(nil, p.repl, s, m))
		last = m[1]
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// Redactor scrubs text. Its zero value applies the patterns only; New adds
// literal secret values known on the node. A Redactor is safe for concurrent
// use once built.
type Redactor struct {
	mu       sync.RWMutex
	literals []string // longest first, so that a secret containing another goes whole
}

// New returns a Redactor that also removes each of the given literal secret
// values wherever they appear.
func New(secrets ...string) *Redactor {
	r := &Redactor{}
	r.Add(secrets...)
	return r
}

// Add registers more literal secret values. Values shorter than four
// characters or with surrounding spaces only are ignored.
func (r *Redactor) Add(secrets ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range secrets {
		s = strings.TrimSpace(s)
		if len(s) < minLiteral || s == Mask || slices.Contains(r.literals, s) {
			continue
		}
		r.literals = append(r.literals, s)
	}
	slices.SortFunc(r.literals, func(a, b string) int { return len(b) - len(a) })
}

// AddSettings registers the values of every setting whose name is secret.
func (r *Redactor) AddSettings(settings map[string]string) {
	for k, v := range settings {
		if IsSecretName(k) {
			r.Add(v)
		}
	}
}

// String returns s with every secret it recognises replaced by Mask.
func (r *Redactor) String(s string) string {
	if r != nil {
		r.mu.RLock()
		for _, lit := range r.literals {
			if strings.Contains(s, lit) {
				s = strings.ReplaceAll(s, lit, Mask)
			}
		}
		r.mu.RUnlock()
	}
	for _, p := range patterns() {
		s = p.apply(s)
	}
	return s
}

// Value returns the value of the named setting or field as it may be shown:
// Mask when the name is secret (or the value non-empty and the name secret),
// otherwise the value scrubbed by String.
func (r *Redactor) Value(name, value string) string {
	if IsSecretName(name) {
		if value == "" {
			return ""
		}
		return Mask
	}
	return r.String(value)
}

// Bytes is String for byte slices.
func (r *Redactor) Bytes(b []byte) []byte { return []byte(r.String(string(b))) }
