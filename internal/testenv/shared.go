package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Shared is one API server, seeded like GuildNet, shared by a whole test
// package: start it in TestMain, hand it to tests with Require.
//
//	var world *testenv.Shared
//
//	func TestMain(m *testing.M) {
//		world = testenv.StartShared(testenv.SeedOptions{Nodes: 3})
//		code := m.Run()
//		world.Stop()
//		os.Exit(code)
//	}
//
//	func TestX(t *testing.T) {
//		kube, gn := world.Require(t)
//		...
//	}
type Shared struct {
	Kube  *Kube
	World *GuildNet
	// Err is why the world could not start (nil when the binaries are
	// missing: Require then skips, or fails with CI=true).
	Err error
	// SeededIn is how long SeedGuildNet took.
	SeededIn time.Duration
}

// StartShared starts Kubernetes and seeds it, within 3 minutes. It never
// fails by itself: errors are kept for Require to report in each test.
func StartShared(opts SeedOptions) *Shared {
	s := &Shared{}
	if Missing(NeedKube) != "" {
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if s.Kube, s.Err = StartKube(ctx, KubeOptions{}); s.Err != nil {
		return s
	}
	start := time.Now()
	if s.World, s.Err = SeedGuildNet(ctx, s.Kube.RESTConfig(), opts); s.Err != nil {
		s.Err = fmt.Errorf("seed the shared world: %w", s.Err)
		return s
	}
	s.SeededIn = time.Since(start)
	return s
}

// Require skips t without the binaries (fails with CI=true), fails it when
// the world could not start, and otherwise returns it.
func (s *Shared) Require(t testing.TB) (*Kube, *GuildNet) {
	t.Helper()
	Require(t, NeedKube)
	if s == nil {
		t.Fatal("testenv: shared world not started (call testenv.StartShared in TestMain)")
	}
	if s.Err != nil {
		t.Fatalf("testenv: shared world: %v", s.Err)
	}
	return s.Kube, s.World
}

// Stop stops the API server and etcd.
func (s *Shared) Stop() {
	if s != nil {
		s.Kube.Stop()
	}
}
