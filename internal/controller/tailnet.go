package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/internal/tailnet"
	"github.com/guildnet/metaguildnet/internal/tlspin"
)

// DefaultTailnetHostname is the controller's name on the tailnet.
const DefaultTailnetHostname = "guildnet-controller"

// TailnetOptions put the controller on the tailnet (docs/TAILNET.md).
type TailnetOptions struct {
	// Enabled joins the tailnet with tsnet and serves NATS only on the
	// tailnet address: the embedded server listens on no TCP port at all;
	// connections accepted by tsnet are spliced into it, and the local CLI
	// uses a unix socket in the data dir.
	Enabled bool
	// AuthKey (needed on the first start only; never logged), ControlURL
	// (the login server, Headscale) and Hostname (default
	// guildnet-controller). The tsnet state lives in DATA_DIR/tailnet.
	AuthKey    string
	ControlURL string
	Hostname   string
	// Port is the NATS port on the tailnet address (default 4222).
	Port int
	// JoinTimeout bounds the wait to join (default 60s).
	JoinTimeout time.Duration
	// TailscaledSocket is the host tailscaled's LocalAPI socket, used when
	// Listen is "tailnet" or "tailnet:PORT" ("" for the default).
	TailscaledSocket string
}

// TLSOptions serve NATS with TLS (outside the tailnet).
type TLSOptions struct {
	// Enabled serves TLS with a CA kept in DATA_DIR/tls (made on the first
	// start) unless CertFile and KeyFile are given. Join tokens then carry
	// the CA's pin.
	Enabled           bool
	CertFile, KeyFile string
	// Hosts are extra names and IPs for the generated server certificate.
	Hosts []string
}

// LocalSocket is the unix socket the local CLI uses when NATS does not
// listen on the host's loopback (tailnet or TLS mode).
const LocalSocket = "nats.sock"

// transport is how clients reach the embedded server besides in-process:
// the tsnet listener, the local unix socket, TLS.
type transport struct {
	log  *zap.Logger
	node *tailnet.Node
	tls  *tlspin.Server
	host string // tailnet address when listening there (tsnet or host tailscaled)
	port int    // NATS port on the tsnet node

	mu        sync.Mutex
	listeners []net.Listener
	natsURL   string
	sockPath  string
	wg        sync.WaitGroup
}

// prepareTransport resolves --listen tailnet, joins the tailnet and loads
// the TLS material, before the embedded server starts.
func (c *Controller) prepareTransport(ctx context.Context) error {
	o := &c.opts
	if o.Tailnet.Port == 0 {
		o.Tailnet.Port = 4222
	}
	tr := &transport{log: c.log.Named("transport"), port: o.Tailnet.Port}
	c.tr = tr
	if rest, ok := strings.CutPrefix(o.Listen, "tailnet"); ok {
		if o.Tailnet.Enabled {
			return errors.New("--listen tailnet uses the host's tailscaled; --tailnet joins with tsnet: pick one")
		}
		port := "4222"
		if rest != "" {
			p, ok := strings.CutPrefix(rest, ":")
			if n, err := strconv.Atoi(p); !ok || err != nil || n < 0 || n > 65535 {
				return fmt.Errorf("--listen %q: want tailnet or tailnet:PORT", o.Listen)
			}
			port = p
		}
		ip, err := tailnet.HostIP(ctx, tailnet.HostClient(o.Tailnet.TailscaledSocket))
		if err != nil {
			return fmt.Errorf("--listen %s: finding this host's tailnet address: %w", o.Listen, err)
		}
		o.Listen = net.JoinHostPort(ip.String(), port)
		tr.host = ip.String()
		c.log.Info("listening on the host's tailnet address (from tailscaled)", zap.String("listen", o.Listen))
	}
	if o.Tailnet.Enabled {
		if o.Tailnet.Hostname == "" {
			o.Tailnet.Hostname = DefaultTailnetHostname
		}
		start := time.Now()
		node, err := tailnet.Join(ctx, tailnet.Config{
			Dir: filepath.Join(o.DataDir, "tailnet"), Hostname: o.Tailnet.Hostname,
			AuthKey: o.Tailnet.AuthKey, ControlURL: o.Tailnet.ControlURL, Timeout: o.Tailnet.JoinTimeout,
		})
		if err != nil {
			return err
		}
		tr.node = node
		tr.host = node.IPv4().String()
		c.log.Debug("--tailnet: NATS listens on no host address; --listen is not used", zap.String("listen", o.Listen))
		c.log.Info("joined the tailnet", zap.String("hostname", o.Tailnet.Hostname), zap.String("ip", tr.host),
			zap.String("login_server", o.Tailnet.ControlURL), zap.Duration("took", time.Since(start)))
	}
	if o.TLS.Enabled || o.TLS.CertFile != "" {
		var err error
		if o.TLS.CertFile != "" || o.TLS.KeyFile != "" {
			tr.tls, err = tlspin.LoadPair(o.TLS.CertFile, o.TLS.KeyFile)
		} else {
			hosts := append([]string{tr.host, o.Tailnet.Hostname}, o.TLS.Hosts...)
			if h, _, err := net.SplitHostPort(o.Listen); err == nil {
				hosts = append(hosts, h)
			}
			if h, err := os.Hostname(); err == nil {
				hosts = append(hosts, h)
			}
			tr.tls, err = tlspin.EnsureCA(filepath.Join(o.DataDir, "tls"), hosts)
		}
		if err != nil {
			return err
		}
		c.tokens.pin = tr.tls.Pin
	}
	return nil
}

// apply adjusts the embedded server's options.
func (tr *transport) apply(o *server.Options) {
	if tr == nil {
		return
	}
	if tr.node != nil {
		o.DontListen = true
		o.Host, o.Port = "", 0
	}
	if tr.tls != nil {
		o.TLSConfig = tr.tls.Config
		o.TLS = true
		o.TLSTimeout = 5
	}
}

// serve starts the listeners that splice into the embedded server.
func (tr *transport) serve(ns *server.Server, dataDir string) error {
	if tr.node == nil && tr.tls == nil {
		return nil
	}
	if tr.node != nil {
		port := strconv.Itoa(tr.port)
		ln, err := tr.node.Listen("tcp", ":"+port)
		if err != nil {
			return fmt.Errorf("listen on the tailnet (:%s): %w", port, err)
		}
		tr.natsURL = "nats://" + net.JoinHostPort(tr.host, port)
		tr.accept(ns, ln, "tailnet")
	}
	// The local CLI: a unix socket only the data dir's owner can open.
	sock := filepath.Join(dataDir, LocalSocket)
	if len(sock) > 100 {
		return fmt.Errorf("local socket %s: the data dir's path is too long for a unix socket (at most 100 bytes)", sock)
	}
	os.Remove(sock) // left by a killed controller; the data dir lock says none runs
	old := syscallUmask(0o177)
	ln, err := net.Listen("unix", sock)
	syscallUmask(old)
	if err != nil {
		return fmt.Errorf("local socket %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("local socket %s: %w", sock, err)
	}
	tr.sockPath = sock
	tr.accept(ns, ln, "local")
	return nil
}

func (tr *transport) accept(ns *server.Server, ln net.Listener, name string) {
	tr.mu.Lock()
	tr.listeners = append(tr.listeners, ln)
	tr.mu.Unlock()
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					tr.log.Debug("accept ended", zap.String("listener", name), zap.Error(err))
				}
				return
			}
			splice(ns, conn, tr.log)
		}
	}()
}

// splice joins an accepted connection to a new in-process connection of the
// embedded server; when either side ends, both are closed.
func splice(ns *server.Server, conn net.Conn, log *zap.Logger) {
	sc, err := ns.InProcessConn()
	if err != nil {
		log.Warn("in-process connection refused", zap.Error(err))
		conn.Close()
		return
	}
	var once sync.Once
	closeBoth := func() { conn.Close(); sc.Close() }
	go func() { io.Copy(sc, conn); once.Do(closeBoth) }()
	go func() { io.Copy(conn, sc); once.Do(closeBoth) }()
}

// describe adds the transport to what the controller publishes.
func (tr *transport) describe(info *runinfo.Info) {
	if tr == nil {
		return
	}
	if tr.natsURL != "" {
		info.NATSURL = tr.natsURL
	}
	if tr.node != nil {
		info.TailnetHostname = tr.node.Hostname()
	}
	info.LocalSocket = tr.sockPath
	if tr.tls != nil {
		info.TLSPin = tr.tls.Pin
		info.TLSCAFile = tr.tls.CAFile
	}
}

// close stops the listeners and leaves the tailnet. Spliced connections end
// when the embedded server shuts down.
func (tr *transport) close() {
	if tr == nil {
		return
	}
	tr.mu.Lock()
	for _, ln := range tr.listeners {
		ln.Close()
	}
	tr.listeners = nil
	tr.mu.Unlock()
	tr.wg.Wait()
	if tr.sockPath != "" {
		os.Remove(tr.sockPath)
	}
	if tr.node != nil {
		tr.node.Close()
	}
}

func syscallUmask(m int) int { return syscall.Umask(m) }
