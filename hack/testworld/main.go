// Command testworld runs the GuildNet-shaped test world (internal/testenv) in the
// background for people and agents: a real kube-apiserver seeded like a
// GuildNet cluster, a real Headscale, and the stand-ins for what cannot run
// here (RethinkDB, Talos apid, the GuildNet host app). It writes DIR/env, a
// shell file that points tools at all of it.
//
//	testworld up   --dir DIR   start in the background, wait until ready, print DIR/env
//	testworld up   --dir DIR --bare [--clusters N]
//	                           a bare world for setup (see bare.go): DIR/fleet.yaml,
//	                           DIR/nodes/NAME/env
//	testworld down --dir DIR   stop it and remove what it made
//	testworld exec --dir DIR -- CMD ARGS...
//	                           run CMD in a fresh loopback-only network namespace
//	                           where the world's addresses answer as outside (for
//	                           anything that brings up a tailnet node)
//
// Use `make testenv-up TESTENV_DIR=DIR` / `make testenv-down TESTENV_DIR=DIR`.
// Every server listens on 127.0.0.1 only.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"
)

const usage = `usage:
  testworld up   --dir DIR [--nodes N] [--timeout D]
  testworld up   --dir DIR --bare [--clusters N] [--timeout D]
  testworld down --dir DIR
  testworld exec --dir DIR -- CMD [ARGS...]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet("testworld "+cmd, flag.ExitOnError)
	dir := fs.String("dir", "", "directory for the world's state, logs and env file (required)")
	nodes := fs.Int("nodes", 3, "number of Kubernetes Nodes to seed")
	timeout := fs.Duration("timeout", 3*time.Minute, "how long up waits for the world to be ready")
	bare := fs.Bool("bare", false, "start a bare world: servers with nothing of GuildNet in them, DIR/fleet.yaml and DIR/nodes/NAME/env, for setup")
	clusters := fs.Int("clusters", 1, "bare world: number of clusters (one server set each)")
	_ = fs.Parse(args)
	if *dir == "" {
		fmt.Fprint(os.Stderr, "testworld: --dir is required\n"+usage)
		os.Exit(2)
	}
	var err error
	switch cmd {
	case "up":
		err = up(*dir, worldOpts{nodes: *nodes, bare: *bare, clusters: *clusters}, *timeout)
	case "serve": // internal: the background process up starts
		err = serve(*dir, worldOpts{nodes: *nodes, bare: *bare, clusters: *clusters})
	case "down":
		err = down(*dir)
	case "exec":
		var code int
		code, err = execInNetNS(*dir, fs.Args())
		if err == nil {
			os.Exit(code)
		}
	case "router": // internal: the tailnet router node, run through exec
		err = router(*dir)
	case "nsinit": // internal: the first process inside exec's namespace
		var code int
		code, err = nsinit(*dir, fs.Args())
		if err == nil {
			os.Exit(code)
		}
	default:
		err = errors.New("unknown command " + cmd + "\n" + usage)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testworld %s: %v\n", cmd, err)
		os.Exit(1)
	}
}
