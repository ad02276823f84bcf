package messages

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
)

// Sealed values are the secrets a setup step needs or produces (Task.Sealed,
// Result.Sealed): a JSON object of strings keyed by lower_snake_case names
// with dots ("kubeconfig", "talos.machine_config"). A key is never a path:
// the controller names the file it keeps a value in, never the node.

var sealedKey = regexp.MustCompile(`^[a-z][a-z0-9_.]{0,62}$`)

// ValidSealedKey checks the key of a sealed value.
func ValidSealedKey(k string) error {
	if !sealedKey.MatchString(k) || bytes.Contains([]byte(k), []byte("..")) || k[len(k)-1] == '.' {
		return fmt.Errorf("sealed key %q: want lower_snake_case words joined by dots, 1 to 63 characters", truncateKey(k))
	}
	return nil
}

func truncateKey(k string) string {
	if len(k) > 64 {
		return k[:64] + "..."
	}
	return k
}

// ValidateSealed checks raw sealed values (empty is none): size, a JSON
// object of strings, valid keys, at most MaxSealedKeys. Errors never show
// a value.
func ValidateSealed(raw json.RawMessage) error {
	_, err := DecodeSealed(raw)
	return err
}

// DecodeSealed parses sealed values; empty raw is none.
func DecodeSealed(raw json.RawMessage) (map[string]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	if len(raw) > MaxSealedBytes {
		return nil, Errorf(CodeTooLarge, "%d bytes, at most %d", len(raw), MaxSealedBytes)
	}
	var m map[string]string
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&m); err != nil || dec.More() || m == nil {
		return nil, fmt.Errorf("want a JSON object of strings")
	}
	if len(m) > MaxSealedKeys {
		return nil, fmt.Errorf("%d values, at most %d", len(m), MaxSealedKeys)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := ValidSealedKey(k); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// EncodeSealed encodes sealed values (nil for none) and checks them.
func EncodeSealed(m map[string]string) (json.RawMessage, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := ValidateSealed(b); err != nil {
		return nil, err
	}
	return b, nil
}
