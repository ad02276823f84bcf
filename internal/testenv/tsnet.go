package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tsnet"
)

// TSNetOptions configures [StartTSNet].
type TSNetOptions struct {
	// ControlURL is the login server (Headscale.URL()). Required.
	ControlURL string
	// AuthKey is a preauth key. Required.
	AuthKey string
	// Hostname of the node on the tailnet. Required.
	Hostname string
	// Dir holds the node's state and logs. Empty: a new temp directory
	// (left behind for the caller's cleanup: use t.TempDir()).
	Dir string
	// AdvertiseRoutes are subnet routes the node offers (as
	// `tailscale up --advertise-routes`); they still need approving.
	AdvertiseRoutes []netip.Prefix
	// AcceptRoutes makes the node use routes other nodes advertise.
	AcceptRoutes bool
	// Ephemeral registers the node as ephemeral.
	Ephemeral bool
	// Timeout bounds the wait for Running with an IP (default 60s).
	Timeout time.Duration
	// Logf receives tsnet's backend logs (default: appended to
	// Dir/logs/tsnet.log).
	Logf func(format string, args ...any)
}

// errNoNetNS is why StartTSNet refuses to run.
var errNoNetNS = errors.New("refusing to start a tailnet node outside a loopback-only network namespace (use testenv.MainInNetNS)")

// StartTSNet brings up a tsnet node against a Headscale and waits until it
// is Running with a tailnet IP. It refuses to run outside a loopback-only
// network namespace: a tailnet node elsewhere would advertise and probe the
// machine's real interfaces. It sets the environment tsnet needs with
// Headscale's embedded (plain HTTP) DERP and no outside services:
// TS_DEBUG_USE_DERP_HTTP=1, TS_DISABLE_PORTMAPPER=1,
// TS_NO_LOGS_NO_SUPPORT=true, TS_LOGS_DIR and, since a loopback-only
// namespace counts as "network down", TS_ASSUME_NETWORK_UP_FOR_TEST=1.
// Close the returned server.
func StartTSNet(ctx context.Context, opts TSNetOptions) (*tsnet.Server, *ipnstate.Status, error) {
	if err := checkNetNS(); err != nil {
		return nil, nil, fmt.Errorf("start tsnet %q: %w: %v", opts.Hostname, errNoNetNS, err)
	}
	if opts.ControlURL == "" || opts.AuthKey == "" || opts.Hostname == "" {
		return nil, nil, fmt.Errorf("start tsnet %q: ControlURL, AuthKey and Hostname are required", opts.Hostname)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "mgn-tsnet-")
		if err != nil {
			return nil, nil, fmt.Errorf("start tsnet %q: temp dir: %w", opts.Hostname, err)
		}
		opts.Dir = d
	}
	logs := filepath.Join(opts.Dir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return nil, nil, fmt.Errorf("start tsnet %q: logs dir: %w", opts.Hostname, err)
	}
	SetTSNetEnv(logs)
	srv := &tsnet.Server{
		Dir:        filepath.Join(opts.Dir, "state"),
		Hostname:   opts.Hostname,
		ControlURL: opts.ControlURL,
		AuthKey:    opts.AuthKey,
		Ephemeral:  opts.Ephemeral,
		Logf:       opts.Logf,
		UserLogf:   opts.Logf,
	}
	if opts.Logf == nil {
		f, err := os.OpenFile(filepath.Join(logs, "tsnet.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("start tsnet %q: log file: %w", opts.Hostname, err)
		}
		// The file is closed once the server it logs for is garbage.
		runtime.AddCleanup(srv, func(f *os.File) { f.Close() }, f)
		var mu sync.Mutex
		srv.Logf = func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(f, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		}
		srv.UserLogf = srv.Logf
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	st, err := srv.Up(ctx)
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("start tsnet %q against %s: %w", opts.Hostname, opts.ControlURL, err)
	}
	if len(opts.AdvertiseRoutes) > 0 || opts.AcceptRoutes {
		lc, err := srv.LocalClient()
		if err != nil {
			srv.Close()
			return nil, nil, fmt.Errorf("start tsnet %q: local client: %w", opts.Hostname, err)
		}
		mp := &ipn.MaskedPrefs{
			Prefs:              ipn.Prefs{AdvertiseRoutes: opts.AdvertiseRoutes, RouteAll: opts.AcceptRoutes},
			AdvertiseRoutesSet: len(opts.AdvertiseRoutes) > 0,
			RouteAllSet:        opts.AcceptRoutes,
		}
		if _, err := lc.EditPrefs(ctx, mp); err != nil {
			srv.Close()
			return nil, nil, fmt.Errorf("start tsnet %q: advertise routes %v: %w", opts.Hostname, opts.AdvertiseRoutes, err)
		}
	}
	return srv, st, nil
}

// SetTSNetEnv sets the process environment tsnet needs in the test world
// (see StartTSNet); logsDir is TS_LOGS_DIR.
func SetTSNetEnv(logsDir string) {
	// tailscale's registered knobs are plain variables its goroutines read
	// without a lock (envknob.RegisterBool), so they are set once per
	// process: setting them again while a node runs is a data race.
	tsnetKnobs.Do(func() {
		for k, v := range map[string]string{
			"TS_DEBUG_USE_DERP_HTTP": "1",
			"TS_DISABLE_PORTMAPPER":  "1",
			"TS_NO_LOGS_NO_SUPPORT":  "true",
			// A loopback-only namespace has no interface tailscale counts
			// as up, and outside a test binary it then pauses its control
			// client forever; the tailnet here runs over loopback and
			// DERP-over-HTTP.
			"TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
		} {
			// envknob.Setenv, not os.Setenv: tailscale reads most of these
			// knobs once, at package init (envknob.RegisterBool), and only
			// envknob.Setenv updates them afterwards. With os.Setenv the
			// DERP client kept speaking TLS to Headscale's plain-HTTP
			// relay, which failed whenever a node got as far as using its
			// relay.
			envknob.Setenv(k, v)
		}
	})
	// TS_LOGS_DIR is read with os.Getenv when a node starts, never
	// registered: it may change per node.
	envknob.Setenv("TS_LOGS_DIR", logsDir)
}

var tsnetKnobs sync.Once
