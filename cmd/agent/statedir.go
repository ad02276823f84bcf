package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/cli"
)

// stateDirCmd hands the agent's state directory to the user the agent runs
// as. The DaemonSet's init container runs it as root with CAP_CHOWN only,
// because kubelet creates a hostPath directory owned by root and the agent
// container runs as a non-root user. Files owned by another user are
// unreadable to a root without CAP_DAC_OVERRIDE, so a directory already
// owned by UID:GID is left as it is.
func stateDirCmd() *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:    "chown-state-dir --owner UID:GID DIR",
		Short:  "Give the state directory (0700) and what is in it to UID:GID (for the DaemonSet's init container)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			uid, gid, err := parseOwner(owner)
			if err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			changed, err := chownStateDir(args[0], uid, gid)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: owner %d:%d (%d entries changed)\n", args[0], uid, gid, changed)
			return nil
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "65532:65532", "numeric UID:GID the agent runs as")
	return cmd
}

func parseOwner(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(s, ":")
	uid, uerr := strconv.Atoi(u)
	gid, gerr := strconv.Atoi(g)
	if !ok || uerr != nil || gerr != nil || uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("--owner %q: want numeric UID:GID", s)
	}
	return uid, gid, nil
}

// chownStateDir creates dir (0700) when missing and gives it and its
// contents to uid:gid, unless dir already belongs to them.
func chownStateDir(dir string, uid, gid int) (changed int, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("state dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("state dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, errors.New("state dir: no owner information on this platform")
	}
	if int(st.Uid) == uid && int(st.Gid) == gid {
		return 0, nil
	}
	// chmod first: once the directory is someone else's, changing its mode
	// would need CAP_FOWNER.
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return 0, fmt.Errorf("state dir: %w", err)
		}
	}
	err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
		changed++
		return nil
	})
	if err != nil {
		return changed, fmt.Errorf("state dir: %w", err)
	}
	return changed, nil
}
