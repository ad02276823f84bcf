package collect

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/guildnet/metaguildnet/internal/procinfo"
)

// Components reports whether the node's GuildNet components are alive:
// tailscaled (LocalAPI socket and process), kubelet and containerd when
// installed (process, or systemd unit when systemctl exists), and TCP or
// HTTP probes of the configured host app, RethinkDB and Headscale addresses.
// It dials only the configured addresses, with short timeouts, and runs no
// command other than `systemctl is-active UNIT`.
//
// Metrics (1 up, 0 down; absent when not configured or not installed):
// tailscaled_up, kubelet_up, containerd_up, hostapp_port_up,
// rethinkdb_port_up, rethinkdb_connect_ms, headscale_health_up.
// Settings: TS_SOCKET (default /var/run/tailscale/tailscaled.sock),
// HOSTAPP_URL or LISTEN_LOCAL (default 127.0.0.1:8090), RETHINKDB_ADDR,
// HEADSCALE_URL.
type Components struct{}

func (Components) Name() string { return "components" }

// Component is one component's state.
type Component struct {
	Name    string `json:"name"`
	Up      bool   `json:"up"`
	Target  string `json:"target,omitempty"` // address, socket or unit probed
	Detail  string `json:"detail,omitempty"`
	Latency int64  `json:"latency_ms,omitempty"`
}

// Tailscaled's LocalAPI socket locations, in the order tailscaled picks them.
var tailscaleSockets = []string{"/var/run/tailscale/tailscaled.sock", "/run/tailscale/tailscaled.sock"}

func (Components) Collect(ctx context.Context, env *Env) (Section, error) {
	var s Section
	var procs []procinfo.Process
	if proc, err := procinfo.Open(env.ProcRoot); err == nil {
		procs = proc.Processes()
	}
	_, hasSystemctl := lookPath("systemctl")

	var (
		mu    sync.Mutex
		comps []Component
		wg    sync.WaitGroup
	)
	add := func(c Component, metric string) {
		c.Detail = env.Redact.String(c.Detail)
		c.Target = env.Redact.String(c.Target)
		mu.Lock()
		defer mu.Unlock()
		comps = append(comps, c)
		addMetric(&s, metric, boolMetric(c.Up))
		if c.Latency > 0 && c.Name == "rethinkdb" {
			addMetric(&s, "rethinkdb_connect_ms", float64(c.Latency))
		}
	}

	// tailscaled: the LocalAPI socket answering is what matters.
	sockets := tailscaleSockets
	if v := env.setting("TS_SOCKET", ""); v != "" {
		sockets = []string{v}
	}
	wg.Go(func() {
		c := Component{Name: "tailscaled"}
		for _, sock := range sockets {
			if _, err := os.Stat(sock); err != nil {
				continue
			}
			c.Target = sock
			d := net.Dialer{Timeout: env.Limits.DialTimeout}
			conn, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				c.Detail = "LocalAPI socket present but not answering: " + err.Error()
				break
			}
			conn.Close()
			c.Up, c.Detail = true, "LocalAPI socket answers"
			break
		}
		if !c.Up && running(procs, "tailscaled") {
			c.Up, c.Detail = true, strings.TrimPrefix(c.Detail+"; process running", "; ")
		}
		if c.Target == "" && !c.Up {
			c.Detail = "no LocalAPI socket (" + strings.Join(sockets, ", ") + ") and no tailscaled process"
		}
		add(c, "tailscaled_up")
	})

	// kubelet and containerd: only when installed on this node.
	for _, name := range []string{"kubelet", "containerd"} {
		wg.Go(func() {
			c := Component{Name: name}
			_, installed := lookPath(name)
			switch {
			case running(procs, name):
				c.Up, c.Detail, installed = true, "process running", true
			case hasSystemctl:
				state := systemctlActive(ctx, env, name)
				if state == "active" {
					c.Up, installed = true, true
				}
				if state != "" && state != "inactive" && state != "unknown" || installed {
					installed = true
				}
				c.Target, c.Detail = name+".service", "systemctl is-active: "+state
			}
			if !installed {
				mu.Lock()
				addNote(&s, env, "%s: not installed on this node, not checked", name)
				mu.Unlock()
				return
			}
			add(c, name+"_up")
		})
	}

	// Host app port. Probed at the default address too, but reported down
	// only where it is configured: most nodes do not run the host app.
	hostapp := env.setting("LISTEN_LOCAL", "127.0.0.1:8090")
	if u := env.setting("HOSTAPP_URL", ""); u != "" {
		hostapp = hostPort(u, "443")
	}
	configured := env.setting("LISTEN_LOCAL", "")+env.setting("HOSTAPP_URL", "") != ""
	wg.Go(func() {
		c := dialComponent(ctx, env, "hostapp", hostapp)
		if !c.Up && !configured {
			mu.Lock()
			addNote(&s, env, "hostapp: not configured here (LISTEN_LOCAL, HOSTAPP_URL) and nothing listens on %s, not checked", hostapp)
			mu.Unlock()
			return
		}
		add(c, "hostapp_port_up")
	})

	// RethinkDB: only when its address is configured on this node.
	if addr := env.setting("RETHINKDB_ADDR", ""); addr != "" {
		wg.Go(func() { add(dialComponent(ctx, env, "rethinkdb", hostPort(addr, "28015")), "rethinkdb_port_up") })
	}

	// Headscale: GET /health at the configured URL.
	if hs := env.setting("HEADSCALE_URL", ""); hs != "" {
		wg.Go(func() { add(headscaleHealth(ctx, env, hs), "headscale_health_up") })
	}
	wg.Wait()
	sortByName(comps)
	setData(&s, env, comps)
	return s, nil
}

func dialComponent(ctx context.Context, env *Env, name, addr string) Component {
	c := Component{Name: name, Target: addr}
	d := net.Dialer{Timeout: env.Limits.DialTimeout}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		c.Detail = "dial: " + err.Error()
		return c
	}
	conn.Close()
	c.Up, c.Latency, c.Detail = true, max(time.Since(start).Milliseconds(), 1), "port open"
	return c
}

func headscaleHealth(ctx context.Context, env *Env, base string) Component {
	c := Component{Name: "headscale", Target: strings.TrimRight(base, "/") + "/health"}
	ctx, cancel := context.WithTimeout(ctx, env.Limits.DialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Target, nil)
	if err != nil {
		c.Detail = "bad HEADSCALE_URL: " + err.Error()
		return c
	}
	// A liveness probe only: no credentials are sent, and the server's
	// certificate is verified by the network checks, not here.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		c.Detail = "GET /health: " + err.Error()
		return c
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	c.Up = resp.StatusCode == http.StatusOK
	c.Detail = "GET /health: " + resp.Status
	return c
}

// hostPort turns a URL or host[:port] into host:port.
func hostPort(s, defPort string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil && u.Host != "" {
			if u.Port() == "" {
				p := defPort
				switch u.Scheme {
				case "http":
					p = "80"
				case "https":
					p = "443"
				}
				return net.JoinHostPort(u.Hostname(), p)
			}
			return u.Host
		}
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(strings.Trim(s, "[]"), defPort)
}

// systemctlActive asks systemd for a unit's state; "" when it cannot say.
func systemctlActive(ctx context.Context, env *Env, unit string) string {
	ctx, cancel := context.WithTimeout(ctx, env.Limits.CommandTimeout)
	defer cancel()
	path, ok := lookPath("systemctl")
	if !ok {
		return ""
	}
	out, _ := exec.CommandContext(ctx, path, "is-active", unit+".service").Output()
	return strings.TrimSpace(string(out))
}

func lookPath(name string) (string, bool) {
	p, err := exec.LookPath(name)
	return p, err == nil
}

func sortByName(cs []Component) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].Name < cs[j-1].Name; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}
