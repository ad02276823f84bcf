package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HeadscaleOptions configures [StartHeadscale]. The zero value is ready.
type HeadscaleOptions struct {
	// Dir holds config, keys, the sqlite database, the unix socket and the
	// log. Empty: a new temporary directory removed by Close.
	Dir string
	// StartTimeout bounds the wait for /health (default 30s).
	StartTimeout time.Duration
}

// Headscale is a real Headscale server on 127.0.0.1 with its embedded DERP
// (plain HTTP, STUN on 127.0.0.1), driven through its own CLI.
type Headscale struct {
	dir, config, url string
	sockDir          string // a short directory for the unix socket, when Dir is long
	ownDir           bool
	timeout          time.Duration

	mu   sync.Mutex
	proc *process
	// StartedIn is how long the last Start took until /health answered.
	StartedIn time.Duration
}

// StartHeadscale writes an offline config (see FACTS.md), starts Headscale
// and waits for /health. Call Close when done.
func StartHeadscale(ctx context.Context, opts HeadscaleOptions) (h *Headscale, err error) {
	if why := Missing(NeedHeadscale); why != "" {
		return nil, fmt.Errorf("start headscale: %s (run `make testenv`)", why)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	h = &Headscale{dir: opts.Dir, timeout: opts.StartTimeout}
	if h.dir == "" {
		if h.dir, err = os.MkdirTemp("", "mgn-hs-"); err != nil {
			return nil, fmt.Errorf("start headscale: temp dir: %w", err)
		}
		h.ownDir = true
	} else if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, fmt.Errorf("start headscale: dir: %w", err)
	}
	started := h // the named result is nil once an error is returned
	defer func() {
		if err != nil {
			started.Close()
		}
	}()
	// Ports picked free can be taken before Headscale binds them: write a
	// config with new ports and start again when that is why it failed.
	for attempt := 1; ; attempt++ {
		if err = h.writeConfig(); err != nil {
			return nil, fmt.Errorf("start headscale: %w", err)
		}
		err = h.Start(ctx)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return h, nil
}

func (h *Headscale) writeConfig() error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	stun, err := freeUDPPort()
	if err != nil {
		return err
	}
	h.url = "http://" + hostPort(ports[0])
	// The unix socket path must stay short (108 bytes), so it lives in its
	// own short temp directory when Dir is long.
	sock := filepath.Join(h.dir, "headscale.sock")
	if len(sock) > 100 {
		if h.sockDir == "" {
			sd, err := os.MkdirTemp("", "hs")
			if err != nil {
				return err
			}
			h.sockDir = sd
		}
		sock = filepath.Join(h.sockDir, "s.sock")
	}
	cfg := fmt.Sprintf(`server_url: %[1]s
listen_addr: %[2]s
metrics_listen_addr: %[3]s
grpc_listen_addr: %[4]s
grpc_allow_insecure: false
noise:
  private_key_path: %[5]s/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: headscale
    region_name: Headscale Embedded DERP
    verify_clients: true
    stun_listen_addr: 127.0.0.1:%[6]d
    private_key_path: %[5]s/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
node:
  expiry: 0
  ephemeral:
    inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: %[5]s/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: database
dns:
  magic_dns: false
  override_local_dns: false
  nameservers:
    global: []
unix_socket: %[7]s
unix_socket_permission: "0770"
logtail:
  enabled: false
`, h.url, hostPort(ports[0]), hostPort(ports[1]), hostPort(ports[2]), h.dir, stun, sock)
	h.config = filepath.Join(h.dir, "config.yaml")
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write headscale config: %w", err)
	}
	return nil
}

// Start (re)starts the server with the same config and state, and waits
// for /health. With Stop it is the "Headscale stopped" fault knob.
func (h *Headscale) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil && !h.proc.exited() {
		return nil
	}
	start := time.Now()
	p, err := startProcess("headscale", filepath.Join(h.dir, "headscale.log"), HeadscalePath(),
		[]string{"serve", "-c", h.config}, nil)
	if err != nil {
		return fmt.Errorf("start headscale: %w", err)
	}
	h.proc = p
	wctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if err := waitHTTP(wctx, p, &http.Client{Timeout: 2 * time.Second}, h.url+"/health", "", ""); err != nil {
		p.stop(2 * time.Second)
		return fmt.Errorf("start headscale: %w", err)
	}
	h.StartedIn = time.Since(start)
	return nil
}

// Stop ends the server (state is kept, so Start brings it back as it was).
func (h *Headscale) Stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proc.stop(5 * time.Second)
}

// Close stops the server and removes its directory when it made it.
func (h *Headscale) Close() {
	if h == nil {
		return
	}
	h.Stop()
	if h.sockDir != "" {
		_ = os.RemoveAll(h.sockDir)
	}
	if h.ownDir {
		_ = os.RemoveAll(h.dir)
	}
}

// URL is the login server URL (http on 127.0.0.1), for TS_LOGIN_SERVER.
func (h *Headscale) URL() string { return h.url }

// ConfigPath is the config file, for running the headscale CLI by hand:
// `headscale -c $(ConfigPath) nodes list`.
func (h *Headscale) ConfigPath() string { return h.config }

// Dir is the directory holding config, state and headscale.log.
func (h *Headscale) Dir() string { return h.dir }

// CLI runs `headscale -c CONFIG args...` and returns its standard output.
func (h *Headscale) CLI(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"-c", h.config}, args...)
	cmd := exec.CommandContext(ctx, HeadscalePath(), full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("headscale %s: %w: %s%s", strings.Join(args, " "), err,
			strings.TrimSpace(errb.String()), strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

func (h *Headscale) cliJSON(ctx context.Context, v any, args ...string) error {
	out, err := h.CLI(ctx, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("headscale %s: parse json: %w: %.300s", strings.Join(args, " "), err, out)
	}
	return nil
}

// HeadscaleUser is a user as `headscale users list -o json` shows it.
type HeadscaleUser struct {
	ID   uint64 `json:"id"`
	Name string `json:"name"`
}

// HeadscaleNode is a node as `headscale nodes list -o json` shows it.
type HeadscaleNode struct {
	ID              uint64         `json:"id"`
	Name            string         `json:"name"`
	GivenName       string         `json:"given_name"`
	IPAddresses     []string       `json:"ip_addresses"`
	User            *HeadscaleUser `json:"user"`
	Online          bool           `json:"online"`
	ApprovedRoutes  []string       `json:"approved_routes"`
	AvailableRoutes []string       `json:"available_routes"`
	SubnetRoutes    []string       `json:"subnet_routes"`
	Tags            []string       `json:"tags"`
}

// CreateUser creates a user and returns it (with its numeric id, which the
// CLI's --user flags take).
func (h *Headscale) CreateUser(ctx context.Context, name string) (HeadscaleUser, error) {
	var u HeadscaleUser
	if err := h.cliJSON(ctx, &u, "users", "create", name); err != nil {
		return u, fmt.Errorf("create headscale user %q: %w", name, err)
	}
	return u, nil
}

// ListUsers lists the users.
func (h *Headscale) ListUsers(ctx context.Context) ([]HeadscaleUser, error) {
	var us []HeadscaleUser
	if err := h.cliJSON(ctx, &us, "users", "list"); err != nil {
		return nil, fmt.Errorf("list headscale users: %w", err)
	}
	return us, nil
}

// CreatePreAuthKey makes a preauth key for the user id and returns the key.
func (h *Headscale) CreatePreAuthKey(ctx context.Context, userID uint64, reusable, ephemeral bool, expiry time.Duration) (string, error) {
	args := []string{"preauthkeys", "create", "--user", strconv.FormatUint(userID, 10),
		"--expiration", expiry.String()}
	if reusable {
		args = append(args, "--reusable")
	}
	if ephemeral {
		args = append(args, "--ephemeral")
	}
	var k struct {
		Key string `json:"key"`
	}
	if err := h.cliJSON(ctx, &k, args...); err != nil {
		return "", fmt.Errorf("create preauth key for user %d: %w", userID, err)
	}
	if k.Key == "" {
		return "", fmt.Errorf("create preauth key for user %d: empty key", userID)
	}
	return k.Key, nil
}

// ListNodes lists the nodes with their routes.
func (h *Headscale) ListNodes(ctx context.Context) ([]HeadscaleNode, error) {
	var ns []HeadscaleNode
	if err := h.cliJSON(ctx, &ns, "nodes", "list"); err != nil {
		return nil, fmt.Errorf("list headscale nodes: %w", err)
	}
	return ns, nil
}

// NodeByName finds a node by its (given) name or hostname.
func (h *Headscale) NodeByName(ctx context.Context, name string) (HeadscaleNode, error) {
	ns, err := h.ListNodes(ctx)
	if err != nil {
		return HeadscaleNode{}, err
	}
	for _, n := range ns {
		if n.Name == name || n.GivenName == name {
			return n, nil
		}
	}
	return HeadscaleNode{}, fmt.Errorf("headscale node %q: not found among %d nodes", name, len(ns))
}

// ApproveRoutes sets the node's approved routes to exactly cidrs, as
// `headscale nodes approve-routes -i ID -r CIDR,...` does. No cidrs removes
// every approval (the "route unapproved" fault knob).
func (h *Headscale) ApproveRoutes(ctx context.Context, nodeID uint64, cidrs ...string) error {
	_, err := h.CLI(ctx, "nodes", "approve-routes", "-i", strconv.FormatUint(nodeID, 10),
		"-r", strings.Join(cidrs, ","), "--force")
	if err != nil {
		return fmt.Errorf("approve routes %v on node %d: %w", cidrs, nodeID, err)
	}
	return nil
}

// DeleteNode removes a node.
func (h *Headscale) DeleteNode(ctx context.Context, nodeID uint64) error {
	if _, err := h.CLI(ctx, "nodes", "delete", "-i", strconv.FormatUint(nodeID, 10), "--force"); err != nil {
		return fmt.Errorf("delete node %d: %w", nodeID, err)
	}
	return nil
}

// CreateAPIKey creates an API key for Headscale's REST API (as `headscale
// apikeys create --expiration D`) and returns it. It is a secret: tests
// hand it on through a file or an environment variable, never a log.
func (h *Headscale) CreateAPIKey(ctx context.Context, expiry time.Duration) (string, error) {
	out, err := h.CLI(ctx, "apikeys", "create", "--expiration", expiry.String())
	if err != nil {
		return "", fmt.Errorf("create headscale api key: %w", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		return "", errors.New("create headscale api key: empty output")
	}
	return lines[len(lines)-1], nil
}

// PreAuthKey is a pre-auth key as `headscale preauthkeys list -o json`
// shows it (without the key itself).
type PreAuthKey struct {
	ID        uint64 `json:"id"`
	Reusable  bool   `json:"reusable"`
	Ephemeral bool   `json:"ephemeral"`
	Used      bool   `json:"used"`
}

// ListPreAuthKeys lists every pre-auth key.
func (h *Headscale) ListPreAuthKeys(ctx context.Context) ([]PreAuthKey, error) {
	var ks []PreAuthKey
	if err := h.cliJSON(ctx, &ks, "preauthkeys", "list"); err != nil {
		return nil, fmt.Errorf("list preauth keys: %w", err)
	}
	return ks, nil
}
