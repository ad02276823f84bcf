// Package dashboard tests the controller's web dashboard end to end in a
// real browser (Chromium from Debian's packages, driven by chromedp): a
// controller and agents in process (real NATS), against the test world —
// a real kube-apiserver seeded like GuildNet, real Headscale with a tsnet
// node per agent, and the RethinkDB and host-app stand-ins. It runs inside
// a loopback-only network namespace (TestMain re-executes itself under
// unshare -n), the browser with it.
package dashboard

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/e2e/internal/worldtest"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

func TestMain(m *testing.M) { testenv.MainInNetNS(m) }

// secretPassword is planted in the agents' settings: no page may show it.
const secretPassword = "s3cr3t-Pa55word-planted-dash"

type world struct{ *worldtest.World }

// chromium returns the browser's path, or skips (fails with CI=true).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Skip(t, "chromium not installed: `make apt-deps` (hack/apt-deps.sh) installs Debian's chromium")
	return ""
}

func newWorld(t *testing.T) *world {
	return &world{worldtest.New(t, worldtest.Options{Password: secretPassword, HTTP: true})}
}

func (w *world) waitOnline(names ...string) {
	w.T.Helper()
	for _, name := range names {
		w.WaitState(name, messages.StateOnline)
	}
}

// verifyUntil verifies until the report says want overall (a fresh tsnet
// node may show a transient warning), or the deadline.
func (w *world) verifyUntil(want string, d time.Duration) messages.Report {
	w.T.Helper()
	return w.VerifyUntil(d, 500*time.Millisecond, func(r messages.Report) bool { return r.OverallStatus == want })
}

// verifyAsync starts a verification, as a sweep would, and lets the test
// watch the page meanwhile.
func (w *world) verifyAsync() {
	cli, t := w.Cli, w.T
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := cli.Verify(ctx, messages.VerifyRequest{}); err != nil {
			t.Logf("verify: %v", err)
		}
	}()
}
