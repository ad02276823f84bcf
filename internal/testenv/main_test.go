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
var shared *Shared

const seededNodes = 3

func TestMain(m *testing.M) {
	RunInNetNS(func() int {
		shared = StartShared(SeedOptions{Nodes: seededNodes, Workspaces: []string{"demo", "notebook"}})
		if shared.Kube != nil && shared.Err == nil {
			fmt.Fprintf(os.Stderr, "testenv: kube-apiserver /readyz in %v, seeded in %v\n", shared.Kube.ReadyIn, shared.SeededIn)
		}
		code := m.Run()
		shared.Stop()
		return code
	})
}

func needWorld(t *testing.T) (*Kube, *GuildNet) {
	t.Helper()
	return shared.Require(t)
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
