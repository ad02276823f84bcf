package messages

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// A join token is what `controller token create` prints and `agent run`
// takes: the secret the controller checks, then optional parts separated
// by '.':
//
//	mgnt_SECRET[.PIN][.u=BASE64URL(URL,URL,...)]
//
// PIN is the controller's TLS CA pin (internal/tlspin), present when the
// controller serves TLS. The u= part lists the URLs the agent dials (every
// peer of a controller cluster), so that one token is all an agent needs;
// it is present when the controller knows URLs agents can reach. Only the
// secret is sent to the controller; the other parts never leave the
// agent. Older tokens (SECRET or SECRET.PIN) parse unchanged.
type JoinToken struct {
	Secret string
	Pin    string
	URLs   []string
}

// Bounds of a join token's parts.
const (
	MaxJoinTokenBytes = 4096
	MaxJoinTokenURLs  = 16
	maxJoinURLBytes   = 256
)

const joinURLsTag = "u="

// String encodes t.
func (t JoinToken) String() string {
	s := t.Secret
	if t.Pin != "" {
		s += "." + t.Pin
	}
	if len(t.URLs) > 0 {
		s += "." + joinURLsTag + base64.RawURLEncoding.EncodeToString([]byte(strings.Join(t.URLs, ",")))
	}
	return s
}

// ParseJoinToken splits and checks a token. Errors name the part that is
// wrong and never repeat the secret.
func ParseJoinToken(s string) (JoinToken, error) {
	if len(s) > MaxJoinTokenBytes {
		return JoinToken{}, fmt.Errorf("join token: %d bytes, at most %d", len(s), MaxJoinTokenBytes)
	}
	parts := strings.Split(s, ".")
	t := JoinToken{Secret: parts[0]}
	if t.Secret == "" {
		return JoinToken{}, errors.New("join token: empty")
	}
	for i, p := range parts[1:] {
		switch {
		case strings.HasPrefix(p, joinURLsTag):
			if t.URLs != nil {
				return JoinToken{}, errors.New("join token: two URL parts")
			}
			b, err := base64.RawURLEncoding.DecodeString(p[len(joinURLsTag):])
			if err != nil {
				return JoinToken{}, fmt.Errorf("join token: URL part: not base64url: %v", err)
			}
			urls, err := ValidateControllerURLs(string(b))
			if err != nil {
				return JoinToken{}, fmt.Errorf("join token: URL part: %w", err)
			}
			t.URLs = urls
		case i == 0 && p != "":
			t.Pin = p
		default:
			return JoinToken{}, fmt.Errorf("join token: part %d is neither a CA pin nor %sURLS", i+2, joinURLsTag)
		}
	}
	return t, nil
}

// ValidateControllerURLs checks a comma-separated list of controller URLs
// (nats://HOST:PORT or tls://HOST:PORT, no credentials, no path) and
// returns them.
func ValidateControllerURLs(list string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(list, ",") {
		u = strings.TrimSpace(u)
		if len(out) == MaxJoinTokenURLs {
			return nil, fmt.Errorf("more than %d URLs", MaxJoinTokenURLs)
		}
		if len(u) > maxJoinURLBytes {
			return nil, fmt.Errorf("a URL of %d bytes, at most %d", len(u), maxJoinURLBytes)
		}
		p, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", u, err)
		}
		if p.Scheme != "nats" && p.Scheme != "tls" {
			return nil, fmt.Errorf("%q: scheme must be nats or tls", u)
		}
		if p.User != nil {
			return nil, fmt.Errorf("URL %d carries credentials: a controller URL never does", len(out)+1)
		}
		if p.Path != "" && p.Path != "/" || p.RawQuery != "" || p.Fragment != "" {
			return nil, fmt.Errorf("%q: want SCHEME://HOST:PORT only", u)
		}
		if _, port, err := net.SplitHostPort(p.Host); err != nil || port == "" || p.Hostname() == "" {
			return nil, fmt.Errorf("%q: want SCHEME://HOST:PORT", u)
		}
		out = append(out, p.Scheme+"://"+p.Host)
	}
	if len(out) == 0 {
		return nil, errors.New("no URL")
	}
	return out, nil
}
