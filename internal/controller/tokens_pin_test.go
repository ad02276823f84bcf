package controller

import (
	"strings"
	"testing"
	"time"
)

// A token may carry the TLS CA pin after a ".": only the secret before it
// is checked, and a pin never makes a wrong secret valid.
func TestTokenValidIgnoresPin(t *testing.T) {
	secret := TokenPrefix + strings.Repeat("a", 43)
	ts := &tokenStore{m: map[string]tokenRecord{hashToken(secret): {ExpiresAt: time.Now().Add(time.Hour), Reusable: true}}}
	pin := strings.Repeat("P", 43)
	for _, tt := range []struct {
		tok string
		ok  bool
	}{
		{secret, true},
		{secret + "." + pin, true},
		{secret + ".anything", true},
		{TokenPrefix + strings.Repeat("b", 43) + "." + pin, false},
		{"." + pin, false},
		{secret + "." + strings.Repeat("x", 100), false}, // over the length bound
	} {
		h, _, ok := ts.valid(tt.tok)
		if ok != tt.ok {
			t.Errorf("valid(%.20q...) = %v, want %v", tt.tok, ok, tt.ok)
		}
		if ok && h != hashToken(secret) {
			t.Errorf("valid(%.20q...) hashed %s, want the secret's hash", tt.tok, h)
		}
	}
}
