package privdir

import (
	"os"
	"path/filepath"
	"testing"
)

func TestEnsure(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "a", "b")
	if was, err := Ensure(fresh); err != nil || was != 0 {
		t.Fatalf("new dir: was %04o, %v", was, err)
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o755)
	if was, err := Ensure(open); err != nil || was != 0o755 {
		t.Fatalf("0755 dir: was %04o, %v", was, err)
	}
	for _, d := range []string{fresh, open} {
		if fi, _ := os.Stat(d); fi.Mode().Perm() != Mode {
			t.Errorf("%s: mode %04o, want %04o", d, fi.Mode().Perm(), Mode)
		}
	}
	if was, err := Ensure(open); err != nil || was != 0 {
		t.Fatalf("private dir again: was %04o, %v", was, err)
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Ensure(file); err == nil {
		t.Fatal("a file was accepted as a directory")
	}
}
