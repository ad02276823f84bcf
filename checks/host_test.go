package checks

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// runHost runs one host check by name with settings.
func runHost(t *testing.T, name string, settings map[string]string) messages.CheckResult {
	t.Helper()
	checks, err := Select(HostChecks(), Selection{Names: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	res := RunChecks(context.Background(), testEnv(settings), checks, RunOptions{})
	if len(res) != 1 {
		t.Fatalf("%d results", len(res))
	}
	return res[0]
}

func TestHostChecksAgainstRealProc(t *testing.T) {
	low := func(what string) map[string]string {
		return map[string]string{"METAGN_HOST_" + what + "_WARN_PCT": "0", "METAGN_HOST_" + what + "_FAIL_PCT": "0", "METAGN_HOST_CPU_SAMPLE": "200ms"}
	}
	high := func(what string) map[string]string {
		return map[string]string{"METAGN_HOST_" + what + "_WARN_PCT": "100", "METAGN_HOST_" + what + "_FAIL_PCT": "100", "METAGN_HOST_CPU_SAMPLE": "200ms"}
	}
	warnOnly := func(what string) map[string]string {
		return map[string]string{"METAGN_HOST_" + what + "_WARN_PCT": "0", "METAGN_HOST_" + what + "_FAIL_PCT": "100", "METAGN_HOST_CPU_SAMPLE": "200ms"}
	}
	for _, tc := range []struct {
		check, what string
		settings    map[string]string
		status      string
		msg         string
	}{
		{"host_memory", "MEM", low("MEM"), messages.CheckFail, "above the fail threshold 0%"},
		{"host_memory", "MEM", warnOnly("MEM"), messages.CheckWarn, "above the warn threshold 0%"},
		{"host_memory", "MEM", high("MEM"), messages.CheckPass, "available of"},
		{"host_disk", "DISK", low("DISK"), messages.CheckFail, "/ "},
		{"host_disk", "DISK", high("DISK"), messages.CheckPass, "free"},
		{"host_cpu", "CPU", low("CPU"), messages.CheckFail, "above the fail threshold 0%"},
		{"host_cpu", "CPU", high("CPU"), messages.CheckPass, "over 200ms"},
		{"host_cpu", "CPU", map[string]string{"METAGN_HOST_CPU_FAIL_PCT": "lots"}, messages.CheckFail, `setting METAGN_HOST_CPU_FAIL_PCT: "lots" is not a number`},
		{"host_memory", "MEM", map[string]string{"METAGN_HOST_MEM_WARN_PCT": "96"}, messages.CheckFail, "METAGN_HOST_MEM_WARN_PCT=96 is above METAGN_HOST_MEM_FAIL_PCT=95"},
		{"host_disk", "DISK", map[string]string{"METAGN_HOST_DISK_PATHS": "/, /nonexistent-mgn"}, messages.CheckFail, "statfs /nonexistent-mgn"},
	} {
		t.Run(tc.check+"/"+tc.status, func(t *testing.T) {
			if tc.check == "host_cpu" && tc.status == messages.CheckFail {
				// Keep a core busy so the sample cannot read 0 %.
				stop := make(chan struct{})
				defer close(stop)
				go func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
					}
				}()
			}
			r := runHost(t, tc.check, tc.settings)
			if r.Status != tc.status || !strings.Contains(r.Message, tc.msg) {
				t.Fatalf("%s: %s %q, want %s containing %q", tc.check, r.Status, r.Message, tc.status, tc.msg)
			}
			if strings.Contains(r.Message, "threshold") || r.Status == messages.CheckPass {
				var obs any
				if err := json.Unmarshal(r.Observed, &obs); err != nil || obs == nil {
					t.Errorf("observed %s: %v", r.Observed, err)
				}
				if len(r.Threshold) == 0 {
					t.Error("no threshold")
				}
			}
		})
	}
}

// TestHostMemoryExact uses a proc directory of its own so the percentage is
// known.
func TestHostMemoryExact(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("meminfo", "MemTotal:       1000000 kB\nMemFree:          10000 kB\nMemAvailable:     100000 kB\n")
	write("stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n")
	r := runHost(t, "host_memory", map[string]string{"METAGN_HOST_PROC": dir})
	if r.Status != messages.CheckWarn || !strings.Contains(r.Message, "memory 90.0% used") {
		t.Fatalf("%s %q", r.Status, r.Message)
	}
	if !strings.Contains(string(r.Observed), `"used_pct":90`) || string(r.Threshold) != `{"warn_pct":85,"fail_pct":95}` {
		t.Errorf("observed %s threshold %s", r.Observed, r.Threshold)
	}
	// Counters that do not move cannot be graded.
	r = runHost(t, "host_cpu", map[string]string{"METAGN_HOST_PROC": dir, "METAGN_HOST_CPU_SAMPLE": "10ms"})
	if r.Status != messages.CheckUnknown || !strings.Contains(r.Message, "did not advance") {
		t.Fatalf("cpu on frozen counters: %s %q", r.Status, r.Message)
	}
	write("meminfo", "MemTotal: lots\n")
	r = runHost(t, "host_memory", map[string]string{"METAGN_HOST_PROC": dir})
	if r.Status != messages.CheckFail || !strings.Contains(r.Message, "meminfo") {
		t.Fatalf("bad meminfo: %s %q", r.Status, r.Message)
	}
}

// A CPU spike (a build, a burst of tasks during the sample) warns at most;
// only a saturation the 1-minute load confirms fails, and the observed
// values say which judged it.
func TestJudgeCPU(t *testing.T) {
	thr := pctThresholds{Warn: 85, Fail: 95}
	for _, tc := range []struct {
		name         string
		sample, load float64
		cpus         int
		status, on   string
	}{
		{"idle", 10, 0.2, 2, messages.CheckPass, "sample"},
		{"spike", 99, 0.5, 2, messages.CheckWarn, "spike"},
		{"sustained saturation", 99, 2.5, 2, messages.CheckFail, "sustained"},
		{"busy for a minute, quiet now", 20, 1.9, 2, messages.CheckWarn, "sustained"},
		{"load from I/O, CPUs idle", 5, 8, 2, messages.CheckWarn, "sustained"},
		{"no CPU count", 99, 0, 0, messages.CheckFail, "sustained"},
	} {
		r := judgeCPU(thr, tc.sample, 500*time.Millisecond, tc.load, tc.cpus)
		obs, _ := r.Observed.(map[string]any)
		if r.Status != tc.status || obs["judged_on"] != tc.on {
			t.Errorf("%s: %s judged on %v (%s), want %s on %s", tc.name, r.Status, obs["judged_on"], r.Message, tc.status, tc.on)
		}
	}
}
