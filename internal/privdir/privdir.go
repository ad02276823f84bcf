// Package privdir makes the directories that hold secrets (the controller's
// data dir with the operator key and JetStream state, an agent's state dir
// with its node identity) and keeps them private to their owner.
//
// A directory that already exists with group or other access is tightened
// to 0700, and the caller is told what it was so it can say so: refusing to
// start would leave an operator with a down fleet over a mode bit, while
// silently leaving it open would leave the keys readable.
package privdir

import (
	"fmt"
	"io/fs"
	"os"
)

// Mode is what Ensure leaves a directory with.
const Mode fs.FileMode = 0o700

// Ensure creates dir (and its parents) with Mode, or tightens an existing
// dir to Mode. It returns the mode the directory had when it was changed,
// and 0 when nothing changed.
func Ensure(dir string) (was fs.FileMode, err error) {
	if err := os.MkdirAll(dir, Mode); err != nil {
		return 0, fmt.Errorf("create %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("%s is not a directory", dir)
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return 0, nil
	}
	if err := os.Chmod(dir, Mode); err != nil {
		return 0, fmt.Errorf("%s has mode %04o, readable by others, and could not be made private: %w", dir, perm, err)
	}
	return perm, nil
}
