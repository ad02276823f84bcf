package procinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFakeProc(t *testing.T) {
	root := t.TempDir()
	w := func(rel, body string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w("stat", "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 100 0 100 700 100 0 0 0 0 0\nbtime 1700000000\n")
	// No MemAvailable (kernels before 3.14): free + buffers + cached.
	w("meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 50 kB\nSwapTotal: 10 kB\nSwapFree: 5 kB\n")
	w("loadavg", "4.00 2.00 1.00 1/100 123\n")
	w("42/stat", "42 (a) b)) S 1 1 1 0 -1 0 0 0 0 0 50 50 0 0 20 0 1 0 1 1000 3"+strings.Repeat(" 0", 22)+"\n")
	w("43/stat", "garbage")
	fs, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	cpu, err := fs.CPUTimes()
	if err != nil || cpu.Total != 10 || cpu.Busy != 2 {
		t.Errorf("cpu %+v, %v; want busy 2 s of 10 s", cpu, err)
	}
	if bt, err := fs.BootTime(); err != nil || bt != 1700000000 {
		t.Errorf("boot time %d, %v", bt, err)
	}
	m, err := fs.Memory()
	if err != nil || m.Total != 1000*1024 || m.Available != 200*1024 || m.SwapFree != 5*1024 {
		t.Errorf("memory %+v, %v", m, err)
	}
	if l, err := fs.LoadAvg(); err != nil || l.Load1 != 4 || l.Load15 != 1 {
		t.Errorf("load %+v, %v", l, err)
	}
	ps := fs.Processes()
	if len(ps) != 1 || ps[0].PID != 42 || ps[0].Comm != "a) b)" || ps[0].CPUSeconds != 1 || ps[0].RSSBytes != 3*uint64(os.Getpagesize()) {
		t.Errorf("processes %+v", ps)
	}
	w("meminfo", "MemTotal: lots\n")
	if _, err := fs.Memory(); err == nil || !strings.Contains(err.Error(), "meminfo") {
		t.Errorf("bad meminfo: %v", err)
	}
	if _, err := Open(filepath.Join(root, "absent")); err == nil {
		t.Error("opened a proc that is not there")
	}
}

func TestRealProc(t *testing.T) {
	fs, err := Open("")
	if err != nil {
		t.Fatalf("opening /proc: %v", err)
	}
	if m, err := fs.Memory(); err != nil || m.Total == 0 || m.Available > m.Total {
		t.Errorf("memory %+v, %v", m, err)
	}
	if c, err := fs.CPUTimes(); err != nil || c.Total <= 0 || c.Busy > c.Total {
		t.Errorf("cpu %+v, %v", c, err)
	}
	self := os.Getpid()
	found := false
	for _, p := range fs.Processes() {
		found = found || p.PID == self
	}
	if !found {
		t.Errorf("this process (%d) is not listed", self)
	}
}
