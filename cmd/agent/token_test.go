package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	os.WriteFile(good, []byte("mgnt_abc.pin\n"), 0o600)
	if tok, err := readTokenFile(good); err != nil || tok != "mgnt_abc.pin" {
		t.Fatalf("readTokenFile = %q, %v", tok, err)
	}
	for name, body := range map[string]string{"empty": " \n", "two": "mgnt_a mgnt_b\n", "big": strings.Repeat("x", 5000)} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		_, err := readTokenFile(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "mgnt_") || strings.Contains(err.Error(), "xxxx") {
			t.Errorf("%s: the error echoes the file: %v", name, err)
		}
	}
	if _, err := readTokenFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("missing file: %v", err)
	}
}

// The agent's own state dir is made private like the controller's.
func TestStateDirTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	os.MkdirAll(dir, 0o755)
	os.Chmod(dir, 0o755)
	root := newRoot()
	root.SetArgs([]string{"run", "--controller", "nats://127.0.0.1:1", "--name", "n1", "--state-dir", dir, "--tailnet=off", "--log-level", "error"})
	// Not enrolled and no token: Run refuses after the state dir is set up.
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "not enrolled") {
		t.Fatalf("run without a token: %v", err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %04o, want 0700", fi.Mode().Perm())
	}
}
