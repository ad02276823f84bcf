package messages

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Relays (leaf nodes, docs/HA.md) learn which keys are enrolled from the
// active controller over their leaf link, in pages, and refresh when it
// announces a change. Public keys only: nothing here is a secret.
const (
	// RelayKeysSubject is asked with a RelayKeysRequest; the answer is a
	// RelayKeysReply in the relay's inbox (RelayInboxPrefix).
	RelayKeysSubject = "mgn.relay.keys"
	// RelayChangedSubject carries an empty message whenever a node is
	// enrolled, removed or re-keyed: relays ask again.
	RelayChangedSubject = "mgn.relay.changed"
	// RelayInboxPrefix is where relays hear answers.
	RelayInboxPrefix = "_INBOX_RELAY."
	// MaxRelayKeysPage bounds the keys in one reply.
	MaxRelayKeysPage = 2000
	// RelayAdmitSubject is asked with a RelayAdmitRequest when an agent
	// connects to a relay with a join token: the hub decides as its own
	// authenticator would and answers a RelayAdmitReply (admitted) or an
	// ErrorReply (refused) in the relay's inbox. Only the token's hash
	// crosses the link, never the token.
	RelayAdmitSubject = "mgn.relay.admit"
	// MaxRelayAdmitAhead bounds how far in the future an admission's
	// expiry may lie (a join token lives at most a year).
	MaxRelayAdmitAhead = 366 * 24 * time.Hour
)

// RelayAdmitRequest asks the hub whether the key PublicKey may open an
// enrollment connection with the join token whose SHA-256 (hex, of the
// token's secret part, as the hub's token store keys it) is TokenHash.
type RelayAdmitRequest struct {
	V         int    `json:"v"`
	PublicKey string `json:"public_key"`
	TokenHash string `json:"token_hash"`
}

// RelayAdmitReply admits the enrollment connection until ExpiresAt (the
// token's expiry): the relay closes it then, as the hub would.
type RelayAdmitReply struct {
	V         int       `json:"v"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (r *RelayAdmitRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if err := validUserKey(r.PublicKey); err != nil {
		return fmt.Errorf("public_key: %w", err)
	}
	if len(r.TokenHash) != 64 || strings.IndexFunc(r.TokenHash, func(c rune) bool { return !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') }) >= 0 {
		return errors.New("token_hash: not a SHA-256 in lower-case hex (64 characters)")
	}
	return nil
}

func (r *RelayAdmitReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.ExpiresAt.IsZero() {
		return errors.New("expires_at: missing")
	}
	if time.Until(r.ExpiresAt) > MaxRelayAdmitAhead {
		return fmt.Errorf("expires_at: %s is more than %v ahead", r.ExpiresAt.Format(time.RFC3339), MaxRelayAdmitAhead)
	}
	return nil
}

// RelayKeysRequest asks for the enrolled keys of nodes named after After
// (in name order), one page.
type RelayKeysRequest struct {
	V     int    `json:"v"`
	After string `json:"after,omitempty"`
}

// RelayKey is one enrolled node's name and NKey.
type RelayKey struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// RelayKeysReply is one page; Next is the After of the next page, "" at
// the end.
type RelayKeysReply struct {
	V     int        `json:"v"`
	Nodes []RelayKey `json:"nodes"`
	Next  string     `json:"next,omitempty"`
}

func (r *RelayKeysRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.After != "" {
		if err := ValidNodeName(r.After); err != nil {
			return fmt.Errorf("after: %w", err)
		}
	}
	return nil
}

func (r *RelayKeysReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Nodes) > MaxRelayKeysPage {
		return fmt.Errorf("nodes: %d in one page, at most %d", len(r.Nodes), MaxRelayKeysPage)
	}
	for i, n := range r.Nodes {
		if err := ValidNodeName(n.Name); err != nil {
			return fmt.Errorf("nodes[%d].name: %w", i, err)
		}
		if err := validUserKey(n.PublicKey); err != nil {
			return fmt.Errorf("nodes[%d].public_key: %w", i, err)
		}
	}
	if r.Next != "" {
		if err := ValidNodeName(r.Next); err != nil {
			return fmt.Errorf("next: %w", err)
		}
	}
	return nil
}

// validUserKey checks the shape of an NKey user public key: 56
// characters of base32, starting with U.
func validUserKey(k string) error {
	if len(k) != 56 || k[0] != 'U' {
		return errors.New("not an NKey user public key (56 characters starting with U)")
	}
	if strings.IndexFunc(k, func(r rune) bool { return !(r >= 'A' && r <= 'Z' || r >= '2' && r <= '7') }) >= 0 {
		return errors.New("not an NKey user public key (base32)")
	}
	return nil
}
