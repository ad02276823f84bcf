package collect

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
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

	// CPU: two samples of /proc/stat and of every process, one window apart.
	cpu0, cpuErr := readCPU(env.ProcRoot)
	procs0 := readProcs(env.ProcRoot)
	t := time.NewTimer(env.Limits.CPUSample)
	select {
	case <-ctx.Done():
		t.Stop()
		return s, ctx.Err()
	case <-t.C:
	}
	cpu1, _ := readCPU(env.ProcRoot)
	procs1 := readProcs(env.ProcRoot)
	if cpuErr != nil {
		addNote(&s, env, "cpu: %v", cpuErr)
	} else if total := cpu1.total - cpu0.total; total > 0 {
		busy := float64(total-(cpu1.idle-cpu0.idle)) / float64(total) * 100
		addMetric(&s, "cpu_percent", round1(busy))
	}
	d.TopByRSS, d.TopByCPU = topProcesses(procs0, procs1, cpu1.total-cpu0.total, d.CPUs, env.Limits.TopProcesses)

	// Memory.
	if mem, err := readMeminfo(env.ProcRoot); err != nil {
		addNote(&s, env, "memory: %v", err)
	} else if total := mem["MemTotal"]; total > 0 {
		avail, ok := mem["MemAvailable"]
		if !ok {
			avail = mem["MemFree"] + mem["Buffers"] + mem["Cached"]
		}
		d.MemTotalKB = total
		addMetric(&s, "memory_percent", round1(float64(total-min(avail, total))/float64(total)*100))
		addMetric(&s, "memory_available_bytes", float64(avail*1024))
		if st := mem["SwapTotal"]; st > 0 {
			addMetric(&s, "swap_percent", round1(float64(st-min(mem["SwapFree"], st))/float64(st)*100))
		}
	}

	// Load.
	if b, err := os.ReadFile(filepath.Join(env.ProcRoot, "loadavg")); err != nil {
		addNote(&s, env, "load: %v", err)
	} else if f := strings.Fields(string(b)); len(f) >= 3 {
		for i, name := range []string{"load1", "load5", "load15"} {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				addMetric(&s, name, v)
				if i == 0 && d.CPUs > 0 {
					addMetric(&s, "load1_per_cpu", round1(v/float64(d.CPUs)))
				}
			}
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

type cpuTimes struct{ total, idle uint64 }

func readCPU(root string) (cpuTimes, error) {
	f, err := os.Open(filepath.Join(root, "stat"))
	if err != nil {
		return cpuTimes{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("cpu "))
		if !ok {
			continue
		}
		var c cpuTimes
		for i, fld := range strings.Fields(string(rest)) {
			v, _ := strconv.ParseUint(fld, 10, 64)
			if i < 8 { // user nice system idle iowait irq softirq steal; guest is in user
				c.total += v
			}
			if i == 3 || i == 4 {
				c.idle += v
			}
		}
		return c, nil
	}
	return cpuTimes{}, os.ErrNotExist
}

// readMeminfo returns /proc/meminfo in kB by field name.
func readMeminfo(root string) (map[string]uint64, error) {
	b, err := os.ReadFile(filepath.Join(root, "meminfo"))
	if err != nil {
		return nil, err
	}
	m := make(map[string]uint64, 8)
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached", "SwapTotal", "SwapFree":
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			m[k] = n
		}
	}
	return m, nil
}

// topProcesses ranks the second sample by RSS and by CPU over the window.
func topProcesses(before, after []proc, totalTicks uint64, cpus, n int) (byRSS, byCPU []Process) {
	prev := make(map[int]uint64, len(before))
	for _, p := range before {
		prev[p.PID] = p.Ticks
	}
	all := make([]Process, 0, len(after))
	for _, p := range after {
		pr := Process{PID: p.PID, Name: p.Comm, RSSBytes: p.RSS}
		if t0, ok := prev[p.PID]; ok && totalTicks > 0 && p.Ticks >= t0 {
			// totalTicks spans all CPUs; scale so one busy core is 100%.
			pr.CPUPercent = round1(float64(p.Ticks-t0) / float64(totalTicks) * 100 * float64(max(cpus, 1)))
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
