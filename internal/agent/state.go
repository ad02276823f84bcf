package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/privdir"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
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
	// Claims are the node's cluster, role and labels as the controller
	// last told them.
	Claims *messages.NodeClaims `json:"claims,omitempty"`
}

// loadIdentity loads (or makes) the node's key, in a state dir that it
// keeps private: a dir readable by others is tightened to 0700, and said.
func loadIdentity(dir string, log *zap.Logger) (nkeys.KeyPair, error) {
	if was, err := privdir.Ensure(dir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	} else if was != 0 {
		log.Warn("state dir was readable by others: tightened it to 0700 (it holds the node's identity)",
			zap.String("state_dir", dir), zap.String("was", fmt.Sprintf("%04o", was)))
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
