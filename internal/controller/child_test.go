package controller_test

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/steps"
	"github.com/guildnet/metaguildnet/tasks"
)

// A child controller is a controller in a process of its own — the test
// binary run again with only the child test selected — so that a test can
// kill it with SIGKILL and start it again on the same data dir. The parent
// hands the child its world dir, data dir and NATS address in the
// environment, as PREFIX_WORLD, PREFIX_DATA and PREFIX_LISTEN.

// childWorld is the world dir a child controller test was given, or ""
// when the test runs as a test of its own (and is then no test at all).
func childWorld(prefix string) string { return os.Getenv(prefix + "_WORLD") }

// serveAsChild runs the child controller with opts on the data dir and
// address its parent gave until the parent interrupts it.
func serveAsChild(t *testing.T, prefix string, opts controller.Options) {
	opts.DataDir, opts.Listen = os.Getenv(prefix+"_DATA"), os.Getenv(prefix+"_LISTEN")
	c, err := controller.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
}

// childController is the parent's handle on a child controller process.
type childController struct {
	t                      *testing.T
	test, prefix           string // the child test's name, its environment's prefix
	world, dataDir, listen string
	cmd                    *exec.Cmd
}

// newChildController picks the child's NATS address (kept across
// restarts) and kills a child still running when the test ends.
func newChildController(t *testing.T, test, prefix, world, dataDir string) *childController {
	t.Helper()
	c := &childController{t: t, test: test, prefix: prefix, world: world, dataDir: dataDir, listen: freeport.Addr(t)}
	t.Cleanup(func() {
		if c.cmd != nil && c.cmd.ProcessState == nil {
			c.kill()
		}
	})
	return c
}

// url is the child's NATS URL.
func (c *childController) url() string { return "nats://" + c.listen }

// start runs the child and returns an operator client once it serves.
func (c *childController) start() *ctlclient.Client {
	c.t.Helper()
	c.cmd = exec.Command(os.Args[0], "-test.run", "^"+c.test+"$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), c.prefix+"_WORLD="+c.world, c.prefix+"_DATA="+c.dataDir, c.prefix+"_LISTEN="+c.listen)
	c.cmd.Stdout, c.cmd.Stderr = os.Stderr, os.Stderr
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	var cli *ctlclient.Client
	poll.Until(c.t, 30*time.Second, "controller process serving", func() bool {
		cl, err := ctlclient.Dial(c.dataDir)
		if err != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := cl.Status(ctx); err != nil {
			cl.Close()
			return false
		}
		cli = cl
		return true
	})
	return cli
}

// kill stops the child with SIGKILL: nothing is flushed.
func (c *childController) kill() {
	c.cmd.Process.Kill()
	c.cmd.Wait()
}

// killAndRestart closes the client cli and kills the child mid-work; the
// fleet goes on without it: meanwhile runs, then up to 20 s pass until
// done holds (what names it). Then the child starts again on the same data
// dir, and killAndRestart returns a new client.
func (c *childController) killAndRestart(cli *ctlclient.Client, meanwhile func(), what string, done func() bool) *ctlclient.Client {
	c.t.Helper()
	cli.Close()
	c.kill()
	meanwhile()
	poll.Until(c.t, 20*time.Second, what, done)
	return c.start()
}

// stop interrupts the child, which closes its controller, and waits.
func (c *childController) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
}

// runStepAgent runs an in-process agent of the child's fleet that runs the
// steps of reg and the custom checks in the file checks.
func (c *childController) runStepAgent(dir, token, name, cluster, role string, reg *steps.Registry, checks string) {
	c.t.Helper()
	runAgent(c.t, agent.Config{ControllerURL: c.url(), Token: token, Name: name, Cluster: cluster, Role: role,
		StateDir: filepath.Join(dir, "agents", name), Version: "test",
		Log:   zaptest.NewLogger(c.t, zaptest.Level(zap.WarnLevel)).Named(name),
		Tasks: tasks.Builtin().With(tasks.StepTask{Steps: reg}), Settings: config.Settings{"METAGN_CUSTOM_CHECKS": checks}})
}
