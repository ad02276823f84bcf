package collect

import "github.com/guildnet/metaguildnet/internal/procinfo"

// running reports whether a process with comm name runs.
func running(procs []procinfo.Process, name string) bool {
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
