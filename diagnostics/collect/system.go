package collect

import (
	"context"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/procinfo"
)

// System reports CPU, memory, disk and load, and the top processes by
// resident memory and by CPU. It reads /proc and statfs only.
//
// Metrics: cpu_percent, memory_percent, memory_available_bytes,
// swap_percent, load1, load5, load15, load1_per_cpu, disk_percent (the
// fullest path), disk_percent:PATH, inodes_percent:PATH.
// Settings: METAGN_DISK_PATHS (comma-separated, default "/").
type System struct{}

func (System) Name() string { return "system" }

// Process is one entry of the top lists.
type Process struct {
	PID        int     `json:"pid"`
	Name       string  `json:"name"`
	RSSBytes   uint64  `json:"rss_bytes"`
	CPUPercent float64 `json:"cpu_percent"`
}

// SystemData is the system section's detail.
type SystemData struct {
	CPUs       int       `json:"cpus"`
	TopByRSS   []Process `json:"top_by_rss"`
	TopByCPU   []Process `json:"top_by_cpu"`
	DiskPaths  []string  `json:"disk_paths"`
	SampleMS   int64     `json:"sample_ms"`
	MemTotalKB uint64    `json:"mem_total_kb"`
}

func (System) Collect(ctx context.Context, env *Env) (Section, error) {
	var s Section
	d := SystemData{CPUs: runtime.NumCPU(), SampleMS: env.Limits.CPUSample.Milliseconds()}

	proc, err := procinfo.Open(env.ProcRoot)
	if err != nil {
		return s, err
	}

	// CPU: two samples of /proc/stat and of every process, one window apart.
	cpu0, cpuErr := proc.CPUTimes()
	procs0 := proc.Processes()
	t := time.NewTimer(env.Limits.CPUSample)
	select {
	case <-ctx.Done():
		t.Stop()
		return s, ctx.Err()
	case <-t.C:
	}
	cpu1, _ := proc.CPUTimes()
	procs1 := proc.Processes()
	if cpuErr != nil {
		addNote(&s, env, "cpu: %v", cpuErr)
	} else if total := cpu1.Total - cpu0.Total; total > 0 {
		addMetric(&s, "cpu_percent", round1((cpu1.Busy-cpu0.Busy)/total*100))
	}
	d.TopByRSS, d.TopByCPU = topProcesses(procs0, procs1, cpu1.Total-cpu0.Total, d.CPUs, env.Limits.TopProcesses)

	// Memory.
	if mem, err := proc.Memory(); err != nil {
		addNote(&s, env, "memory: %v", err)
	} else {
		avail := min(mem.Available, mem.Total)
		d.MemTotalKB = mem.Total / 1024
		addMetric(&s, "memory_percent", round1(float64(mem.Total-avail)/float64(mem.Total)*100))
		addMetric(&s, "memory_available_bytes", float64(avail))
		if st := mem.SwapTotal; st > 0 {
			addMetric(&s, "swap_percent", round1(float64(st-min(mem.SwapFree, st))/float64(st)*100))
		}
	}

	// Load.
	if l, err := proc.LoadAvg(); err != nil {
		addNote(&s, env, "load: %v", err)
	} else {
		addMetric(&s, "load1", l.Load1)
		addMetric(&s, "load5", l.Load5)
		addMetric(&s, "load15", l.Load15)
		if d.CPUs > 0 {
			addMetric(&s, "load1_per_cpu", round1(l.Load1/float64(d.CPUs)))
		}
	}

	// Disk.
	d.DiskPaths = env.list("METAGN_DISK_PATHS", "/")
	worst := -1.0
	for _, p := range d.DiskPaths {
		var st syscall.Statfs_t
		if err := syscall.Statfs(p, &st); err != nil {
			addNote(&s, env, "disk %s: %v", p, err)
			continue
		}
		if st.Blocks > 0 {
			used := st.Blocks - st.Bfree
			// As df: used / (used + available to unprivileged users).
			pct := round1(float64(used) / float64(used+st.Bavail) * 100)
			addMetric(&s, "disk_percent:"+p, pct)
			worst = max(worst, pct)
		}
		if st.Files > 0 {
			addMetric(&s, "inodes_percent:"+p, round1(float64(st.Files-st.Ffree)/float64(st.Files)*100))
		}
	}
	if worst >= 0 {
		addMetric(&s, "disk_percent", worst)
	}
	setData(&s, env, d)
	return s, nil
}

// topProcesses ranks the second sample by RSS and by CPU over the window.
// total is the CPU time of all CPUs over the window, in seconds.
func topProcesses(before, after []procinfo.Process, total float64, cpus, n int) (byRSS, byCPU []Process) {
	prev := make(map[int]float64, len(before))
	for _, p := range before {
		prev[p.PID] = p.CPUSeconds
	}
	all := make([]Process, 0, len(after))
	for _, p := range after {
		pr := Process{PID: p.PID, Name: p.Comm, RSSBytes: p.RSSBytes}
		if t0, ok := prev[p.PID]; ok && total > 0 && p.CPUSeconds >= t0 {
			// total spans all CPUs; scale so one busy core is 100%.
			pr.CPUPercent = round1((p.CPUSeconds - t0) / total * 100 * float64(max(cpus, 1)))
		}
		all = append(all, pr)
	}
	slices.SortFunc(all, func(a, b Process) int { return cmpDesc(a.RSSBytes, b.RSSBytes) })
	byRSS = slices.Clone(all[:min(n, len(all))])
	slices.SortFunc(all, func(a, b Process) int { return cmpDesc(a.CPUPercent, b.CPUPercent) })
	byCPU = slices.Clone(all[:min(n, len(all))])
	return byRSS, byCPU
}

func cmpDesc[T int | uint64 | float64](a, b T) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
