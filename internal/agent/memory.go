package agent

import (
	"context"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// trimMemory keeps an idle agent small: shortly after start, and after a
// burst of tasks once the agent is idle again (at most once a minute), it
// returns freed heap to the OS and drops the binary's pages that only
// start-up or the finished tasks needed (see releaseStartupPages).
func (a *Agent) trimMemory(ctx context.Context) {
	t := time.NewTimer(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if len(a.runningIDs()) == 0 && a.tasksSinceTrim.Swap(0) >= 0 {
			debug.FreeOSMemory()
			releaseStartupPages()
		}
		t.Reset(time.Minute)
		for a.tasksSinceTrim.Load() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				t.Reset(time.Minute)
			}
		}
	}
}

// taskCounter is embedded in Agent to tell trimMemory that tasks ran.
type taskCounter struct{ tasksSinceTrim atomic.Int64 }
