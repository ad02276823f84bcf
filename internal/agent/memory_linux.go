package agent

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// madvPageout is MADV_PAGEOUT (Linux 5.4+): reclaim these pages now. For a
// binary's read-only mappings that only drops clean, file-backed pages from
// the resident set; anything touched again faults back in from the file.
const madvPageout = 21

// releaseStartupPages hands the kernel back the pages of the agent's own
// binary that start-up touched. Package initialisation of client-go, the
// Talos client and tsnet touches some 15 MiB of code and read-only data that
// an idle agent never uses again; without this they stay in its resident
// set for the life of the process. Writable mappings are never touched.
func releaseStartupPages() (released bool) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return false
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != exe || strings.ContainsRune(f[1], 'w') {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), madvPageout); e == 0 {
			released = true
		}
	}
	return released
}
