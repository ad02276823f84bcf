package messages

import (
	"slices"
	"strings"
	"testing"
)

func TestJoinToken(t *testing.T) {
	pin := strings.Repeat("A", 43)
	for _, tt := range []struct {
		in   string
		want JoinToken
	}{
		{"mgnt_abc", JoinToken{Secret: "mgnt_abc"}},
		{"mgnt_abc." + pin, JoinToken{Secret: "mgnt_abc", Pin: pin}},
		{JoinToken{Secret: "mgnt_abc", URLs: []string{"nats://10.0.0.1:4222", "tls://c2.example:4222"}}.String(),
			JoinToken{Secret: "mgnt_abc", URLs: []string{"nats://10.0.0.1:4222", "tls://c2.example:4222"}}},
		{JoinToken{Secret: "mgnt_abc", Pin: pin, URLs: []string{"nats://[::1]:4222"}}.String(),
			JoinToken{Secret: "mgnt_abc", Pin: pin, URLs: []string{"nats://[::1]:4222"}}},
	} {
		got, err := ParseJoinToken(tt.in)
		if err != nil || got.Secret != tt.want.Secret || got.Pin != tt.want.Pin || !slices.Equal(got.URLs, tt.want.URLs) {
			t.Errorf("ParseJoinToken(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("%q encodes back as %q", tt.in, got.String())
		}
	}
	enc := func(s string) string { return JoinToken{Secret: "mgnt_SECRETVALUE", URLs: []string{s}}.String() }
	for _, tt := range []struct{ in, want string }{
		{"", "empty"},
		{".pin", "empty"},
		{"mgnt_SECRETVALUE.p.q", "part 3 is neither"},
		{"mgnt_SECRETVALUE.u=!!", "not base64url"},
		{enc("http://h:1"), "scheme must be nats or tls"},
		{enc("nats://user:hunter2@h:1"), "carries credentials"},
		{enc("nats://h"), "want SCHEME://HOST:PORT"},
		{enc("nats://h:1/x"), "HOST:PORT only"},
		{enc(strings.Repeat("nats://h:1,", 17)), "more than 16"},
		{strings.Repeat("x", MaxJoinTokenBytes+1), "at most 4096"},
	} {
		_, err := ParseJoinToken(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseJoinToken(%.40q): %v, want an error with %q", tt.in, err, tt.want)
		}
		if err != nil && (strings.Contains(err.Error(), "SECRETVALUE") || strings.Contains(err.Error(), "hunter2")) {
			t.Errorf("the error repeats a secret: %v", err)
		}
	}
}
