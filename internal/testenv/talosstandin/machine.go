package talosstandin

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	stdx509 "crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	configpkg "github.com/siderolabs/talos/pkg/machinery/config"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Who may call what, as Talos' apid authorizer has it for these methods.
var methodRoles = map[string]role.Set{
	machine.MachineService_Version_FullMethodName:            role.MakeSet(role.Admin, role.Operator, role.Reader),
	machine.MachineService_ServiceList_FullMethodName:        role.MakeSet(role.Admin, role.Operator, role.Reader),
	machine.MachineService_EtcdMemberList_FullMethodName:     role.MakeSet(role.Admin, role.Operator, role.Reader),
	machine.MachineService_ApplyConfiguration_FullMethodName: role.MakeSet(role.Admin),
	machine.MachineService_Bootstrap_FullMethodName:          role.MakeSet(role.Admin),
	machine.MachineService_Kubeconfig_FullMethodName:         role.MakeSet(role.Admin),
	machine.MachineService_Read_FullMethodName:               role.MakeSet(role.Admin),
}

// maintenanceMethods are what a machine in maintenance mode answers.
var maintenanceMethods = map[string]bool{
	machine.MachineService_Version_FullMethodName:            true,
	machine.MachineService_ApplyConfiguration_FullMethodName: true,
}

// authorize applies maintenance gating and role checks for a call.
func (s *Server) authorize(ctx context.Context, method string) error {
	s.mu.Lock()
	maint, refusing := s.maintenance, s.refusing
	s.mu.Unlock()
	if refusing {
		return status.Error(codes.Unavailable, "connection error: dial tcp: connect: connection refused (talosstandin: refusing, fault knob)")
	}
	if maint {
		if !maintenanceMethods[method] {
			return status.Errorf(codes.Unimplemented, "API is not implemented in maintenance mode")
		}
		return nil
	}
	allowed, known := methodRoles[method]
	if !known {
		return nil // not implemented here; the handler says so
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		// E.g. a connection opened in maintenance mode, without a certificate.
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	leaf := info.State.VerifiedChains[0][0]
	// A connection made before the machine took a new identity (or left
	// maintenance mode) must not outlive it, as it would not on a node that
	// rebooted: check the client certificate against today's CA.
	s.mu.Lock()
	pool := s.clientCAs
	s.mu.Unlock()
	if _, err := leaf.Verify(stdx509.VerifyOptions{Roots: pool, KeyUsages: []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageClientAuth}}); err != nil {
		return status.Errorf(codes.Unauthenticated, "client certificate is not trusted: %s", err)
	}
	roles, _ := role.Parse(leaf.Subject.Organization)
	if !roles.IncludesAny(allowed) {
		return status.Errorf(codes.PermissionDenied, "not authorized")
	}
	return nil
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer recoverInto(&err, info.FullMethod)
	if err := s.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if _, err := s.targets(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer recoverInto(&err, info.FullMethod)
	if err := s.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	if _, err := s.targets(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// recoverInto turns a panic in a handler into an Internal error, so one bad
// request cannot take the server down (gRPC does not recover handlers).
func recoverInto(err *error, method string) {
	if r := recover(); r != nil {
		*err = status.Errorf(codes.Internal, "talosstandin: %s panicked: %v", method, r)
	}
}

// target is one node a call is answered for. md is nil for a call to the
// endpoint itself (no node metadata), as apid leaves it then.
type target struct {
	md  *common.Metadata
	err bool // the node is unknown: answer only md with its error
}

// targets reads the "node"/"nodes" metadata the talos client sets with
// client.WithNode(s). A single unknown "node" fails the call (apid cannot
// proxy to it); unknown entries of "nodes" get a per-node error message.
func (s *Server) targets(ctx context.Context) ([]target, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if n := md.Get("node"); len(n) > 0 {
		if !slices.Contains(s.allNodes(), n[0]) {
			return nil, status.Errorf(codes.Unavailable, "connection error: node %q is not reachable from this stand-in (known nodes: %s)", n[0], strings.Join(s.allNodes(), ", "))
		}
		return []target{{md: &common.Metadata{Hostname: n[0]}}}, nil
	}
	nodes := md.Get("nodes")
	if len(nodes) == 0 {
		return []target{{}}, nil
	}
	out := make([]target, 0, len(nodes))
	for _, n := range nodes {
		if slices.Contains(s.allNodes(), n) {
			out = append(out, target{md: &common.Metadata{Hostname: n}})
			continue
		}
		msg := fmt.Sprintf("rpc error: code = Unavailable desc = node %q is not reachable from this stand-in", n)
		out = append(out, target{err: true, md: &common.Metadata{Hostname: n, Error: msg}})
	}
	return out, nil
}

// machineService implements the MachineService calls of the stand-in.
type machineService struct {
	machine.UnimplementedMachineServiceServer
	s *Server
}

func (m *machineService) Version(ctx context.Context, _ *emptypb.Empty) (*machine.VersionResponse, error) {
	ts, err := m.s.targets(ctx)
	if err != nil {
		return nil, err
	}
	resp := &machine.VersionResponse{}
	for _, t := range ts {
		if t.err {
			resp.Messages = append(resp.Messages, &machine.Version{Metadata: t.md})
			continue
		}
		resp.Messages = append(resp.Messages, &machine.Version{
			Metadata: t.md,
			Version: &machine.VersionInfo{
				Tag:       TalosVersion,
				Sha:       "talosstandin",
				GoVersion: runtime.Version(),
				Os:        "linux",
				Arch:      runtime.GOARCH,
			},
			Platform: &machine.PlatformInfo{Name: "metal", Mode: "metal"},
			Features: &machine.FeaturesInfo{Rbac: true},
		})
	}
	return resp, nil
}

// loadConfig parses and validates a machine config as apid does, turning
// any failure (even a panic in the loader) into an InvalidArgument status.
func loadConfig(data []byte) (cfg talosconfigProvider, warnings []string, err error) {
	defer func() {
		if r := recover(); r != nil {
			cfg, warnings, err = nil, nil, status.Errorf(codes.InvalidArgument, "failed to parse config: %v", r)
		}
	}()
	if len(data) > MaxMessageSize {
		return nil, nil, status.Errorf(codes.InvalidArgument, "config of %d bytes exceeds %d", len(data), MaxMessageSize)
	}
	cfg, err = configloader.NewFromBytes(data)
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "failed to parse config: %s", err)
	}
	warnings, err = cfg.Validate(metalMode{})
	if err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "configuration validation failed: %s", err)
	}
	return cfg, warnings, nil
}

// talosconfigProvider is the loaded machine config.
type talosconfigProvider = configpkg.Provider

// issuingCA returns the OS CA a machine config carries, or nil.
func issuingCA(mc talosconfig.MachineConfig) *x509.PEMEncodedCertificateAndKey {
	if mc == nil {
		return nil
	}
	sec := mc.Security()
	if sec == nil {
		return nil
	}
	ca := sec.IssuingCA()
	if ca == nil || len(ca.Crt) == 0 {
		return nil
	}
	return ca
}

// metalMode is the runtime mode configs are validated for: bare metal.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

func (m *machineService) ApplyConfiguration(ctx context.Context, req *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	cfg, warnings, err := loadConfig(req.GetData())
	if err != nil {
		return nil, err
	}
	s := m.s
	s.mu.Lock()
	maint := s.maintenance
	s.mu.Unlock()

	mode := req.GetMode()
	if mode == machine.ApplyConfigurationRequest_AUTO {
		mode = machine.ApplyConfigurationRequest_NO_REBOOT
		if maint {
			mode = machine.ApplyConfigurationRequest_REBOOT
		}
	}
	if maint && (mode == machine.ApplyConfigurationRequest_STAGED || mode == machine.ApplyConfigurationRequest_TRY) {
		return nil, status.Errorf(codes.InvalidArgument, "apply configuration mode %s is not supported in maintenance mode", mode)
	}
	details := map[machine.ApplyConfigurationRequest_Mode]string{
		machine.ApplyConfigurationRequest_REBOOT:    "Applied configuration with a reboot",
		machine.ApplyConfigurationRequest_NO_REBOOT: "Applied configuration without a reboot",
		machine.ApplyConfigurationRequest_STAGED:    "Staged configuration to be applied after a reboot",
		machine.ApplyConfigurationRequest_TRY:       "Applied configuration in a try mode",
	}[mode]
	if req.GetDryRun() {
		details = "Dry run summary:\n" + details + " (no changes were made)"
	} else {
		if ca := issuingCA(cfg.Machine()); ca != nil {
			if err := s.setIdentity(ca); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "applying the config's OS CA: %s", err)
			}
		}
		s.mu.Lock()
		s.applied++
		s.lastConfig = slices.Clone(req.GetData())
		s.maintenance = false
		if t := cfg.Machine().Type().String(); t == RoleControlPlane || t == RoleWorker {
			s.role = t
		}
		var notes notifications
		if s.state == StateMaintenance {
			s.state = StateConfigured
			notes = notifications{{fn: s.opts.OnState, node: s.opts.Name, role: s.role, state: StateConfigured}}
		}
		s.mu.Unlock()
		notes.fire()
		if s.cluster != nil {
			s.cluster.configured(s)
		}
	}
	ts, err := s.targets(ctx)
	if err != nil {
		return nil, err
	}
	resp := &machine.ApplyConfigurationResponse{}
	for _, t := range ts {
		if t.err {
			resp.Messages = append(resp.Messages, &machine.ApplyConfiguration{Metadata: t.md})
			continue
		}
		resp.Messages = append(resp.Messages, &machine.ApplyConfiguration{
			Metadata: t.md, Warnings: warnings, Mode: mode, ModeDetails: details,
		})
	}
	return resp, nil
}

func (m *machineService) Bootstrap(ctx context.Context, req *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	s := m.s
	if s.cluster != nil {
		if err := s.cluster.bootstrap(s); err != nil {
			return nil, err
		}
		return bootstrapResponse(ctx, s)
	}
	s.mu.Lock()
	if s.boot {
		s.mu.Unlock()
		return nil, status.Error(codes.FailedPrecondition, "etcd data directory is not empty")
	}
	if s.role == RoleWorker {
		s.mu.Unlock()
		return nil, status.Error(codes.FailedPrecondition, "bootstrap is not available on a worker node: only a control plane node runs etcd")
	}
	s.boot = true
	s.state = StateBootstrapped
	notes := notifications{{fn: s.opts.OnState, node: s.opts.Name, role: s.role, state: StateBootstrapped}}
	now := time.Now()
	s.members = nil
	for _, n := range s.opts.Nodes {
		s.members = append(s.members, &machine.EtcdMember{
			Id:         randomID(),
			Hostname:   hostnameFor(n),
			PeerUrls:   []string{"https://" + net.JoinHostPort(n, "2380")},
			ClientUrls: []string{"https://" + net.JoinHostPort(n, "2379")},
		})
	}
	s.services["etcd"] = newService("etcd", "Running", true, now, "Health check successful")
	s.mu.Unlock()
	notes.fire()
	return bootstrapResponse(ctx, s)
}

func bootstrapResponse(ctx context.Context, s *Server) (*machine.BootstrapResponse, error) {
	ts, err := s.targets(ctx)
	if err != nil {
		return nil, err
	}
	resp := &machine.BootstrapResponse{}
	for _, t := range ts {
		resp.Messages = append(resp.Messages, &machine.Bootstrap{Metadata: t.md})
	}
	return resp, nil
}

func (m *machineService) EtcdMemberList(ctx context.Context, _ *machine.EtcdMemberListRequest) (*machine.EtcdMemberListResponse, error) {
	s := m.s
	s.mu.Lock()
	boot := s.boot
	members := make([]*machine.EtcdMember, 0, len(s.members))
	for _, mem := range s.members {
		members = append(members, &machine.EtcdMember{
			Id: mem.Id, Hostname: mem.Hostname, IsLearner: mem.IsLearner,
			PeerUrls: slices.Clone(mem.PeerUrls), ClientUrls: slices.Clone(mem.ClientUrls),
		})
	}
	s.mu.Unlock()
	if !boot {
		return nil, status.Error(codes.Unavailable, "etcd is not running: the cluster has not been bootstrapped")
	}
	ts, err := s.targets(ctx)
	if err != nil {
		return nil, err
	}
	resp := &machine.EtcdMemberListResponse{}
	for _, t := range ts {
		if node := t.md.GetHostname(); s.isWorker(node) {
			msg := fmt.Sprintf("rpc error: code = FailedPrecondition desc = etcd is not running on %s: it is a worker node", node)
			if len(ts) == 1 {
				return nil, status.Errorf(codes.FailedPrecondition, "etcd is not running on %s: it is a worker node", node)
			}
			resp.Messages = append(resp.Messages, &machine.EtcdMembers{Metadata: &common.Metadata{Hostname: node, Error: msg}})
			continue
		}
		if t.err {
			resp.Messages = append(resp.Messages, &machine.EtcdMembers{Metadata: t.md})
			continue
		}
		resp.Messages = append(resp.Messages, &machine.EtcdMembers{Metadata: t.md, Members: members})
	}
	return resp, nil
}

func (m *machineService) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machine.ServiceListResponse, error) {
	s := m.s
	ts, err := s.targets(ctx)
	if err != nil {
		return nil, err
	}
	resp := &machine.ServiceListResponse{}
	for _, t := range ts {
		if t.err {
			resp.Messages = append(resp.Messages, &machine.ServiceList{Metadata: t.md})
			continue
		}
		resp.Messages = append(resp.Messages, &machine.ServiceList{Metadata: t.md, Services: s.servicesOf(t.md.GetHostname())})
	}
	return resp, nil
}

// servicesOf lists a node's services by id: a control-plane node's set (a
// worker's without etcd and trustd) with the node's overrides. The
// endpoint itself ("") is a control-plane node.
func (s *Server) servicesOf(node string) []*machine.ServiceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	byID := map[string]*machine.ServiceInfo{}
	for id, svc := range s.services {
		if s.isWorkerLocked(node) && (id == "etcd" || id == "trustd") {
			continue
		}
		byID[id] = svc
	}
	maps.Copy(byID, s.nodeSvcs[node])
	ids := slices.Sorted(maps.Keys(byID))
	out := make([]*machine.ServiceInfo, 0, len(ids))
	for _, id := range ids {
		out = append(out, cloneService(byID[id]))
	}
	return out
}

// Kubeconfig streams a tar.gz holding one file, "kubeconfig", in
// common.Data chunks, as apid does.
func (m *machineService) Kubeconfig(_ *emptypb.Empty, stream grpc.ServerStreamingServer[common.Data]) error {
	s := m.s
	s.mu.Lock()
	kc := slices.Clone(s.kubeconfig)
	gated, boot, worker := s.opts.Maintenance, s.boot, s.role == RoleWorker
	s.mu.Unlock()
	switch {
	case gated && worker:
		return status.Error(codes.FailedPrecondition, "kubeconfig is only available on control plane nodes")
	case gated && !boot:
		return status.Error(codes.FailedPrecondition, "kubeconfig is not available: the cluster has not been bootstrapped (etcd is not running)")
	}
	archive, err := tarGz("kubeconfig", kc)
	if err != nil {
		return status.Errorf(codes.Internal, "packing kubeconfig: %s", err)
	}
	for chunk := range slices.Chunk(archive, KubeconfigChunk) {
		if err := stream.Send(&common.Data{Bytes: chunk}); err != nil {
			return err
		}
	}
	return nil
}

func tarGz(name string, content []byte) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(content)), ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// defaultServiceIDs are the services a Talos control-plane node runs.
var defaultServiceIDs = []string{"apid", "containerd", "cri", "etcd", "kubelet", "machined", "trustd", "udevd"}

func defaultServices(now time.Time) map[string]*machine.ServiceInfo {
	out := map[string]*machine.ServiceInfo{}
	for _, id := range defaultServiceIDs {
		out[id] = newService(id, "Running", true, now, "Health check successful")
	}
	// etcd waits for Bootstrap on a fresh control plane.
	out["etcd"] = newService("etcd", "Preparing", false, now, "Running pre state")
	out["etcd"].Health.Unknown = true
	return out
}

func newService(id, state string, healthy bool, now time.Time, msg string) *machine.ServiceInfo {
	return &machine.ServiceInfo{
		Id:    id,
		State: state,
		Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{
			{Msg: msg, State: state, Ts: timestamppb.New(now)},
		}},
		Health: &machine.ServiceHealth{Healthy: healthy, LastMessage: msg, LastChange: timestamppb.New(now)},
	}
}

func cloneService(in *machine.ServiceInfo) *machine.ServiceInfo {
	out := &machine.ServiceInfo{Id: in.Id, State: in.State, Events: &machine.ServiceEvents{}}
	for _, e := range in.GetEvents().GetEvents() {
		out.Events.Events = append(out.Events.Events, &machine.ServiceEvent{Msg: e.Msg, State: e.State, Ts: e.Ts})
	}
	if h := in.GetHealth(); h != nil {
		out.Health = &machine.ServiceHealth{Unknown: h.Unknown, Healthy: h.Healthy, LastMessage: h.LastMessage, LastChange: h.LastChange}
	}
	return out
}

func randomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1
}

// hostnameFor derives a Talos-like hostname from a node address.
func hostnameFor(node string) string {
	r := strings.NewReplacer(".", "-", ":", "-")
	return "talos-" + r.Replace(node)
}

// defaultKubeconfig is an admin kubeconfig for Options.Endpoint: the
// bundle's Kubernetes CA and a client certificate (system:masters) from it.
func (s *Server) defaultKubeconfig() ([]byte, error) {
	k8sCA, err := x509.NewCertificateAuthorityFromCertificateAndKey(s.bundle.Certs.K8s)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: loading Kubernetes CA: %w", err)
	}
	kp, err := x509.NewKeyPair(k8sCA,
		x509.CommonName("admin"),
		x509.Organization("system:masters"),
		x509.NotAfter(time.Now().Add(certTTL)),
	)
	if err != nil {
		return nil, fmt.Errorf("talosstandin: issuing kubeconfig client certificate: %w", err)
	}
	name := s.opts.ClusterName
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: admin@%[1]s
  user:
    client-certificate-data: %[4]s
    client-key-data: %[5]s
contexts:
- name: admin@%[1]s
  context:
    cluster: %[1]s
    namespace: default
    user: admin@%[1]s
current-context: admin@%[1]s
`, name, s.opts.Endpoint, b64(s.bundle.Certs.K8s.Crt), b64(kp.CrtPEM), b64(kp.KeyPEM)), nil
}

// ConfigPath is where a node keeps its applied machine config; Read
// serves it (os:admin), as `talosctl read /system/state/config.yaml` does.
const ConfigPath = "/system/state/config.yaml"

// Read streams the one file the stand-in has: the applied machine config.
func (m *machineService) Read(req *machine.ReadRequest, stream grpc.ServerStreamingServer[common.Data]) error {
	s := m.s
	if req.GetPath() != ConfigPath {
		return status.Errorf(codes.NotFound, "open %s: no such file or directory", req.GetPath())
	}
	s.mu.Lock()
	cfg := slices.Clone(s.lastConfig)
	s.mu.Unlock()
	if cfg == nil {
		return status.Errorf(codes.NotFound, "open %s: no such file or directory", ConfigPath)
	}
	for chunk := range slices.Chunk(cfg, KubeconfigChunk) {
		if err := stream.Send(&common.Data{Bytes: chunk}); err != nil {
			return err
		}
	}
	return nil
}
