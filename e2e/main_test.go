// Package e2e runs the real controller and agent binaries as processes and
// breaks them the way production does: kill -9, restarts, slow nodes.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/runinfo"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mgn-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/controller", "../cmd/agent", "../hack/testworld")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a started binary; it is killed when the test ends.
type proc struct {
	cmd *exec.Cmd
	log *syncBuffer // written by the process's copier goroutines while tests read it
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(os.Environ(), "METAGN_LOG_FORMAT=console")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, log: buf}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s %s log:\n%s", bin, strings.Join(args, " "), buf.String())
		}
	})
	return p
}

// kill sends SIGKILL to the process group and reaps it.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
}

// cli runs a controller subcommand and returns stdout and the exit code.
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "controller"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("controller %v: %v", args, err)
	}
	if code == 2 {
		t.Logf("controller %v: %s", args, errb.String())
	}
	return out.String(), code
}

// world is a controller process and its data dir.
type world struct {
	t      *testing.T
	dir    string
	data   string
	listen string
	ctl    *proc
	url    string
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, dir: t.TempDir()}
	w.data = filepath.Join(w.dir, "controller")
	w.listen = "127.0.0.1:0"
	w.startController()
	return w
}

func (w *world) startController() {
	w.t.Helper()
	os.Remove(filepath.Join(w.data, "controller.json")) // a kill -9 leaves it behind
	w.ctl = start(w.t, "controller", "serve", "--data-dir", w.data, "--listen", w.listen, "--http", "",
		"--heartbeat-interval", "200ms")
	var info runinfo.Info
	poll.Until(w.t, 20*time.Second, "controller up", func() bool {
		var err error
		info, err = runinfo.Read(w.data)
		return err == nil
	})
	w.url = info.NATSURL
	w.listen = strings.TrimPrefix(info.NATSURL, "nats://")
}

func (w *world) token() string {
	out, code := cli(w.t, "token", "create", "--data-dir", w.data, "--reusable")
	if code != 0 {
		w.t.Fatalf("token create: exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

func (w *world) agent(name, cluster, token string, extra ...string) *proc {
	args := append([]string{"run", "--controller", w.url, "--name", name, "--cluster", cluster,
		"--state-dir", filepath.Join(w.dir, name)}, extra...)
	if token != "" {
		// As an operator should: in a file, never on the command line.
		file := filepath.Join(w.dir, name+".token")
		if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
			w.t.Fatal(err)
		}
		args = append(args, "--token-file", file)
	}
	p := start(w.t, "agent", args...)
	if token != "" {
		// Secrets never in the process list.
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.cmd.Process.Pid))
		if strings.Contains(string(cmdline), "mgnt_") {
			w.t.Fatalf("the join token is in the agent's process list: %q", cmdline)
		}
	}
	return p
}

type status struct {
	Nodes []struct {
		Name, Cluster, State string
	} `json:"nodes"`
	Summary map[string]int `json:"summary"`
}

func (w *world) status() status {
	out, _ := cli(w.t, "status", "--data-dir", w.data, "--json")
	var st status
	json.Unmarshal([]byte(out), &st)
	return st
}

func (w *world) state(node string) string {
	for _, n := range w.status().Nodes {
		if n.Name == node {
			return n.State
		}
	}
	return ""
}
