package checks

// Host checks, node-scoped: CPU, memory and disk pressure from /proc and
// statfs against thresholds (warn above 85 %, fail above 95 % by default).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Host threshold defaults, in percent used.
const (
	DefaultHostWarnPct = 85
	DefaultHostFailPct = 95
	// DefaultHostCPUSample is how long CPU use is measured over.
	DefaultHostCPUSample = 500 * time.Millisecond
)

// HostChecks are the host basics every node runs.
func HostChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "host_cpu",
			Description: "CPU use over a short sample (from /proc/stat) is below the thresholds",
			Timeout:     5 * time.Second,
			Run:         checkHostCPU,
		},
		{
			Name:        "host_memory",
			Description: "memory use (MemTotal - MemAvailable from /proc/meminfo) is below the thresholds",
			Timeout:     2 * time.Second,
			Run:         checkHostMemory,
		},
		{
			Name:        "host_disk",
			Description: "use of each filesystem in METAGN_HOST_DISK_PATHS is below the thresholds",
			Timeout:     5 * time.Second,
			Run:         checkHostDisk,
		},
	})
}

// pctThresholds are a warn and a fail level in percent.
type pctThresholds struct {
	Warn float64 `json:"warn_pct"`
	Fail float64 `json:"fail_pct"`
}

// hostThresholds reads METAGN_HOST_<WHAT>_WARN_PCT and _FAIL_PCT.
func hostThresholds(cx *CheckEnv, what string) (pctThresholds, error) {
	wk, fk := "METAGN_HOST_"+what+"_WARN_PCT", "METAGN_HOST_"+what+"_FAIL_PCT"
	w, err := settingFloat(cx, wk, DefaultHostWarnPct)
	if err != nil {
		return pctThresholds{}, err
	}
	f, err := settingFloat(cx, fk, DefaultHostFailPct)
	if err != nil {
		return pctThresholds{}, err
	}
	if w < 0 || w > 100 || f < 0 || f > 100 {
		return pctThresholds{}, fmt.Errorf("settings %s=%g and %s=%g: want percentages between 0 and 100", wk, w, fk, f)
	}
	if w > f {
		return pctThresholds{}, fmt.Errorf("settings %s=%g is above %s=%g", wk, w, fk, f)
	}
	return pctThresholds{Warn: w, Fail: f}, nil
}

// status grades a use in percent: above Fail fails, above Warn warns.
func (t pctThresholds) status(used float64) string {
	switch {
	case used > t.Fail:
		return messages.CheckFail
	case used > t.Warn:
		return messages.CheckWarn
	}
	return messages.CheckPass
}

func procPath(cx *CheckEnv, name string) string {
	return filepath.Join(cx.Setting("METAGN_HOST_PROC", "/proc"), name)
}

func checkHostCPU(ctx context.Context, cx *CheckEnv) Result {
	thr, err := hostThresholds(cx, "CPU")
	if err != nil {
		return Fail("%v", err)
	}
	window, err := settingDuration(cx, "METAGN_HOST_CPU_SAMPLE", DefaultHostCPUSample)
	if err != nil {
		return Fail("%v", err)
	}
	statPath := procPath(cx, "stat")
	busy0, total0, err := readCPUTimes(statPath)
	if err != nil {
		return Fail("%v", err)
	}
	t := time.NewTimer(window)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return Unknown("CPU sample of %s interrupted: %v", window, context.Cause(ctx))
	}
	busy1, total1, err := readCPUTimes(statPath)
	if err != nil {
		return Fail("%v", err)
	}
	if total1 <= total0 {
		return Unknown("%s: CPU counters did not advance over %s", statPath, window)
	}
	used := 100 * float64(busy1-busy0) / float64(total1-total0)
	obs := map[string]any{"used_pct": round1(used), "sample_ms": window.Milliseconds()}
	if load, err := os.ReadFile(procPath(cx, "loadavg")); err == nil {
		obs["loadavg"] = strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " ")
	}
	return graded(thr, used, "CPU", fmt.Sprintf("over %s", window)).With(obs, thr)
}

// graded builds the result of a percentage check.
func graded(thr pctThresholds, used float64, what, detail string) Result {
	switch thr.status(used) {
	case messages.CheckFail:
		return Fail("%s %.1f%% used %s, above the fail threshold %g%%", what, used, detail, thr.Fail)
	case messages.CheckWarn:
		return Warn("%s %.1f%% used %s, above the warn threshold %g%%", what, used, detail, thr.Warn)
	}
	return Pass("%s %.1f%% used %s", what, used, detail)
}

func round1(v float64) float64 {
	return float64(int64(v*10+0.5)) / 10
}

// readCPUTimes returns busy and total jiffies from the aggregate "cpu" line
// of /proc/stat. Idle and iowait count as not busy.
func readCPUTimes(path string) (busy, total uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("reading CPU times: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal (guest counted in user).
		var vals []uint64
		for _, s := range f[1:min(len(f), 9)] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("%s: cpu line: %q is not a number", path, s)
			}
			vals = append(vals, v)
		}
		for _, v := range vals {
			total += v
		}
		idle := vals[3]
		if len(vals) > 4 {
			idle += vals[4]
		}
		return total - idle, total, nil
	}
	return 0, 0, fmt.Errorf("%s: no aggregate cpu line", path)
}

func checkHostMemory(ctx context.Context, cx *CheckEnv) Result {
	thr, err := hostThresholds(cx, "MEM")
	if err != nil {
		return Fail("%v", err)
	}
	path := procPath(cx, "meminfo")
	total, avail, err := readMemInfo(path)
	if err != nil {
		return Fail("%v", err)
	}
	used := 100 * float64(total-avail) / float64(total)
	obs := map[string]any{"used_pct": round1(used), "total_bytes": total, "available_bytes": avail}
	return graded(thr, used, "memory", fmt.Sprintf("(%s available of %s)", humanBytes(avail), humanBytes(total))).With(obs, thr)
}

// readMemInfo returns MemTotal and MemAvailable in bytes.
func readMemInfo(path string) (total, avail uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("reading memory info: %w", err)
	}
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "MemTotal":
			dst, haveTotal = &total, true
		case "MemAvailable":
			dst, haveAvail = &avail, true
		default:
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %s: %q is not a number of kB", path, key, strings.TrimSpace(rest))
		}
		*dst = kb * 1024
	}
	if !haveTotal || !haveAvail || total == 0 || avail > total {
		return 0, 0, fmt.Errorf("%s: no usable MemTotal and MemAvailable", path)
	}
	return total, avail, nil
}

func checkHostDisk(ctx context.Context, cx *CheckEnv) Result {
	thr, err := hostThresholds(cx, "DISK")
	if err != nil {
		return Fail("%v", err)
	}
	paths := settingList(cx, "METAGN_HOST_DISK_PATHS", "/")
	type fsUse struct {
		Path      string  `json:"path"`
		UsedPct   float64 `json:"used_pct"`
		FreeBytes uint64  `json:"free_bytes"`
	}
	var uses []fsUse
	var worst Result = Pass("")
	var problems, fine []string
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return Unknown("stopped before %s: %v", p, context.Cause(ctx))
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(p, &st); err != nil {
			return Fail("statfs %s: %v", p, err)
		}
		bs := uint64(st.Bsize)
		used := (st.Blocks - st.Bfree) * bs
		avail := st.Bavail * bs
		pct := 0.0
		if used+avail > 0 {
			pct = 100 * float64(used) / float64(used+avail)
		}
		uses = append(uses, fsUse{Path: p, UsedPct: round1(pct), FreeBytes: avail})
		r := graded(thr, pct, p, fmt.Sprintf("(%s free)", humanBytes(avail)))
		switch r.Status {
		case messages.CheckPass:
			fine = append(fine, r.Message)
		default:
			problems = append(problems, r.Message)
			if worst.Status != messages.CheckFail {
				worst.Status = r.Status
			}
		}
	}
	if len(problems) > 0 {
		worst.Message = strings.Join(problems, "; ")
	} else {
		worst.Message = strings.Join(fine, "; ")
	}
	return worst.With(uses, thr)
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTP"[exp])
}
