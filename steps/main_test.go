package steps

import (
	"os"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// TestMain runs the package's tests inside a loopback-only network
// namespace when one can be made: the network steps' tests run real
// tailscaled daemons and Headscale there. Fuzzing runs in place (the
// engine's pipes would not survive the re-exec; no fuzz target starts a
// server).
func TestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzz") {
			os.Exit(m.Run())
		}
	}
	testenv.MainInNetNS(m)
}
