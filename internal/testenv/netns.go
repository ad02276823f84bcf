package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"unsafe"
)

// NetNSEnv marks a process that [MainInNetNS] re-executed inside a fresh,
// loopback-only network namespace.
const NetNSEnv = "MGN_TESTENV_NETNS"

// MainInNetNS is the one way a test package that starts tsnet nodes runs:
// call it from TestMain. Outside a namespace it re-executes the compiled
// test binary (same arguments) in a new network namespace whose only
// interface is loopback (set up), and exits with the child's exit code.
// Inside, it runs the tests. Every server the tests start (Headscale, the
// API server, the tsnet nodes) is then in that namespace, so a tailnet node
// can never reach or advertise the machine's real interfaces.
//
// If a namespace cannot be made (not root), the tests run without one:
// those that need it call Require(t, NeedNetNS) and skip, or fail with
// CI=true.
func MainInNetNS(m *testing.M) { RunInNetNS(m.Run) }

// RunInNetNS is MainInNetNS for a TestMain that does more than m.Run: run
// (which starts shared servers, calls m.Run and stops them) only ever runs
// inside the namespace, in the re-executed child. It calls os.Exit.
func RunInNetNS(run func() int) {
	if os.Getenv(NetNSEnv) == "1" {
		if err := setLoopbackUp(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: inside the network namespace: %v\n", err)
			os.Exit(2)
		}
		if err := checkNetNS(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: refusing to run: %v\n", err)
			os.Exit(2)
		}
		os.Exit(run())
	}
	code, err := runInNetNS(os.Args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: cannot enter a network namespace (%v); tests that need one will skip (fail with CI=true)\n", err)
		os.Exit(run())
	}
	os.Exit(code)
}

// runInNetNS runs argv in a new network namespace with NetNSEnv=1, passing
// signals on, and returns its exit code. err is set only when the child
// could not be started.
func runInNetNS(argv []string) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find test binary: %w", err)
	}
	cmd := exec.Command(exe, argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), NetNSEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	code, err := RunForwardingSignals(cmd)
	if err != nil && cmd.Process == nil {
		return 0, fmt.Errorf("start %s in a new network namespace: %w", exe, err)
	}
	if err != nil {
		return 1, nil
	}
	return code, nil
}

// RunForwardingSignals starts cmd, passes the signals a person or a test
// runner sends (INT, TERM, QUIT, HUP) on to it, and returns its exit code
// (128+N when a signal N ended it). err is set when cmd could not be run
// or waited for.
func RunForwardingSignals(cmd *exec.Cmd) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// setLoopbackUp brings "lo" up, as `ip link set lo up` does.
func setLoopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: socket: %w", err)
	}
	defer syscall.Close(fd)
	// struct ifreq: 16-byte name, then a union whose first member here is
	// the short ifr_flags; 40 bytes in all on 64-bit Linux.
	var ifr struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(ifr.name[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("bring lo up: get flags: %w", e)
	}
	ifr.flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("bring lo up: set flags: %w", e)
	}
	return nil
}

// checkNetNS returns an error when this process can see a network
// interface that is up and not loopback, or any non-loopback address, or
// when loopback itself is down.
func checkNetNS() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	loUp := false
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			loUp = loUp || ifc.Flags&net.FlagUp != 0
		} else if ifc.Flags&net.FlagUp != 0 {
			return fmt.Errorf("interface %s is up: this is not a loopback-only network namespace", ifc.Name)
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() {
				return fmt.Errorf("interface %s has address %s: this is not a loopback-only network namespace", ifc.Name, ipn)
			}
		}
	}
	if !loUp {
		return errors.New("loopback is down")
	}
	return nil
}

// InNetNS reports whether this process is in a loopback-only network
// namespace.
func InNetNS() bool { return checkNetNS() == nil }

// RequireNetNS fails t at once (never skips) when the process can see any
// non-loopback interface. Call it before anything that starts a tailnet
// node; use Require(t, NeedNetNS) to skip politely instead.
func RequireNetNS(t testing.TB) {
	t.Helper()
	if err := checkNetNS(); err != nil {
		t.Fatalf("testenv: a tailnet node may only run in a loopback-only network namespace (use testenv.MainInNetNS in TestMain): %v", err)
	}
}

// PrepareNetNS brings loopback up in a freshly made network namespace and
// checks that nothing but loopback is there. For a program that re-executes
// itself with CLONE_NEWNET itself (hack/testworld exec).
func PrepareNetNS() error {
	if err := setLoopbackUp(); err != nil {
		return err
	}
	return checkNetNS()
}
