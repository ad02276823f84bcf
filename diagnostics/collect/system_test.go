package collect

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func mustRE(s string) *regexp.Regexp { return regexp.MustCompile(s) }

func TestSystemRealProc(t *testing.T) {
	env := &Env{Node: "n1", Settings: map[string]string{"METAGN_DISK_PATHS": "/," + t.TempDir() + ",/no/such/path"}}
	env.Prepare()
	s, err := System{}.Collect(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"cpu_percent", "memory_percent", "load1", "load1_per_cpu", "disk_percent", "disk_percent:/"} {
		if _, ok := s.Metrics[m]; !ok {
			t.Errorf("metric %s missing: %v", m, s.Metrics)
		}
	}
	if v := s.Metrics["memory_percent"]; v <= 0 || v > 100 {
		t.Errorf("memory_percent = %v", v)
	}
	d := dataOf[SystemData](t, s)
	if len(d.TopByRSS) == 0 || len(d.TopByRSS) > 5 || d.TopByRSS[0].RSSBytes == 0 {
		t.Errorf("top by RSS = %+v", d.TopByRSS)
	}
	if !notesContain(s, "/no/such/path") {
		t.Errorf("notes = %v", s.Notes)
	}
}

// A /proc written by hand: exact figures, odd process names, junk entries.
func TestSystemFakeProc(t *testing.T) {
	root := t.TempDir()
	w := func(rel, body string) {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w("stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\nbtime 1\n")
	w("meminfo", "MemTotal:       1000 kB\nMemFree:         50 kB\nMemAvailable:    100 kB\nSwapTotal: 0 kB\n")
	w("loadavg", "4.00 2.00 1.00 1/100 123\n")
	w("42/stat", "42 (rethink db) S 1 1 1 0 -1 0 0 0 0 0 50 50 0 0 20 0 1 0 1 1000 2560 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
	w("43/stat", "43 (a) b)) S 1 1 1 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 1000 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
	w("44/stat", "garbage")
	w("self/stat", "not a pid dir")
	// A container reads the host's /proc where METAGN_HOST_PROC says.
	env := &Env{Settings: map[string]string{"METAGN_HOST_PROC": root}}
	env.Limits.CPUSample = 1
	env.Prepare()
	s, err := System{}.Collect(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if s.Metrics["memory_percent"] != 90 || s.Metrics["load1"] != 4 {
		t.Errorf("metrics = %v", s.Metrics)
	}
	d := dataOf[SystemData](t, s)
	if len(d.TopByRSS) != 2 || d.TopByRSS[0].Name != "rethink db" || d.TopByRSS[1].Name != "a) b)" {
		t.Errorf("top = %+v", d.TopByRSS)
	}
}

type panicky struct{}

func (panicky) Name() string { return "panicky" }
func (panicky) Collect(context.Context, *Env) (Section, error) {
	panic("boom TS_AUTHKEY=tskey-auth-PANIC")
}

type failing struct{}

func (failing) Name() string { return "failing" }
func (failing) Collect(context.Context, *Env) (Section, error) {
	return Section{}, errors.New("cannot read password=opensesame")
}

func TestRunIsolatesFailures(t *testing.T) {
	env := &Env{Node: "n1", Settings: map[string]string{"METAGN_LOG_GLOBS": filepath.Join(t.TempDir(), "*.log")}}
	env.Prepare()
	secs := Run(context.Background(), env, []Collector{panicky{}, failing{}, Logs{}})
	if secs[0].Name != "panicky" || secs[0].Error == "" || secs[1].Error == "" || secs[2].Error != "" {
		t.Fatalf("sections = %+v", secs)
	}
	for _, s := range secs[:2] {
		if regexp.MustCompile(`tskey-auth-PANIC|opensesame`).MatchString(s.Error) {
			t.Errorf("error leaks a secret: %q", s.Error)
		}
	}
}
