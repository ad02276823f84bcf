//go:build race

package collect

// raceEnabled: the race detector makes sync.Pool drop items, so the
// regexp engine allocates per match and allocation bounds do not hold.
const raceEnabled = true
