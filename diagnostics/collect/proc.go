package collect

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// proc is one process as /proc/PID/stat describes it.
type proc struct {
	PID   int
	Comm  string
	Ticks uint64 // utime + stime
	RSS   uint64 // bytes
}

// readProcs lists the processes under root (normally /proc). Processes that
// vanish while being read are skipped.
func readProcs(root string) []proc {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	page := uint64(os.Getpagesize())
	out := make([]proc, 0, len(ents))
	buf := make([]byte, 0, 512)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(root, e.Name(), "stat"))
		if err != nil {
			continue
		}
		buf = buf[:cap(buf)]
		n, _ := f.Read(buf)
		f.Close()
		if p, ok := parseStat(buf[:n], page); ok {
			p.PID = pid
			out = append(out, p)
		}
	}
	return out
}

// parseStat parses one /proc/PID/stat line: "pid (comm) state ppid ...".
// comm may contain spaces and parentheses, so it ends at the last ')'.
func parseStat(b []byte, page uint64) (proc, bool) {
	open := bytes.IndexByte(b, '(')
	close := bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return proc{}, false
	}
	p := proc{Comm: string(b[open+1 : close])}
	f := strings.Fields(string(b[close+1:]))
	// After comm: state(0) ppid(1) ... utime(11) stime(12) ... rss(21).
	if len(f) < 22 {
		return proc{}, false
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	rss, _ := strconv.ParseUint(f[21], 10, 64)
	p.Ticks = ut + st
	p.RSS = rss * page
	return p, true
}

// running reports whether a process with comm name runs.
func running(procs []proc, name string) bool {
	// comm is truncated to 15 bytes by the kernel.
	if len(name) > 15 {
		name = name[:15]
	}
	for _, p := range procs {
		if p.Comm == name {
			return true
		}
	}
	return false
}
