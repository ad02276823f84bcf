package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// Files the world keeps in DIR.
const (
	envFile    = "env"           // shell-sourceable addresses, written last (= ready)
	pidFile    = "testworld.pid" // the serve process
	logFile    = "testworld.log" // serve's own output
	madeMarker = ".testworld"    // DIR was created by up: down removes it whole
	fwdFile    = "forward"       // socket dir, then one forwarded port a line (for exec)
)

// made lists what the world creates inside a DIR it did not create, so
// down removes exactly that.
var made = []string{envFile, pidFile, logFile, fwdFile, "kube", "headscale", "talosconfig", "standins", "router", "router.log", "hostapp-ca.pem",
	fleetFile, nodesDir, clustersDir, secretsDir}

// worldOpts choose the world: seeded (the default) or bare.
type worldOpts struct {
	nodes    int  // seeded: Kubernetes Nodes
	bare     bool // bare: nothing of GuildNet, for setup
	clusters int  // bare: server sets
}

// up starts `testworld serve` detached (its own session, output to
// DIR/testworld.log) and waits until it has written DIR/env.
func up(dir string, o worldOpts, timeout time.Duration) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if pid, ok := runningPID(dir); ok {
		return fmt.Errorf("a test world is already running in %s (pid %d): `testworld down --dir %s` first", dir, pid, dir)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, madeMarker), nil, 0o644); err != nil {
			return err
		}
	}
	_ = os.Remove(filepath.Join(dir, envFile))
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer lf.Close()
	args := []string{"serve", "--dir", dir, "--nodes", strconv.Itoa(o.nodes)}
	if o.bare {
		args = append(args, "--bare", "--clusters", strconv.Itoa(o.clusters))
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the world: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Printf("testworld: starting in %s (pid %d, log %s)\n", dir, cmd.Process.Pid, filepath.Join(dir, logFile))
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("the world exited while starting (%v); log:\n%s", err, tail(filepath.Join(dir, logFile), 40))
		case <-deadline.C:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			return fmt.Errorf("not ready after %v; log:\n%s", timeout, tail(filepath.Join(dir, logFile), 40))
		case <-tick.C:
			b, err := os.ReadFile(filepath.Join(dir, envFile))
			if err != nil {
				continue
			}
			fmt.Printf("testworld: ready in %v. Use it with:\n  . %s\n\n%s", time.Since(start).Round(100*time.Millisecond), filepath.Join(dir, envFile), b)
			return nil
		}
	}
}

// down stops the serve process and removes what the world made.
func down(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if pid, ok := runningPID(dir); ok {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(30 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond) // polling another process's exit: no channel to wait on
		}
		if alive(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		fmt.Printf("testworld: stopped pid %d\n", pid)
	} else {
		fmt.Printf("testworld: nothing running in %s\n", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, fwdFile)); err == nil {
		if sockDir, _, _ := strings.Cut(string(b), "\n"); strings.HasPrefix(sockDir, os.TempDir()) {
			_ = os.RemoveAll(sockDir)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, madeMarker)); err == nil {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		fmt.Printf("testworld: removed %s\n", dir)
		return nil
	}
	for _, m := range made {
		_ = os.RemoveAll(filepath.Join(dir, m))
	}
	fmt.Printf("testworld: removed what it made in %s\n", dir)
	return nil
}

// runningPID returns the serve process recorded in dir, if it still runs.
func runningPID(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !alive(pid) {
		return 0, false
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), "serve") {
		return 0, false // pid reused by something else
	}
	return pid, true
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// world is what serve runs.
type world struct {
	dir      string
	kube     *testenv.Kube
	seeded   *testenv.GuildNet
	hs       *testenv.Headscale
	standins []standin
	env      []envVar
	ports    []int
	sockDir  string
	closers  []func()
	bare     *bareWorld // the bare world's parts; nil when seeded
}

type envVar struct{ name, value, comment string }

// standin is one of the stand-ins for what cannot run here (standins.go).
type standin interface {
	name() string
	close()
}

// serve starts everything, writes DIR/env, and runs until SIGTERM/SIGINT.
func serve(dir string, o worldOpts) (err error) {
	if err := os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startDone := make(chan struct{})
	go func() {
		select {
		case s := <-sigs: // a stop while starting cancels the start
			cancel()
			sigs <- s
		case <-startDone:
		}
	}()
	w := &world{dir: dir}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if o.bare {
		err = w.startBare(ctx, o.clusters)
	} else {
		err = w.start(ctx, o.nodes)
	}
	close(startDone)
	if err != nil {
		return err
	}
	if err := w.writeEnv(); err != nil {
		return err
	}
	log("ready; env in %s", filepath.Join(dir, envFile))
	s := <-sigs
	log("%v: stopping", s)
	w.close()
	_ = os.Remove(filepath.Join(dir, envFile))
	_ = os.Remove(filepath.Join(dir, pidFile))
	return nil
}

func log(format string, args ...any) {
	fmt.Printf("%s testworld: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (w *world) start(ctx context.Context, nodes int) error {
	t0 := time.Now()
	var err error
	if w.kube, err = testenv.StartKube(ctx, testenv.KubeOptions{Dir: filepath.Join(w.dir, "kube")}); err != nil {
		return err
	}
	log("kube-apiserver %s ready at %s in %v", testenv.KubeVersion, w.kube.URL(), w.kube.ReadyIn)
	if w.seeded, err = testenv.SeedGuildNet(ctx, w.kube.RESTConfig(), testenv.SeedOptions{Nodes: nodes}); err != nil {
		return err
	}
	log("seeded like GuildNet: %d nodes, workspaces %v", nodes, w.seeded.Workspaces)
	w.add("KUBECONFIG", w.kube.KubeconfigPath(), "admin token; context testenv")
	w.addPort(w.kube.URL())

	if w.hs, err = testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: filepath.Join(w.dir, "headscale")}); err != nil {
		return err
	}
	user, err := w.hs.CreateUser(ctx, "guildnet")
	if err != nil {
		return err
	}
	// GuildNet's bootstrap key: reusable, not ephemeral, 168h.
	key, err := w.hs.CreatePreAuthKey(ctx, user.ID, true, false, 168*time.Hour)
	if err != nil {
		return err
	}
	log("headscale %s at %s in %v", testenv.HeadscaleVersion, w.hs.URL(), w.hs.StartedIn)
	w.add("HEADSCALE_URL", w.hs.URL(), "Headscale with its embedded DERP (plain HTTP)")
	w.add("TS_LOGIN_SERVER", w.hs.URL(), "")
	w.add("HEADSCALE_USER", user.Name, fmt.Sprintf("user id %d", user.ID))
	w.add("TS_AUTHKEY", key, "reusable preauth key, 168h; tailnet nodes only inside `testworld exec`")
	w.add("HEADSCALE_CONFIG", w.hs.ConfigPath(), "headscale -c $HEADSCALE_CONFIG nodes list")
	w.add("HEADSCALE_BIN", testenv.HeadscalePath(), "")
	w.addPort(w.hs.URL())

	if err := w.startStandins(ctx); err != nil {
		return err
	}
	if err := w.startForwarders(); err != nil {
		return err
	}
	if err := w.startRouter(ctx, key); err != nil {
		return err
	}
	log("world up in %v", time.Since(t0))
	return nil
}

func (w *world) add(name, value, comment string) {
	w.env = append(w.env, envVar{name, value, comment})
}

// addPort records the port of a URL or host:port as one exec forwards.
func (w *world) addPort(addr string) {
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	if n, err := strconv.Atoi(p); err == nil {
		w.ports = append(w.ports, n)
	}
}

func (w *world) writeEnv() error {
	var b strings.Builder
	fmt.Fprintf(&b, "# MetaGuildNet test world (hack/testworld, pid %d), started %s.\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "# Source it: . %s    Stop it: make testenv-down TESTENV_DIR=%s\n", filepath.Join(w.dir, envFile), w.dir)
	fmt.Fprintf(&b, "# Tailnet nodes: testworld exec --dir %s -- CMD (a loopback-only network namespace).\n", w.dir)
	fmt.Fprintf(&b, "export MGN_TESTWORLD_DIR=%s\n", shellQuote(w.dir))
	for _, v := range w.env {
		if v.comment != "" {
			fmt.Fprintf(&b, "# %s\n", v.comment)
		}
		if v.value == "" && strings.HasPrefix(v.comment, "NOT AVAILABLE") {
			continue
		}
		fmt.Fprintf(&b, "export %s=%s\n", v.name, shellQuote(v.value))
	}
	tmp := filepath.Join(w.dir, envFile+".tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write env: %w", err)
	}
	return os.Rename(tmp, filepath.Join(w.dir, envFile))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (w *world) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
	for i := len(w.standins) - 1; i >= 0; i-- {
		w.standins[i].close()
	}
	if w.hs != nil {
		w.hs.Close()
	}
	if w.kube != nil {
		w.kube.Stop()
	}
	if w.sockDir != "" {
		_ = os.RemoveAll(w.sockDir)
	}
}

// startForwarders serves each of the world's ports on a unix socket, so
// `testworld exec` can answer the same 127.0.0.1 addresses inside a
// network namespace (a unix socket is a file: it crosses namespaces).
func (w *world) startForwarders() error {
	var err error
	if w.sockDir, err = os.MkdirTemp("", "mgnw"); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	sort.Ints(w.ports)
	lines := []string{w.sockDir}
	for _, port := range w.ports {
		ln, err := net.Listen("unix", filepath.Join(w.sockDir, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("forward port %d: %w", port, err)
		}
		target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		w.closers = append(w.closers, func() { ln.Close() })
		go forward(ln, func() (net.Conn, error) { return net.DialTimeout("tcp", target, 5*time.Second) })
		lines = append(lines, strconv.Itoa(port))
	}
	return os.WriteFile(filepath.Join(w.dir, fwdFile), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// forward accepts on ln until it closes and splices each connection to one
// from dial.
func forward(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := dial()
			if err != nil {
				return
			}
			defer up.Close()
			splice(c, up)
		}()
	}
}

// splice copies both ways until either side is done.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}
