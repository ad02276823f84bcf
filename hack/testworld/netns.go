package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// execInNetNS runs argv in a new loopback-only network namespace through
// `testworld nsinit`, which first makes the world's ports answer there.
func execInNetNS(dir string, argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("nothing to run: testworld exec --dir DIR -- CMD [ARGS...]")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	if _, ok := runningPID(dir); !ok {
		return 0, fmt.Errorf("no test world running in %s (make testenv-up TESTENV_DIR=%s)", dir, dir)
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(self, append([]string{"nsinit", "--dir", dir, "--"}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	return testenv.RunForwardingSignals(cmd)
}

// nsinit runs inside the new namespace: loopback up, the world's ports
// forwarded to its unix sockets, then argv with NetNSEnv set.
func nsinit(dir string, argv []string) (int, error) {
	if err := testenv.PrepareNetNS(); err != nil {
		return 0, err
	}
	b, err := os.ReadFile(filepath.Join(dir, fwdFile))
	if err != nil {
		return 0, fmt.Errorf("read forwarded ports: %w", err)
	}
	lines := strings.Fields(string(b))
	if len(lines) == 0 {
		return 0, errors.New("empty forward file")
	}
	sockDir := lines[0]
	for _, p := range lines[1:] {
		port, err := strconv.Atoi(p)
		if err != nil {
			return 0, fmt.Errorf("forward file: bad port %q", p)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", p))
		if err != nil {
			return 0, fmt.Errorf("listen on forwarded port %d: %w", port, err)
		}
		sock := filepath.Join(sockDir, p)
		go forward(ln, func() (net.Conn, error) { return net.DialTimeout("unix", sock, 5*time.Second) })
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), testenv.NetNSEnv+"=1")
	return testenv.RunForwardingSignals(cmd)
}
