package deploytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// The verify check must catch what systemd itself would ignore with a
// warning: a misspelt key, a value it cannot parse, a binary that is not
// there.
func TestVerifyUnitReportsProblems(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testenv.Skip(t, "systemd-analyze not installed (make apt-deps): %v", err)
	}
	dir := t.TempDir()
	good := "[Unit]\nDescription=x\n\n[Service]\nExecStart=/usr/local/bin/agent run\nProtectSystem=strict\n\n[Install]\nWantedBy=multi-user.target\n"
	for name, tc := range map[string]struct {
		unit, exe, want string
	}{
		"good":        {unit: good, exe: "/bin/true"},
		"unknown key": {unit: strings.Replace(good, "ProtectSystem=strict", "ProtectSystm=strict", 1), exe: "/bin/true", want: "Unknown key"},
		"bad value":   {unit: strings.Replace(good, "strict", "very", 1), exe: "/bin/true", want: "protect system"},
		"no binary":   {unit: good, exe: filepath.Join(dir, "missing"), want: "agent"},
	} {
		p := filepath.Join(dir, "x.service")
		if err := os.WriteFile(p, []byte(tc.unit), 0o644); err != nil {
			t.Fatal(err)
		}
		problems, err := VerifyUnit(context.Background(), p, tc.exe)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := strings.Join(problems, "\n")
		switch {
		case tc.want == "" && got != "":
			t.Errorf("%s: problems reported: %s", name, got)
		case tc.want != "" && !strings.Contains(got, tc.want):
			t.Errorf("%s: want a problem naming %q, got %q", name, tc.want, got)
		}
	}
}
