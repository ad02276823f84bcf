package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"

	"github.com/guildnet/metaguildnet/internal/runinfo"
)

// The state dir holds the node's identity (an NKey seed that never leaves
// the node), whether it has enrolled, and the task journal.
const (
	identityFile = "identity.seed"
	nodeFile     = "node.json"
	journalDir   = "journal"
)

type nodeState struct {
	Name       string `json:"name"`
	Controller string `json:"controller"`
	Enrolled   bool   `json:"enrolled"`
}

func loadIdentity(dir string) (nkeys.KeyPair, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	return runinfo.LoadOrCreateUserKey(filepath.Join(dir, identityFile), true)
}

func loadNodeState(dir string) (nodeState, error) {
	var s nodeState
	b, err := os.ReadFile(filepath.Join(dir, nodeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read %s: %w", filepath.Join(dir, nodeFile), err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, nodeFile), err)
	}
	return s, nil
}

func saveNodeState(dir string, s nodeState) error {
	b, _ := json.MarshalIndent(s, "", "  ")
	path := filepath.Join(dir, nodeFile)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}
