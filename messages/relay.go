package messages

import (
	"errors"
	"fmt"
	"strings"
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
)

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
