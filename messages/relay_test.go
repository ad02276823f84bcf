package messages

import (
	"strings"
	"testing"
	"time"
)

// A relay's admission request carries a key and a token's hash, never the
// token; the hub's answer an expiry. Both are bounded and validated.
func TestDecodeRelayAdmit(t *testing.T) {
	const key = "UCJO6MXJ4Y2H7JN6I36LWAOLV7BYMX3NG6T5UUPJFAPTZ3P2DIRUETZY"
	hash := strings.Repeat("0f", 32)
	soon := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name    string
		decode  func([]byte) error
		in      string
		wantErr string
	}{
		{"request ok", decodeAs[RelayAdmitRequest], `{"v":1,"public_key":"` + key + `","token_hash":"` + hash + `"}`, ""},
		{"request bad version", decodeAs[RelayAdmitRequest], `{"v":9,"public_key":"` + key + `","token_hash":"` + hash + `"}`, "version"},
		{"request no key", decodeAs[RelayAdmitRequest], `{"v":1,"token_hash":"` + hash + `"}`, "public_key"},
		{"request seed for a key", decodeAs[RelayAdmitRequest], `{"v":1,"public_key":"S` + key[1:] + `","token_hash":"` + hash + `"}`, "public_key"},
		{"request a token, not a hash", decodeAs[RelayAdmitRequest], `{"v":1,"public_key":"` + key + `","token_hash":"mgnt_abc"}`, "token_hash"},
		{"request upper-case hash", decodeAs[RelayAdmitRequest], `{"v":1,"public_key":"` + key + `","token_hash":"` + strings.ToUpper(hash) + `"}`, "token_hash"},
		{"request short hash", decodeAs[RelayAdmitRequest], `{"v":1,"public_key":"` + key + `","token_hash":"` + hash[2:] + `"}`, "token_hash"},
		{"reply ok", decodeAs[RelayAdmitReply], `{"v":1,"expires_at":"` + soon + `"}`, ""},
		{"reply no expiry", decodeAs[RelayAdmitReply], `{"v":1}`, "expires_at"},
		{"reply too far", decodeAs[RelayAdmitReply], `{"v":1,"expires_at":"9999-01-01T00:00:00Z"}`, "expires_at"},
		{"reply not a time", decodeAs[RelayAdmitReply], `{"v":1,"expires_at":"soon"}`, "decode"},
		{"token create with a relay URL", decodeAs[TokenCreateRequest], `{"v":1,"urls":["nats://relay.site1:4222"]}`, ""},
		{"token create URL with credentials", decodeAs[TokenCreateRequest], `{"v":1,"urls":["nats://u:p@relay:4222"]}`, "urls[0]"},
		{"token create URL list in one entry", decodeAs[TokenCreateRequest], `{"v":1,"urls":["nats://a:1,nats://b:2"]}`, "urls[0]"},
		{"token create URL scheme", decodeAs[TokenCreateRequest], `{"v":1,"urls":["http://relay:4222"]}`, "urls[0]"},
		{"token create too many URLs", decodeAs[TokenCreateRequest], `{"v":1,"urls":[` + strings.Repeat(`"nats://a:1",`, MaxJoinTokenURLs) + `"nats://a:1"]}`, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.decode([]byte(tt.in))
			if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}
