// Package tailnet tests the fleet over a tailnet against a real Headscale and real tsnet
// nodes: agents reach the controller over the tailnet only, the controller
// serves NATS on no host TCP port, tailnet facts reach `status --json`,
// deletion from Headscale takes a node offline, restarts rejoin from
// stored state; and TLS with a pinned CA outside the tailnet.
//
// Everything runs inside a loopback-only network namespace (TestMain).
package tailnet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

var (
	hs     *testenv.Headscale
	hsErr  error
	binDir string
	binErr error
)

func TestMain(m *testing.M) {
	testenv.RunInNetNS(func() int {
		work, err := os.MkdirTemp("", "mgn-tn-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer os.RemoveAll(work)
		testenv.SetTSNetEnv(filepath.Join(work, "tslogs"))
		os.MkdirAll(filepath.Join(work, "tslogs"), 0o700)
		if testenv.Missing(testenv.NeedHeadscale, testenv.NeedNetNS) == "" {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t0 := time.Now()
			hs, hsErr = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{})
			cancel()
			if hsErr == nil {
				fmt.Fprintf(os.Stderr, "tailnet: headscale healthy in %v\n", time.Since(t0).Round(time.Millisecond))
			}
		}
		code := m.Run()
		hs.Close()
		return code
	})
}

// needHeadscale skips (fails with CI=true) without Headscale or a network
// namespace, and returns the package's Headscale.
func needHeadscale(t *testing.T) *testenv.Headscale {
	t.Helper()
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedNetNS)
	testenv.RequireNetNS(t)
	if hsErr != nil {
		t.Fatalf("headscale: %v", hsErr)
	}
	return hs
}

// binaries builds the controller and agent once for the tests that run
// them as processes.
func binaries(t *testing.T) string {
	t.Helper()
	if binDir == "" && binErr == nil {
		dir, err := os.MkdirTemp("", "mgn-tn-bin")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/controller", "../../cmd/agent")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("build binaries: %v\n%s", err, out)
		} else {
			binDir = dir
			t.Logf("built controller and agent in %v", time.Since(t0).Round(time.Millisecond))
		}
	}
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}
