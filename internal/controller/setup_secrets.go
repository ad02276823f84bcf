package controller

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/privdir"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// Sealed outputs of setup steps (a kubeconfig fetched after bootstrap) are
// kept as files, never in JetStream: DATA_DIR/secrets/CLUSTER (0700), one
// 0600 file per key. The key names the file, and keys are validated
// (messages.ValidSealedKey: lower_snake_case words and dots, no slash), so
// a node never chooses a path.

// secretsDir is the controller's directory of a cluster's secrets.
func (r *setupRunner) secretsDir(cluster string) (string, error) {
	if err := messages.ValidClusterName(cluster); err != nil {
		return "", err
	}
	root := filepath.Join(r.c.opts.DataDir, "secrets")
	if _, err := privdir.Ensure(root); err != nil {
		return "", fmt.Errorf("secrets dir: %w", err)
	}
	dir := filepath.Join(root, cluster)
	if _, err := privdir.Ensure(dir); err != nil {
		return "", fmt.Errorf("secrets dir of %s: %w", cluster, err)
	}
	return dir, nil
}

// sealEnv is what a step's Seal sees for one node.
func (r *setupRunner) sealEnv(spec messages.FleetCluster, node messages.FleetNode) (*steps.SealEnv, error) {
	dir, err := r.secretsDir(spec.Name)
	if err != nil {
		return nil, err
	}
	return &steps.SealEnv{Spec: spec, Node: node, Dir: dir, Saved: func(key string) (string, bool) {
		if messages.ValidSealedKey(key) != nil {
			return "", false
		}
		b, err := os.ReadFile(filepath.Join(dir, key))
		if err != nil {
			return "", false
		}
		return string(b), true
	}}, nil
}

// keepSealed writes the sealed outputs node returned for step st to the
// cluster's secrets dir. Only the keys the step declares
// (Step.SealedOutputs) are kept; any other key is dropped and logged (by
// name only), so a node cannot plant a kubeconfig through a step that
// does not fetch one. The caller takes raw only from the node the step
// was dispatched to (dispatcher.takeSealed by task and node). It returns
// the keys it dropped.
func (r *setupRunner) keepSealed(cluster string, st *steps.Step, node string, raw []byte) ([]string, error) {
	m, err := messages.DecodeSealed(raw)
	if err != nil {
		return nil, err
	}
	var keep map[string]string
	var dropped []string
	for k, v := range m {
		if !slices.Contains(st.SealedOutputs, k) || messages.ValidSealedKey(k) != nil {
			dropped = append(dropped, k)
			continue
		}
		if keep == nil {
			keep = map[string]string{}
		}
		keep[k] = v
	}
	if len(dropped) > 0 {
		sort.Strings(dropped)
		names := make([]string, len(dropped))
		for i, k := range dropped {
			names[i] = truncate(strconv.Quote(k), 80)
		}
		r.log.Warn("dropped sealed outputs the step does not declare", zap.String("cluster", cluster), zap.String("step", st.Name),
			zap.String("node", node), zap.Strings("keys", names), zap.Strings("declared", st.SealedOutputs))
	}
	if len(keep) == 0 {
		return dropped, nil
	}
	dir, err := r.secretsDir(cluster)
	if err != nil {
		return dropped, err
	}
	for k, v := range keep {
		if err := writeFile0600(filepath.Join(dir, k), []byte(v)); err != nil {
			return dropped, fmt.Errorf("keep %s: %w", k, err)
		}
	}
	return dropped, nil
}

// writeFile0600 replaces path atomically with a 0600 file.
func writeFile0600(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return errors.New("refusing to replace a symlink")
	}
	return os.Rename(tmp.Name(), path)
}
