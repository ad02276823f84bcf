package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/checks"
	"github.com/guildnet/metaguildnet/internal/tailnet"
	"github.com/guildnet/metaguildnet/internal/tlspin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// Tailnet modes for TailnetConfig.Mode.
const (
	TailnetOff   = "off"   // plain TCP (development, or TLS outside the tailnet)
	TailnetAuto  = "auto"  // tsnet when an auth key or tsnet state is there, else the host's tailscaled when it runs, else off
	TailnetTSNet = "tsnet" // the agent's own tsnet node
	TailnetHost  = "host"  // the host's tailscaled (the kernel routes to the controller)
)

// TailnetConfig says how the agent reaches the controller over the tailnet.
type TailnetConfig struct {
	// Mode is off (the default when empty), auto, tsnet or host.
	Mode string
	// AuthKey (first start only; never logged), ControlURL (login server)
	// and Hostname (default: the node name) for tsnet. The tsnet state
	// lives in Dir (default STATE_DIR/tailnet).
	AuthKey    string
	ControlURL string
	Hostname   string
	Dir        string
	// TailscaledSocket is the host tailscaled's LocalAPI socket ("" for
	// the default).
	TailscaledSocket string
	// ProbeEvery is how often the path to the controller is measured
	// (default 30s); a change of path is reported at the next heartbeat.
	ProbeEvery time.Duration
	// JoinTimeout bounds the wait to join (default 60s).
	JoinTimeout time.Duration
}

// pinFile keeps the controller's CA pin from the join token, for the
// connections after enrollment.
const pinFile = "controller-ca.pin"

// adoptToken takes what the join token carries besides its secret: the
// controller's CA pin (kept in the state dir for the connections after
// enrollment) and the controllers' URLs, which the agent dials unless
// --controller was given. Only the secret is sent to the controller.
func (a *Agent) adoptToken() error {
	var pin string
	if a.cfg.Token != "" {
		t, err := messages.ParseJoinToken(a.cfg.Token)
		if err != nil {
			return fmt.Errorf("--token: %w", err)
		}
		a.cfg.Token, pin = t.Secret, t.Pin
		if len(t.URLs) > 0 && a.cfg.ControllerFromToken {
			a.cfg.ControllerURL = strings.Join(t.URLs, ",")
		}
	}
	path := filepath.Join(a.cfg.StateDir, pinFile)
	if pin != "" {
		if !tlspin.ValidPin(pin) {
			return errors.New("--token: the part after '.' is not a CA pin")
		}
		if err := os.WriteFile(path, []byte(pin+"\n"), 0o600); err != nil {
			return fmt.Errorf("store the controller's CA pin: %w", err)
		}
	} else if b, err := os.ReadFile(path); err == nil {
		pin = strings.TrimSpace(string(b))
		if !tlspin.ValidPin(pin) {
			return fmt.Errorf("%s: not a CA pin", path)
		}
	}
	if pin != "" {
		a.cfg.NATSOptions = append(a.cfg.NATSOptions, nats.Secure(tlspin.ClientConfig(pin)))
	}
	return nil
}

// tailnetState is the agent's tailnet: the tsnet node or the host's
// tailscaled, and the last facts measured.
type tailnetState struct {
	mode string
	node *tailnet.Node
	lc   tailnet.LocalAPI

	mu    sync.Mutex
	facts *messages.TailnetFacts
}

// startTailnet joins the tailnet (tsnet) or checks the host's tailscaled,
// and routes the NATS connections over it. The returned stop leaves it.
func (a *Agent) startTailnet(ctx context.Context) (stop func(), err error) {
	tc := &a.cfg.Tailnet
	if tc.Dir == "" {
		tc.Dir = filepath.Join(a.cfg.StateDir, "tailnet")
	}
	if tc.Hostname == "" {
		tc.Hostname = a.cfg.Name
	}
	if tc.ProbeEvery <= 0 {
		tc.ProbeEvery = 30 * time.Second
	}
	host := tailnet.HostClient(tc.TailscaledSocket)
	mode := tc.Mode
	switch mode {
	case "", TailnetOff:
		return func() {}, nil
	case TailnetAuto:
		mode = TailnetOff
		if tc.AuthKey != "" || tailnet.HasState(tc.Dir) {
			mode = TailnetTSNet
		} else if _, err := tailnet.HostRunning(ctx, host); err == nil && !loopbackURL(a.cfg.ControllerURL) {
			mode = TailnetHost // a loopback controller is not reached over the tailnet
		}
		a.log.Info("tailnet: detected", zap.String("mode", mode))
		if mode == TailnetOff {
			return func() {}, nil
		}
	case TailnetTSNet, TailnetHost:
	default:
		return nil, fmt.Errorf("--tailnet %q: want auto, tsnet, host or off", tc.Mode)
	}
	ts := &tailnetState{mode: mode}
	switch mode {
	case TailnetHost:
		if _, err := tailnet.HostRunning(ctx, host); err != nil {
			return nil, fmt.Errorf("--tailnet host: %w", err)
		}
		ts.lc = host
	case TailnetTSNet:
		if loopbackURL(a.cfg.ControllerURL) {
			return nil, fmt.Errorf("--controller %s is this host's loopback, which tsnet does not reach: give the controller's tailnet name or IP (e.g. nats://guildnet-controller:4222)", a.cfg.ControllerURL)
		}
		start := time.Now()
		node, err := tailnet.Join(ctx, tailnet.Config{Dir: tc.Dir, Hostname: tc.Hostname, AuthKey: tc.AuthKey,
			ControlURL: tc.ControlURL, Timeout: tc.JoinTimeout})
		if err != nil {
			return nil, err
		}
		ts.node, ts.lc = node, node.LocalAPI()
		a.log.Info("joined the tailnet", zap.String("hostname", tc.Hostname), zap.Stringer("ip", node.IPv4()),
			zap.Duration("took", time.Since(start)))
		// Every connection goes through tsnet; names resolve among the
		// tailnet's peers, never through the system resolver.
		a.cfg.NATSOptions = append(a.cfg.NATSOptions, nats.SetCustomDialer(tsnetDialer{node}), nats.SkipHostLookup())
	}
	a.tn = ts
	// The network checks ask the tailscaled this agent actually uses.
	if lc, ok := ts.lc.(checks.LocalAPI); ok {
		a.cfg.Tasks = a.cfg.Tasks.With(tasks.Verify{Tailscale: lc})
	}
	// The enrollment carries what is known before the first probe.
	f := messages.TailnetFacts{Mode: mode, Hostname: tc.Hostname, Path: messages.PathUnknown}
	if ts.node != nil {
		for _, ip := range ts.node.IPs() {
			f.IPs = append(f.IPs, ip.String())
		}
	}
	ts.facts = &f
	a.addTailnetFacts(&a.facts)
	pctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.probeLoop(pctx) }()
	return func() {
		cancel()
		<-done
		if ts.node != nil {
			ts.node.Close()
		}
	}, nil
}

// loopbackURL reports whether a NATS URL names this host's loopback.
func loopbackURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(u.Hostname())
	return u.Hostname() == "localhost" || (err == nil && ip.IsLoopback())
}

type tsnetDialer struct{ n *tailnet.Node }

func (d tsnetDialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.n.Dial(ctx, network, addr)
}

// probeLoop measures the path to the controller after every connect and
// then every ProbeEvery; a change of path (not of RTT alone) makes the
// next heartbeat carry facts.
func (a *Agent) probeLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-a.ready:
	}
	every := a.cfg.Tailnet.ProbeEvery
	for {
		if a.nc.IsConnected() {
			a.probeOnce(ctx)
		}
		wait := every
		a.tn.mu.Lock()
		if a.tn.facts.Path == messages.PathUnknown {
			wait = min(every, 2*time.Second) // not measured yet: try again soon
		}
		a.tn.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (a *Agent) probeOnce(ctx context.Context) {
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(a.nc.ConnectedAddr()); err == nil {
		peer = ap.Addr().Unmap()
	}
	f := tailnet.Probe(ctx, a.tn.lc, a.tn.mode, peer)
	if f.Hostname == "" {
		f.Hostname = a.cfg.Tailnet.Hostname
	}
	a.tn.mu.Lock()
	old := a.tn.facts
	a.tn.facts = &f
	a.tn.mu.Unlock()
	if old == nil || old.Path != f.Path || old.ControllerIP != f.ControllerIP || old.DERPRegion != f.DERPRegion || (old.Error == "") != (f.Error == "") {
		a.log.Info("tailnet path to the controller", zap.String("path", f.Path), zap.String("controller", f.ControllerIP),
			zap.Float64("rtt_ms", f.RTTMS), zap.String("derp", f.DERPRegion), zap.String("error", f.Error))
		a.needFacts.Store(true)
	}
}

// addTailnetFacts puts the latest tailnet facts into f.
func (a *Agent) addTailnetFacts(f *messages.Facts) {
	if a.tn == nil {
		return
	}
	a.tn.mu.Lock()
	defer a.tn.mu.Unlock()
	if a.tn.facts == nil {
		return
	}
	tf := *a.tn.facts
	f.Tailnet = &tf
	if len(f.TailnetIPs) == 0 {
		f.TailnetIPs = tf.IPs
	}
}

// TailnetFacts returns the agent's latest tailnet facts (nil when it is not
// on the tailnet).
func (a *Agent) TailnetFacts() *messages.TailnetFacts {
	if a.tn == nil {
		return nil
	}
	a.tn.mu.Lock()
	defer a.tn.mu.Unlock()
	if a.tn.facts == nil {
		return nil
	}
	tf := *a.tn.facts
	return &tf
}
