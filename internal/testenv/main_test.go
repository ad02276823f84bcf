package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// The package's tests share one API server, started in TestMain inside a
// loopback-only network namespace (the tsnet tests need it; everything else
// is on 127.0.0.1 there too).
var shared struct {
	kube    *Kube
	world   *GuildNet
	err     error
	seedDur time.Duration
}

const seededNodes = 3

func TestMain(m *testing.M) {
	RunInNetNS(func() int {
		if Missing(NeedKube) == "" {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			shared.kube, shared.err = StartKube(ctx, KubeOptions{})
			if shared.err == nil {
				start := time.Now()
				shared.world, shared.err = SeedGuildNet(ctx, shared.kube.RESTConfig(), SeedOptions{Nodes: seededNodes, Workspaces: []string{"demo", "notebook"}})
				shared.seedDur = time.Since(start)
			}
			cancel()
			if shared.err == nil && testingVerbose() {
				fmt.Fprintf(os.Stderr, "testenv: kube-apiserver /readyz in %v, seeded in %v\n", shared.kube.ReadyIn, shared.seedDur)
			}
		}
		code := m.Run()
		shared.kube.Stop()
		return code
	})
}

func testingVerbose() bool {
	for _, a := range os.Args {
		if a == "-test.v=true" || a == "-test.v" {
			return true
		}
	}
	return false
}

// needWorld skips (or fails with CI=true) without the binaries and fails
// when the shared world could not start.
func needWorld(t *testing.T) (*Kube, *GuildNet) {
	t.Helper()
	Require(t, NeedKube)
	if shared.err != nil {
		t.Fatalf("shared test world: %v", shared.err)
	}
	return shared.kube, shared.world
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
