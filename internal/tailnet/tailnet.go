// Package tailnet puts the controller and the agents on a tailnet: either
// as their own tsnet node ([Join]) or through the host's tailscaled
// ([HostClient]). Both answer the same LocalAPI, which [Probe] uses to tell
// how a node reaches a peer (direct or relayed through DERP, and the RTT).
//
//	n, err := tailnet.Join(ctx, tailnet.Config{Dir: dir, Hostname: "guildnet-controller",
//		AuthKey: os.Getenv("TS_AUTHKEY"), ControlURL: os.Getenv("TS_LOGIN_SERVER")})
//	ln, err := n.Listen("tcp", ":4222")        // only reachable over the tailnet
//	c, err := n.Dial(ctx, "tcp", "guildnet-controller:4222") // names resolve among peers only
//
// A tsnet node advertises and probes the addresses of every interface it
// can see: tests and demos run it inside a loopback-only network namespace
// (internal/testenv).
package tailnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/paths"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
)

// Config says how to join.
type Config struct {
	// Dir holds the node's state (its keys: a restart rejoins as the same
	// node without an auth key) and its logs under Dir/logs. Required.
	Dir string
	// Hostname is the node's name on the tailnet. Required.
	Hostname string
	// AuthKey is needed only until the node has state in Dir. It is never
	// logged.
	AuthKey string
	// ControlURL is the login server (Headscale). "" means the one this
	// node last joined (kept in Dir), else Tailscale's.
	ControlURL string
	// Timeout bounds the wait until the node runs with an address
	// (default 60s).
	Timeout time.Duration
	// Logf receives tsnet's logs (default: Dir/logs/tsnet.log).
	Logf func(format string, args ...any)
}

// Node is a running tsnet node.
type Node struct {
	srv      *tsnet.Server
	lc       *local.Client
	hostname string
	ips      []netip.Addr
	logFile  *os.File
}

// Join starts a tsnet node and waits until it runs with a tailnet address.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Dir == "" || cfg.Hostname == "" {
		return nil, errors.New("join tailnet: state dir and hostname are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	logs := filepath.Join(cfg.Dir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return nil, fmt.Errorf("join tailnet as %s: %w", cfg.Hostname, err)
	}
	// tsnet would otherwise write logs under /var/lib/tailscale and upload
	// them to Tailscale's log service; a Headscale tailnet wants neither.
	setDefaultEnv("TS_LOGS_DIR", logs)
	setDefaultEnv("TS_NO_LOGS_NO_SUPPORT", "true")
	loginFile := filepath.Join(cfg.Dir, "login-server")
	if cfg.ControlURL == "" {
		if b, err := os.ReadFile(loginFile); err == nil {
			cfg.ControlURL = strings.TrimSpace(string(b))
		}
	}
	n := &Node{hostname: cfg.Hostname}
	logf := cfg.Logf
	if logf == nil {
		f, err := os.OpenFile(filepath.Join(logs, "tsnet.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("join tailnet as %s: log file: %w", cfg.Hostname, err)
		}
		n.logFile = f
		var mu sync.Mutex
		logf = func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(f, time.Now().UTC().Format("15:04:05.000 ")+format+"\n", args...)
		}
	}
	n.srv = &tsnet.Server{
		Dir:        filepath.Join(cfg.Dir, "state"),
		Hostname:   cfg.Hostname,
		AuthKey:    cfg.AuthKey,
		ControlURL: cfg.ControlURL,
		Logf:       logf,
		UserLogf:   logf,
	}
	uctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	st, err := n.srv.Up(uctx)
	if err != nil {
		n.Close()
		how := "with the auth key given"
		if cfg.AuthKey == "" {
			how = "without an auth key (give --ts-authkey or TS_AUTHKEY on the first start)"
		}
		return nil, fmt.Errorf("join tailnet at %s as %s %s: %w (tsnet log: %s)", orDefault(cfg.ControlURL), cfg.Hostname, how, err, filepath.Join(logs, "tsnet.log"))
	}
	n.ips = st.TailscaleIPs
	// A restart without --ts-login-server rejoins the same tailnet.
	if err := os.WriteFile(loginFile, []byte(cfg.ControlURL+"\n"), 0o600); err != nil {
		n.Close()
		return nil, fmt.Errorf("join tailnet as %s: %w", cfg.Hostname, err)
	}
	if n.lc, err = n.srv.LocalClient(); err != nil {
		n.Close()
		return nil, fmt.Errorf("join tailnet as %s: local client: %w", cfg.Hostname, err)
	}
	return n, nil
}

func orDefault(u string) string {
	if u == "" {
		return "Tailscale's control server"
	}
	return u
}

func setDefaultEnv(k, v string) {
	if os.Getenv(k) == "" {
		os.Setenv(k, v)
	}
}

// HasState reports whether dir (a Config.Dir) holds a node's state, so a
// restart needs no auth key.
func HasState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "state", "tailscaled.state"))
	return err == nil
}

// Listen listens on the node's tailnet addresses only.
func (n *Node) Listen(network, addr string) (net.Listener, error) { return n.srv.Listen(network, addr) }

// Dial dials addr across the tailnet. A host name resolves among the
// tailnet's peers only (never through the system resolver).
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, err := Resolve(ctx, n.lc, host)
	if err != nil {
		return nil, err
	}
	return n.srv.Dial(ctx, network, net.JoinHostPort(ip.String(), port))
}

// IPs are the node's tailnet addresses.
func (n *Node) IPs() []netip.Addr { return n.ips }

// IPv4 is the node's first IPv4 tailnet address (else its first address).
func (n *Node) IPv4() netip.Addr { return firstV4(n.ips) }

// Hostname is the node's name on the tailnet.
func (n *Node) Hostname() string { return n.hostname }

// LocalAPI is the node's LocalAPI client.
func (n *Node) LocalAPI() *local.Client { return n.lc }

// Close leaves the tailnet (the state stays in Dir).
func (n *Node) Close() error {
	var err error
	if n.srv != nil {
		err = n.srv.Close()
	}
	if n.logFile != nil {
		n.logFile.Close()
	}
	return err
}

// LocalAPI is the part of tailscaled's LocalAPI this package uses; tsnet's
// local client and the host's tailscaled both provide it.
type LocalAPI interface {
	Status(ctx context.Context) (*ipnstate.Status, error)
	Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error)
}

// HostClient is a LocalAPI client of the host's tailscaled; socket "" is
// the platform's default.
func HostClient(socket string) *local.Client {
	return &local.Client{Socket: socket, UseSocketOnly: socket != ""}
}

// HostRunning returns the host tailscaled's status when it is running and
// logged in, with a reason otherwise.
func HostRunning(ctx context.Context, lc LocalAPI) (*ipnstate.Status, error) {
	// Without a socket there is no tailscaled: say so at once (the
	// LocalAPI client would keep retrying for a tailscaled starting up).
	if c, ok := lc.(*local.Client); ok && runtime.GOOS == "linux" {
		sock := c.Socket
		if sock == "" {
			sock = paths.DefaultTailscaledSocket()
		}
		if _, err := os.Stat(sock); err != nil {
			return nil, fmt.Errorf("no tailscaled here (%v)", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := lc.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("tailscaled LocalAPI: %w", err)
	}
	if st.BackendState != "Running" {
		return st, fmt.Errorf("tailscaled is %s, not Running", st.BackendState)
	}
	if len(st.TailscaleIPs) == 0 {
		return st, errors.New("tailscaled has no tailnet address")
	}
	return st, nil
}

// HostIP returns the host's tailnet IPv4 address (else its first address)
// as tailscaled reports it.
func HostIP(ctx context.Context, lc LocalAPI) (netip.Addr, error) {
	st, err := HostRunning(ctx, lc)
	if err != nil {
		return netip.Addr{}, err
	}
	return firstV4(st.TailscaleIPs), nil
}

func firstV4(ips []netip.Addr) netip.Addr {
	for _, ip := range ips {
		if ip.Is4() {
			return ip
		}
	}
	if len(ips) > 0 {
		return ips[0]
	}
	return netip.Addr{}
}

// Resolve turns host (an IP, or a peer's hostname or MagicDNS name) into a
// tailnet IP using the peer list only.
func Resolve(ctx context.Context, lc LocalAPI, host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, nil
	}
	st, err := lc.Status(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %q on the tailnet: %w", host, err)
	}
	want := strings.ToLower(strings.TrimSuffix(host, "."))
	match := func(p *ipnstate.PeerStatus) bool {
		dns := strings.ToLower(strings.TrimSuffix(p.DNSName, "."))
		short, _, _ := strings.Cut(dns, ".")
		return strings.EqualFold(p.HostName, want) || dns == want || short == want
	}
	var found []*ipnstate.PeerStatus
	for _, p := range st.Peer {
		if match(p) && len(p.TailscaleIPs) > 0 {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %q: no such peer on the tailnet (%d peers)", host, len(st.Peer))
	}
	// Several nodes may share a hostname (a re-registered node): prefer
	// one that is online, then the most recently seen.
	best := found[0]
	for _, p := range found[1:] {
		if (p.Online && !best.Online) || (p.Online == best.Online && p.LastSeen.After(best.LastSeen)) {
			best = p
		}
	}
	return firstV4(best.TailscaleIPs), nil
}
