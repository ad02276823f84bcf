package talosstandin

import (
	"crypto/tls"
	stdx509 "crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Defaults, named in one place.
const (
	// DefaultAddr is where Start listens when Options.Addr is empty.
	DefaultAddr = "127.0.0.1:0"
	// DefaultClusterName is used when Options.ClusterName is empty.
	DefaultClusterName = "guildnet"
	// DefaultEndpoint is the Kubernetes endpoint when Options.Endpoint is
	// empty.
	DefaultEndpoint = "https://127.0.0.1:6443"
	// TalosVersion is the tag Version answers: the machinery version this
	// project pins.
	TalosVersion = "v1.13.9"
	// MaxMessageSize bounds one gRPC message in either direction (machine
	// configs are tens of KiB).
	MaxMessageSize = 4 << 20
	// KubeconfigChunk is the size of the common.Data chunks of the
	// kubeconfig stream.
	KubeconfigChunk = 32 << 10
	// DefaultInstallDisk is the install disk of MachineConfig's configs, as
	// `talosctl gen config` defaults it (metal validation requires one).
	DefaultInstallDisk = "/dev/sda"
	// certTTL is how long the serving and client certificates are valid.
	certTTL = 24 * time.Hour
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Addr is the loopback host:port to listen on; default DefaultAddr.
	Addr string
	// ClusterName names the cluster and the talosconfig context; default
	// DefaultClusterName.
	ClusterName string
	// Endpoint is the Kubernetes API endpoint (https://IP:6443) used for
	// generated configs and the default kubeconfig; default DefaultEndpoint.
	Endpoint string
	// Nodes are the control-plane node addresses this machine answers for
	// (talosconfig nodes, etcd members); default ["127.0.0.1"].
	Nodes []string
	// Workers are worker node addresses it also answers for, as a worker
	// does: no etcd (EtcdMemberList fails for them) and no trustd.
	Workers []string
	// Maintenance starts the machine in maintenance mode (see the package
	// doc): insecure, Version and ApplyConfiguration only. Such a node's
	// Kubeconfig answers only once it is bootstrapped, and only on a
	// control-plane node.
	Maintenance bool

	// Name is the node's name in OnState calls and its etcd member's
	// hostname; default the first of Nodes.
	Name string
	// Role is what the endpoint itself is before a config says otherwise
	// (RoleControlPlane, the default, or RoleWorker); an applied config's
	// machine.type sets it.
	Role string
	// Kubeconfig is what the Kubeconfig call returns (the world's
	// kubeconfig); default one generated for Endpoint. SetKubeconfig
	// replaces it.
	Kubeconfig []byte
	// OnState, if set, is called on each transition of the node, outside
	// the server's locks: StateConfigured when it first accepts a config,
	// StateBootstrapped when it is configured and its cluster bootstrapped.
	// role is RoleControlPlane or RoleWorker. The test world registers the
	// Kubernetes Node (and CoreDNS) there, as a kubelet and Talos would.
	OnState func(node, role, state string)
	// Cluster makes this node one of several sharing an etcd (see
	// Cluster); nil: the node is a cluster of its own, answering for
	// Nodes and Workers as before.
	Cluster *Cluster
}

// Server is a running apid stand-in. Its methods are safe for concurrent
// use.
type Server struct {
	opts   Options
	bundle *secrets.Bundle
	ln     net.Listener
	grpc   *grpc.Server
	done   chan struct{}

	mu          sync.Mutex
	ca          *x509.PEMEncodedCertificateAndKey // issuing OS CA (key may be empty after a worker config)
	clientCAs   *stdx509.CertPool
	serving     *tls.Certificate
	maintenance bool
	applied     int
	lastConfig  []byte
	boot        bool
	members     []*machine.EtcdMember
	services    map[string]*machine.ServiceInfo            // a control-plane node's; a worker's lack etcd and trustd
	nodeSvcs    map[string]map[string]*machine.ServiceInfo // per-node overrides (SetNodeServiceState)
	kubeconfig  []byte
	closeOnce   sync.Once

	state    string // StateMaintenance, StateConfigured, StateBootstrapped
	role     string // RoleControlPlane or RoleWorker
	memberID uint64
	// pendingCA is an OS CA without its key (a worker config) waiting
	// for a control-plane node of the cluster that has the key.
	pendingCA *x509.PEMEncodedCertificateAndKey
	refusing  bool
	cluster   *Cluster
}

// Start generates a secrets bundle, listens on opts.Addr and serves until
// Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.ClusterName == "" {
		opts.ClusterName = DefaultClusterName
	}
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	if len(opts.Nodes) == 0 {
		opts.Nodes = []string{"127.0.0.1"}
	}
	opts.Nodes = slices.Clone(opts.Nodes)
	opts.Workers = slices.Clone(opts.Workers)
	if opts.Name == "" {
		opts.Name = opts.Nodes[0]
	}
	switch opts.Role {
	case "":
		opts.Role = RoleControlPlane
	case RoleControlPlane, RoleWorker:
	default:
		return nil, fmt.Errorf("talosstandin: role %q is neither %s nor %s", opts.Role, RoleControlPlane, RoleWorker)
	}
	if err := checkLoopback(opts.Addr); err != nil {
		return nil, err
	}
	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: generating secrets bundle: %w", err)
	}
	s := &Server{
		opts:        opts,
		bundle:      bundle,
		done:        make(chan struct{}),
		maintenance: opts.Maintenance,
		services:    defaultServices(time.Now()),
		nodeSvcs:    map[string]map[string]*machine.ServiceInfo{},
		state:       StateConfigured,
		role:        opts.Role,
		cluster:     opts.Cluster,
	}
	if opts.Maintenance {
		s.state = StateMaintenance
	}
	if err := s.setIdentity(bundle.Certs.OS); err != nil {
		return nil, err
	}
	if len(opts.Kubeconfig) > 0 {
		s.kubeconfig = slices.Clone(opts.Kubeconfig)
	} else if s.kubeconfig, err = s.defaultKubeconfig(); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: listening on %s: %w", opts.Addr, err)
	}
	s.ln = ln
	tlsCfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: s.tlsConfigForClient,
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.UnaryInterceptor(s.unaryInterceptor),
		grpc.StreamInterceptor(s.streamInterceptor),
	)
	machine.RegisterMachineServiceServer(s.grpc, &machineService{s: s})
	if s.cluster != nil {
		s.cluster.join(s)
	}
	go func() {
		defer close(s.done)
		_ = s.grpc.Serve(ln)
	}()
	return s, nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("talosstandin: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("talosstandin: address %q is not a loopback address; the stand-in listens on loopback only", addr)
}

// setIdentity makes ca the OS CA: the serving certificate is issued by it
// (if its key is known) and client certificates must chain to it.
func (s *Server) setIdentity(ca *x509.PEMEncodedCertificateAndKey) error {
	if len(ca.Key) == 0 && s.cluster != nil {
		// A worker config carries the CA certificate only; a real worker
		// gets its apid certificate from trustd on a control-plane node,
		// which has the key.
		if full := s.cluster.issuer(ca.Crt); full != nil {
			ca = full
		}
	}
	pool := stdx509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.Crt) {
		return errors.New("talosstandin: OS CA certificate is not valid PEM")
	}
	var serving *tls.Certificate
	if len(ca.Key) > 0 {
		authority, err := x509.NewCertificateAuthorityFromCertificateAndKey(ca)
		if err != nil {
			return fmt.Errorf("talosstandin: loading OS CA: %w", err)
		}
		ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		for _, n := range s.allNodes() {
			if ip := net.ParseIP(n); ip != nil {
				ips = append(ips, ip)
			}
		}
		kp, err := x509.NewKeyPair(authority,
			x509.CommonName("apid"),
			x509.IPAddresses(ips),
			x509.DNSNames([]string{"localhost"}),
			x509.NotAfter(time.Now().Add(certTTL)),
			x509.NotBefore(time.Now().Add(-time.Minute)),
			x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
		)
		if err != nil {
			return fmt.Errorf("talosstandin: issuing apid serving certificate: %w", err)
		}
		serving = kp.Certificate
	}
	s.mu.Lock()
	if serving == nil {
		defer s.mu.Unlock()
		// A worker config carries the CA certificate only: trust clients
		// from it too, keep serving the current certificate.
		if s.clientCAs != nil {
			pool := s.clientCAs.Clone() // readers may hold the old pool
			pool.AppendCertsFromPEM(ca.Crt)
			s.clientCAs = pool
			// Until a control-plane node with the key joins (trustd).
			s.pendingCA = ca
			return nil
		}
		return errors.New("talosstandin: OS CA has no key to issue a serving certificate")
	}
	s.ca, s.clientCAs, s.serving, s.pendingCA = ca, pool, serving, nil
	s.mu.Unlock()
	if s.cluster != nil {
		for _, n := range s.cluster.addIssuer(ca) {
			if err := n.setIdentity(ca); err != nil {
				return err
			}
		}
	}
	return nil
}

// tlsConfigForClient picks the TLS settings at each handshake, so that an
// identity change or leaving maintenance mode takes effect for new
// connections.
func (s *Server) tlsConfigForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*s.serving},
		NextProtos:   []string{"h2"},
	}
	if s.maintenance {
		cfg.ClientAuth = tls.NoClientCert
	} else {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = s.clientCAs
	}
	return cfg, nil
}

// Endpoint is the host:port the talos client dials.
func (s *Server) Endpoint() string { return s.ln.Addr().String() }

// Talosconfig returns a talosconfig (YAML) whose one context points at
// Endpoint, lists Options.Nodes, and carries an os:admin client certificate
// from the current OS CA.
func (s *Server) Talosconfig() ([]byte, error) {
	return s.talosconfig(role.MakeSet(role.Admin))
}

// TalosconfigWithRoles is Talosconfig with a client certificate carrying
// the given roles instead of os:admin (to test RBAC).
func (s *Server) TalosconfigWithRoles(roles ...role.Role) ([]byte, error) {
	return s.talosconfig(role.MakeSet(roles...))
}

func (s *Server) talosconfig(roles role.Set) ([]byte, error) {
	s.mu.Lock()
	ca := s.ca
	s.mu.Unlock()
	client, err := secrets.NewAdminCertificateAndKey(time.Now(), ca, roles, certTTL)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: issuing talosconfig client certificate: %w", err)
	}
	cfg := clientconfig.NewConfig(s.opts.ClusterName, []string{s.Endpoint()}, ca.Crt, client)
	cfg.Contexts[s.opts.ClusterName].Nodes = s.allNodes()
	b, err := cfg.Bytes()
	if err != nil {
		return nil, fmt.Errorf("talosstandin: encoding talosconfig: %w", err)
	}
	return b, nil
}

// WriteTalosconfig writes Talosconfig to path (mode 0600).
func (s *Server) WriteTalosconfig(path string) error {
	b, err := s.Talosconfig()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("talosstandin: writing talosconfig: %w", err)
	}
	return nil
}

// MachineConfig generates a real machine config of the given type
// (configmachine.TypeControlPlane or TypeWorker) from the stand-in's own
// secrets bundle, cluster name and endpoint, encoded as Talos writes it.
func (s *Server) MachineConfig(typ configmachine.Type) ([]byte, error) {
	in, err := generate.NewInput(s.opts.ClusterName, s.opts.Endpoint, constants.DefaultKubernetesVersion,
		generate.WithSecretsBundle(s.bundle),
		generate.WithEndpointList([]string{s.Endpoint()}),
		generate.WithInstallDisk(DefaultInstallDisk),
	)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: config input: %w", err)
	}
	cfg, err := in.Config(typ)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: generating %s config: %w", typ, err)
	}
	b, err := cfg.EncodeBytes()
	if err != nil {
		return nil, fmt.Errorf("talosstandin: encoding %s config: %w", typ, err)
	}
	return b, nil
}

// SetServiceState sets (or adds) service id with the given state (e.g.
// "Running", "Failed", "Preparing") and health.
func (s *Server) SetServiceState(id, state string, healthy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.services[id] = newService(id, state, healthy, time.Now(), "set by the test")
}

// SetNodeServiceState sets (or adds) service id on one node only, e.g. a
// worker's kubelet "Waiting" or "Starting", or "Failed"; state "" removes
// the override.
func (s *Server) SetNodeServiceState(node, id, state string, healthy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == "" {
		delete(s.nodeSvcs[node], id)
		return
	}
	if s.nodeSvcs[node] == nil {
		s.nodeSvcs[node] = map[string]*machine.ServiceInfo{}
	}
	s.nodeSvcs[node][id] = newService(id, state, healthy, time.Now(), "set by the test")
}

// allNodes are the control-plane nodes, then the workers.
func (s *Server) allNodes() []string { return slices.Concat(s.opts.Nodes, s.opts.Workers) }

// isWorker reports whether node is one of Options.Workers, or, for the
// endpoint itself (""), whether the node is a worker. s.mu is held.
func (s *Server) isWorkerLocked(node string) bool {
	if node == "" {
		return s.role == RoleWorker
	}
	return slices.Contains(s.opts.Workers, node)
}

func (s *Server) isWorker(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isWorkerLocked(node)
}

// State is the node's state: StateMaintenance, StateConfigured or
// StateBootstrapped.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Role is the node's role: Options.Role until a config's machine.type
// sets it.
func (s *Server) Role() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.role
}

// Name is Options.Name.
func (s *Server) Name() string { return s.opts.Name }

// SetRefusing is a fault knob: while on, every call fails with
// Unavailable ("connection refused"), as an apid that is restarting or
// firewalled answers through the client; the node's state is kept.
func (s *Server) SetRefusing(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refusing = on
}

// SetKubeconfig replaces the bytes the Kubeconfig call returns.
func (s *Server) SetKubeconfig(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kubeconfig = slices.Clone(b)
}

// Bootstrapped reports whether Bootstrap has succeeded.
func (s *Server) Bootstrapped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.boot
}

// AppliedConfigs counts accepted ApplyConfiguration calls (dry runs are
// not counted): the node's config version. A step that re-applies an
// unchanged config shows here.
func (s *Server) AppliedConfigs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// LastAppliedConfig returns the bytes of the last accepted config, or nil.
func (s *Server) LastAppliedConfig() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lastConfig)
}

// InMaintenance reports whether the machine is in maintenance mode.
func (s *Server) InMaintenance() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maintenance
}

// Close stops the server at once, cutting open connections, and waits for
// it to end. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.grpc.Stop()
		<-s.done
	})
}
