package main

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

func owner(t *testing.T, p string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// The init container's command gives a root-owned state directory, and
// what an earlier root agent left in it, to the agent's user.
func TestChownStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "chown to another user needs root")
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(filepath.Join(dir, "tailnet"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tailnet", "tailscaled.state"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"chown-state-dir", "--owner", "65532:65533", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "tailnet"), filepath.Join(dir, "tailnet", "tailscaled.state")} {
		if u, g := owner(t, p); u != 65532 || g != 65533 {
			t.Errorf("%s owned by %d:%d", p, u, g)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", fi.Mode().Perm())
	}
	// A second start finds it done.
	if n, err := chownStateDir(dir, 65532, 65533); err != nil || n != 0 {
		t.Fatalf("second run changed %d (%v)", n, err)
	}
	for _, bad := range []string{"65532", "a:b", "-1:0", ""} {
		if _, _, err := parseOwner(bad); err == nil {
			t.Errorf("--owner %q accepted", bad)
		}
	}
}
