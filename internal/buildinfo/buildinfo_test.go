package buildinfo

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

func TestVersionCommandPrintsStampedValues(t *testing.T) {
	defer func(v, c, d string) { Version, Commit, Date = v, c, d }(Version, Commit, Date)
	Version, Commit, Date = "v1.2.3", "0123456789abcdef", "2026-11-29T20:00:00Z"

	var out bytes.Buffer
	cmd := Command()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--json"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	var got Info
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("--json printed %q: %v", out.String(), err)
	}
	want := Info{Version: "v1.2.3", Commit: "0123456789abcdef", Date: "2026-11-29T20:00:00Z",
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}

	out.Reset()
	cmd = Command()
	cmd.SetOut(&out)
	cmd.SetArgs(nil)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"version:    v1.2.3", "commit:     0123456789abcdef", "build date: 2026-11-29T20:00:00Z", runtime.Version()} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("human output lacks %q:\n%s", s, out.String())
		}
	}
}

func TestVersionCommandRefusesArguments(t *testing.T) {
	cmd := Command()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"extra"})
	if err := cmd.Execute(); err == nil {
		t.Fatal("version accepted an argument")
	}
}

func TestLDFlagsNameThisPackage(t *testing.T) {
	got := LDFlags("v1", "abc", "2026-01-02T03:04:05Z")
	want := "-X " + Package + ".Version=v1 -X " + Package + ".Commit=abc -X " + Package + ".Date=2026-01-02T03:04:05Z"
	if got != want {
		t.Fatalf("LDFlags = %q, want %q", got, want)
	}
}
