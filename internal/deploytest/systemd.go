package deploytest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// VerifyUnit runs `systemd-analyze verify` on a copy of the unit at path
// whose ExecStart= binary is replaced by exe (verify insists that it
// exists and is executable). It returns every line verify printed about the
// unit: unknown keys, values it could not parse, missing binaries. verify
// exits 0 on most of these, so an empty list, not the exit code, is a pass.
func VerifyUnit(ctx context.Context, path, exe string) ([]string, error) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		return nil, err
	}
	argv, err := ExecStart(path)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mgn-unit-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, filepath.Base(argv[0]))
	if err := os.Symlink(exe, bin); err != nil {
		return nil, fmt.Errorf("link the binary: %w", err)
	}
	unit := filepath.Join(dir, filepath.Base(path))
	text := strings.Replace(string(b), "ExecStart="+argv[0], "ExecStart="+bin, 1)
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("copy the unit: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, "verify", "--man=no", unit)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	var problems []string
	for line := range strings.Lines(string(out)) {
		if line = strings.TrimSpace(line); line != "" {
			problems = append(problems, strings.ReplaceAll(line, dir+"/", ""))
		}
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return nil, fmt.Errorf("systemd-analyze verify: %w", err)
	}
	if err != nil && len(problems) == 0 {
		problems = append(problems, "systemd-analyze verify: "+err.Error())
	}
	return problems, nil
}

// RequireVerifiedUnit fails t unless `systemd-analyze verify` accepts the
// unit at path, with ExecStart= pointing at the running test binary (built
// from the same main package as the real binary). Without systemd-analyze
// it skips, and with CI=true it fails: CI must not pass a check it never ran.
func RequireVerifiedUnit(t testing.TB, path string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testenv.Skip(t, "systemd-analyze not installed (make apt-deps): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := VerifyUnit(t.Context(), path, exe)
	if err != nil {
		t.Fatalf("verify %s: %v", path, err)
	}
	for _, p := range problems {
		t.Errorf("systemd-analyze verify %s: %s", filepath.Base(path), p)
	}
}
