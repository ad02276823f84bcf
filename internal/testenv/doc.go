// Package testenv brings up a GuildNet-shaped world from real servers so the
// controller, the agents and their checks are tested against real peers
// instead of mocks.
//
// What runs here is real: etcd and kube-apiserver built from
// k8s.io/kubernetes (no scheduler, controllers or kubelet, so status is
// written through the status subresource by [SeedGuildNet] and the fault
// knobs), Headscale with its embedded DERP, and tailnet nodes from
// tailscale.com/tsnet. What cannot run on these machines (RethinkDB, Talos
// apid, the GuildNet host app) has stand-ins in the sub-packages.
//
// The binaries are built once, outside the repository, by `make testenv`
// (hack/build-testenv.sh); [CacheDir] finds them the same way the script
// does; without them tests skip with a message saying how to get them, and
// with CI=true they fail ([Require]).
//
// A test package starts Kubernetes once, in TestMain, and flips faults per
// test:
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
//	func TestNodeDown(t *testing.T) {
//		kube, gn := world.Require(t) // kube.KubeconfigPath(), kube.RESTConfig()
//		gn.SetNodeReady(ctx, testenv.NodeName(1), false)
//		...
//	}
//
// A package that starts tailnet nodes wraps the same in [RunInNetNS] (or
// calls [MainInNetNS]) and uses [StartHeadscale] and [StartTSNet].
//
// Network safety: every server listens on 127.0.0.1 only, and a tsnet node
// is only ever started inside a network namespace that has nothing but
// loopback ([MainInNetNS], [RequireNetNS], [StartTSNet] refuses otherwise).
// Seeded addresses (node IPs, load-balancer ingress) are loopback addresses
// too, so a check that dials them never leaves the machine.
package testenv
