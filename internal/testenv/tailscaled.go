package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
)

// TailscaleVersion is the tailscaled the test world runs, the same module
// version the project builds against.
const TailscaleVersion = "v1.102.5"

// TailscaledPath is the tailscaled binary built by `make testenv`.
func TailscaledPath() string {
	return filepath.Join(CacheDir(), "tailscale-"+TailscaleVersion, "tailscaled")
}

// TailscaledOptions configures [StartTailscaled].
type TailscaledOptions struct {
	// Dir holds the daemon's state (Dir/state), its log (Dir/tailscaled.log)
	// and its LocalAPI socket (Dir/ts.sock, or a short temp directory when
	// Dir is too long for a unix socket path). Empty: a new temp directory
	// removed by Close.
	Dir string
	// Wrap, when this process is not itself in a loopback-only network
	// namespace, is the argv prefix that runs tailscaled inside the world's
	// (for the background world: `testworld exec --dir D --`). Empty: this
	// process must be in one ([MainInNetNS]), or StartTailscaled refuses.
	Wrap []string
	// StartTimeout bounds the wait for the LocalAPI to answer (default 30s).
	StartTimeout time.Duration
}

// Tailscaled is a real tailscaled (userspace networking, no TUN) in the
// world's loopback-only network namespace. Its LocalAPI is a unix socket
// file, so a process in the host namespace (an agent) drives it with
// tailscale.com/client/local. It starts logged out (NeedsLogin) with no
// prefs: logging it in is what the tailscale_login setup step does.
type Tailscaled struct {
	dir, sock, sockDir string
	ownDir             bool
	args, env          []string
	timeout            time.Duration

	mu   sync.Mutex
	proc *process
	// StartedIn is how long the last Start took until the LocalAPI answered.
	StartedIn time.Duration
}

// StartTailscaled starts one tailscaled (one simulated node) and waits
// until its LocalAPI answers. It refuses to start outside a loopback-only
// network namespace unless Wrap puts it in one: a tailnet node elsewhere
// would advertise and probe the machine's real interfaces. The daemon gets
// the environment the world's tailnet needs: TS_NO_LOGS_NO_SUPPORT=true,
// TS_LOGS_DIR, TS_DISABLE_PORTMAPPER=1, TS_ASSUME_NETWORK_UP_FOR_TEST=1
// (a loopback-only namespace counts as "network down") and
// TS_DEBUG_USE_DERP_HTTP=1 (Headscale's embedded DERP is plain HTTP).
// Close stops it and removes what it made.
func StartTailscaled(ctx context.Context, opts TailscaledOptions) (t *Tailscaled, err error) {
	if why := Missing(NeedTailscaled); why != "" {
		return nil, fmt.Errorf("start tailscaled: %s (run `make testenv`)", why)
	}
	if len(opts.Wrap) == 0 {
		if err := checkNetNS(); err != nil {
			return nil, fmt.Errorf("start tailscaled: refusing to start a tailnet node outside a loopback-only network namespace (use testenv.MainInNetNS, or Wrap): %v", err)
		}
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	t = &Tailscaled{dir: opts.Dir, timeout: opts.StartTimeout}
	if t.dir == "" {
		if t.dir, err = os.MkdirTemp("", "mgn-tsd-"); err != nil {
			return nil, fmt.Errorf("start tailscaled: temp dir: %w", err)
		}
		t.ownDir = true
	}
	if t.dir, err = filepath.Abs(t.dir); err != nil {
		return nil, fmt.Errorf("start tailscaled: dir: %w", err)
	}
	started := t
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	if err := os.MkdirAll(filepath.Join(t.dir, "state"), 0o700); err != nil {
		return nil, fmt.Errorf("start tailscaled: dir: %w", err)
	}
	t.sock = filepath.Join(t.dir, "ts.sock")
	if len(t.sock) > 100 { // unix socket paths are limited to 108 bytes
		if t.sockDir, err = os.MkdirTemp("", "tsd"); err != nil {
			return nil, fmt.Errorf("start tailscaled: socket dir: %w", err)
		}
		t.sock = filepath.Join(t.sockDir, "ts.sock")
	}
	t.args = append(append([]string(nil), opts.Wrap...), TailscaledPath(),
		"--tun=userspace-networking",
		"--socket="+t.sock,
		"--statedir="+filepath.Join(t.dir, "state"),
		"--port=0")
	t.env = []string{
		"TS_NO_LOGS_NO_SUPPORT=true",
		"TS_LOGS_DIR=" + t.dir,
		"TS_DISABLE_PORTMAPPER=1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_DEBUG_USE_DERP_HTTP=1",
	}
	if err := t.Start(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// Start (re)starts the daemon with the same state and waits for its
// LocalAPI. With Stop it is the "tailscaled stopped" fault knob.
func (t *Tailscaled) Start(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc != nil && !t.proc.exited() {
		return nil
	}
	_ = os.Remove(t.sock) // a socket left by a killed daemon
	start := time.Now()
	p, err := startProcess("tailscaled", filepath.Join(t.dir, "tailscaled.log"), t.args[0], t.args[1:], t.env)
	if err != nil {
		return fmt.Errorf("start tailscaled: %w", err)
	}
	t.proc = p
	wctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	lc := t.LocalClient()
	for {
		sctx, scancel := context.WithTimeout(wctx, 2*time.Second)
		_, serr := lc.StatusWithoutPeers(sctx)
		scancel()
		if serr == nil {
			break
		}
		if p.exited() {
			return p.failure(fmt.Errorf("start tailscaled: exited before its LocalAPI answered on %s", t.sock))
		}
		select {
		case <-wctx.Done():
			p.stop(2 * time.Second)
			return p.failure(fmt.Errorf("start tailscaled: LocalAPI on %s not answering: %w (last: %v)", t.sock, wctx.Err(), serr))
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.StartedIn = time.Since(start)
	return nil
}

// Stop ends the daemon (its state is kept, so Start brings it back logged
// in as it was).
func (t *Tailscaled) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.proc.stop(5 * time.Second)
}

// Close stops the daemon and removes the directories it made.
func (t *Tailscaled) Close() {
	if t == nil {
		return
	}
	t.Stop()
	if t.sockDir != "" {
		_ = os.RemoveAll(t.sockDir)
	}
	if t.ownDir {
		_ = os.RemoveAll(t.dir)
	}
}

// Socket is the LocalAPI socket path, for setting TS_SOCKET.
func (t *Tailscaled) Socket() string { return t.sock }

// Dir holds the daemon's state and tailscaled.log.
func (t *Tailscaled) Dir() string { return t.dir }

// LocalClient is a LocalAPI client on the daemon's socket.
func (t *Tailscaled) LocalClient() *local.Client {
	return &local.Client{Socket: t.sock, UseSocketOnly: true}
}

// TailscaledLogin is what [Tailscaled.Login] brings up, as
// `tailscale up --login-server --authkey --hostname --advertise-routes
// --accept-routes --accept-dns=false` would.
type TailscaledLogin struct {
	ControlURL      string
	AuthKey         string
	Hostname        string
	AdvertiseRoutes []netip.Prefix
	AcceptRoutes    bool
	// Timeout bounds the wait for Running with an IP (default 60s).
	Timeout time.Duration
}

// Login logs the daemon in through its LocalAPI (never the CLI) and waits
// until it is Running with a tailnet IP. For tests that need a logged-in
// host tailscaled; setup does the same in the tailscale_login step.
func (t *Tailscaled) Login(ctx context.Context, l TailscaledLogin) (*ipnstate.Status, error) {
	if l.ControlURL == "" || l.AuthKey == "" || l.Hostname == "" {
		return nil, errors.New("tailscaled login: ControlURL, AuthKey and Hostname are required")
	}
	if l.Timeout == 0 {
		l.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()
	lc := t.LocalClient()
	prefs := ipn.NewPrefs()
	prefs.ControlURL = l.ControlURL
	prefs.WantRunning = true
	prefs.Hostname = l.Hostname
	prefs.AdvertiseRoutes = l.AdvertiseRoutes
	prefs.RouteAll = l.AcceptRoutes
	prefs.CorpDNS = false
	if err := lc.Start(ctx, ipn.Options{AuthKey: l.AuthKey, UpdatePrefs: prefs}); err != nil {
		return nil, fmt.Errorf("tailscaled login %s: start: %w", l.Hostname, err)
	}
	if err := lc.StartLoginInteractive(ctx); err != nil {
		return nil, fmt.Errorf("tailscaled login %s: login: %w", l.Hostname, err)
	}
	for {
		st, err := lc.StatusWithoutPeers(ctx)
		if err == nil && st.BackendState == ipn.Running.String() && len(st.TailscaleIPs) > 0 {
			return st, nil
		}
		select {
		case <-ctx.Done():
			state := "unknown"
			if st != nil {
				state = st.BackendState
			}
			return nil, fmt.Errorf("tailscaled login %s against %s: not Running (backend %s, last error %v): %w", l.Hostname, l.ControlURL, state, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
