package checks

// Host checks, node-scoped: CPU, memory and disk pressure from /proc and
// statfs against thresholds (warn above 85 %, fail above 95 % by default).

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/procinfo"
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
			Description: "CPU use is below the thresholds: a short sample (/proc/stat) and the 1-minute load per CPU (/proc/loadavg); a spike only warns, a sustained saturation fails",
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

// hostProc opens the proc file system of setting METAGN_HOST_PROC
// (default /proc).
func hostProc(cx *CheckEnv) (procinfo.FS, error) {
	return procinfo.Open(cx.Setting("METAGN_HOST_PROC", procinfo.DefaultRoot))
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
	proc, err := hostProc(cx)
	if err != nil {
		return Fail("%v", err)
	}
	t0, err := proc.CPUTimes()
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
	t1, err := proc.CPUTimes()
	if err != nil {
		return Fail("%v", err)
	}
	if t1.Total <= t0.Total {
		return Unknown("%s/stat: CPU counters did not advance over %s", proc.Root(), window)
	}
	used := 100 * (t1.Busy - t0.Busy) / (t1.Total - t0.Total)
	load, lerr := proc.LoadAvg()
	if lerr != nil {
		return Fail("%v", lerr)
	}
	return judgeCPU(thr, used, window, load.Load1, t1.CPUs)
}

// judgeCPU grades CPU use so that a spike is at most a warning and only a
// sustained saturation fails. The short sample says how busy the CPUs are
// now; the 1-minute load average against the number of CPUs says whether
// it has lasted (a sweep's sample can land on a build or a burst of
// tasks). It fails when both are above the fail threshold (load alone can
// be tasks waiting on I/O, not CPU); otherwise either above a threshold
// warns. The observed values say which judged it.
func judgeCPU(thr pctThresholds, sample float64, window time.Duration, load1 float64, cpus int) Result {
	sustained := sample // no CPU count: the sample is all there is
	if cpus > 0 {
		sustained = min(100, 100*load1/float64(cpus))
	}
	obs := map[string]any{"used_pct": round1(sample), "sample_ms": window.Milliseconds(),
		"load1": load1, "cpus": cpus, "sustained_pct": round1(sustained)}
	detail := fmt.Sprintf("CPU %.1f%% used over %s, 1-minute load %.2f on %d CPUs (%.0f%%)", sample, window, load1, cpus, sustained)
	switch {
	case sample > thr.Fail && sustained > thr.Fail:
		obs["judged_on"] = "sustained"
		return Fail("%s: saturated for a minute, above the fail threshold %g%%", detail, thr.Fail).With(obs, thr)
	case sample > thr.Warn && sustained <= thr.Warn:
		obs["judged_on"] = "spike"
		return Warn("%s: a spike above the warn threshold %g%%, not sustained", detail, thr.Warn).With(obs, thr)
	case sample > thr.Warn || sustained > thr.Warn:
		obs["judged_on"] = "sustained"
		return Warn("%s: above the warn threshold %g%%", detail, thr.Warn).With(obs, thr)
	}
	obs["judged_on"] = "sample"
	return Pass("%s", detail).With(obs, thr)
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

func checkHostMemory(ctx context.Context, cx *CheckEnv) Result {
	thr, err := hostThresholds(cx, "MEM")
	if err != nil {
		return Fail("%v", err)
	}
	proc, err := hostProc(cx)
	if err != nil {
		return Fail("%v", err)
	}
	mem, err := proc.Memory()
	if err != nil {
		return Fail("%v", err)
	}
	total, avail := mem.Total, min(mem.Available, mem.Total)
	used := 100 * float64(total-avail) / float64(total)
	obs := map[string]any{"used_pct": round1(used), "total_bytes": total, "available_bytes": avail}
	return graded(thr, used, "memory", fmt.Sprintf("(%s available of %s)", humanBytes(avail), humanBytes(total))).With(obs, thr)
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
