// Package procinfo reads the host's /proc through github.com/prometheus/procfs
// (node_exporter's own library): CPU times, memory, load average, boot time
// and processes. It is the one place MetaGuildNet parses /proc; the host
// checks, the system and component collectors and the facts task ask it.
//
//	fs, err := procinfo.Open("")   // "" is /proc; tests pass a directory of their own
//	cpu, err := fs.CPUTimes()
package procinfo

import (
	"fmt"

	"github.com/prometheus/procfs"
)

// DefaultRoot is where proc is mounted.
const DefaultRoot = "/proc"

// FS is a proc file system.
type FS struct {
	fs   procfs.FS
	root string
}

// Open returns the proc file system at root ("" means [DefaultRoot]).
func Open(root string) (FS, error) {
	if root == "" {
		root = DefaultRoot
	}
	fs, err := procfs.NewFS(root)
	if err != nil {
		return FS{}, fmt.Errorf("opening proc at %s: %w", root, err)
	}
	return FS{fs: fs, root: root}, nil
}

// Root is where the file system is mounted.
func (f FS) Root() string { return f.root }

// CPUTimes are the aggregate CPU times of all CPUs, in seconds.
type CPUTimes struct {
	// Busy is user, nice, system, irq, softirq and steal (guest time is
	// part of user).
	Busy float64
	// Total is Busy plus idle and iowait.
	Total float64
	// CPUs is how many CPUs stat lists (the cpuN lines).
	CPUs int
}

// CPUTimes reads the aggregate cpu line of stat.
func (f FS) CPUTimes() (CPUTimes, error) {
	st, err := f.stat("CPU times")
	if err != nil {
		return CPUTimes{}, err
	}
	c := st.CPUTotal
	idle := c.Idle + c.Iowait
	total := c.User + c.Nice + c.System + c.Idle + c.Iowait + c.IRQ + c.SoftIRQ + c.Steal
	return CPUTimes{Busy: total - idle, Total: total, CPUs: len(st.CPU)}, nil
}

// BootTime reads the boot time (seconds since the epoch) from stat.
func (f FS) BootTime() (int64, error) {
	st, err := f.stat("boot time")
	if err != nil {
		return 0, err
	}
	return int64(st.BootTime), nil
}

// stat reads stat for what.
func (f FS) stat(what string) (procfs.Stat, error) {
	st, err := f.fs.Stat()
	if err != nil {
		return procfs.Stat{}, fmt.Errorf("reading %s from %s/stat: %w", what, f.root, err)
	}
	return st, nil
}

// Memory is what meminfo says of memory, in bytes.
type Memory struct {
	Total     uint64
	Available uint64 // MemAvailable, else MemFree + Buffers + Cached (kernels before 3.14)
	SwapTotal uint64
	SwapFree  uint64
}

// Memory reads meminfo. A meminfo without MemTotal is an error.
func (f FS) Memory() (Memory, error) {
	mi, err := f.fs.Meminfo()
	if err != nil {
		return Memory{}, fmt.Errorf("reading %s/meminfo: %w", f.root, err)
	}
	if mi.MemTotalBytes == nil || *mi.MemTotalBytes == 0 {
		return Memory{}, fmt.Errorf("reading %s/meminfo: no MemTotal", f.root)
	}
	m := Memory{Total: *mi.MemTotalBytes, SwapTotal: val(mi.SwapTotalBytes), SwapFree: val(mi.SwapFreeBytes)}
	if mi.MemAvailableBytes != nil {
		m.Available = *mi.MemAvailableBytes
	} else {
		m.Available = val(mi.MemFreeBytes) + val(mi.BuffersBytes) + val(mi.CachedBytes)
	}
	return m, nil
}

func val(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

// LoadAvg is the 1, 5 and 15 minute load average.
type LoadAvg = procfs.LoadAvg

// LoadAvg reads loadavg.
func (f FS) LoadAvg() (LoadAvg, error) {
	l, err := f.fs.LoadAvg()
	if err != nil {
		return LoadAvg{}, fmt.Errorf("reading %s/loadavg: %w", f.root, err)
	}
	return *l, nil
}

// Process is one process as its stat file describes it.
type Process struct {
	PID        int
	Comm       string  // as the kernel keeps it: at most 15 bytes
	CPUSeconds float64 // user + system time
	RSSBytes   uint64
}

// Processes lists the processes. Processes that vanish while being read
// are left out; a proc that cannot be listed gives none.
func (f FS) Processes() []Process {
	ps, err := f.fs.AllProcs()
	if err != nil {
		return nil
	}
	out := make([]Process, 0, len(ps))
	for _, p := range ps {
		st, err := p.Stat()
		if err != nil {
			continue
		}
		out = append(out, Process{PID: p.PID, Comm: st.Comm, CPUSeconds: st.CPUTime(), RSSBytes: uint64(max(st.ResidentMemory(), 0))})
	}
	return out
}
