package talosstandin

import (
	"bytes"
	"context"
	"crypto/tls"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc/codes"
)

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newClient builds the real talos client from talosconfig bytes.
func newClient(t *testing.T, talosconfig []byte) *client.Client {
	t.Helper()
	cfg, err := clientconfig.FromBytes(talosconfig)
	if err != nil {
		t.Fatalf("parsing talosconfig: %v", err)
	}
	c, err := client.New(callCtx(t), client.WithConfig(cfg))
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func adminClient(t *testing.T, s *Server) *client.Client {
	t.Helper()
	tc, err := s.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, tc)
}

func wantCode(t *testing.T, err error, code codes.Code, text string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", code)
	}
	if got := client.StatusCode(err); got != code {
		t.Fatalf("error %v has code %s, want %s", err, got, code)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("error %q does not contain %q", err, text)
	}
}

func TestVersion(t *testing.T) {
	s := startServer(t, Options{Nodes: []string{"10.0.0.10", "10.0.0.11"}})
	c := adminClient(t, s)

	tests := []struct {
		name      string
		ctx       func(context.Context) context.Context
		wantHosts []string // Metadata.Hostname per message ("" = none)
		wantErr   string
	}{
		{"endpoint itself", func(ctx context.Context) context.Context { return ctx }, []string{""}, ""},
		{"one node", func(ctx context.Context) context.Context { return client.WithNode(ctx, "10.0.0.11") }, []string{"10.0.0.11"}, ""},
		{"all nodes", func(ctx context.Context) context.Context { return client.WithNodes(ctx, "10.0.0.10", "10.0.0.11") }, []string{"10.0.0.10", "10.0.0.11"}, ""},
		{"unknown node", func(ctx context.Context) context.Context { return client.WithNode(ctx, "10.0.0.99") }, nil, "not reachable"},
		{"one unknown among nodes", func(ctx context.Context) context.Context { return client.WithNodes(ctx, "10.0.0.10", "10.0.0.99") }, []string{"10.0.0.10"}, "10.0.0.99"}, // the client filters out the failed node's message
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Version(tt.ctx(callCtx(t)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Version: %v", err)
			}
			if resp == nil {
				return
			}
			var hosts []string
			for _, m := range resp.Messages {
				hosts = append(hosts, m.GetMetadata().GetHostname())
				if m.GetMetadata().GetError() != "" {
					continue
				}
				if m.GetVersion().GetTag() != TalosVersion || m.GetPlatform().GetMode() != "metal" {
					t.Errorf("message %v: want tag %s, platform metal", m, TalosVersion)
				}
			}
			if !slices.Equal(hosts, tt.wantHosts) {
				t.Errorf("hostnames %q, want %q", hosts, tt.wantHosts)
			}
		})
	}
}

func serviceStates(t *testing.T, c *client.Client) map[string]string {
	t.Helper()
	resp, err := c.ServiceList(callCtx(t))
	if err != nil {
		t.Fatalf("ServiceList: %v", err)
	}
	out := map[string]string{}
	for _, svc := range resp.Messages[0].Services {
		h := "unhealthy"
		if svc.GetHealth().GetHealthy() {
			h = "healthy"
		}
		out[svc.Id] = svc.State + "/" + h
	}
	return out
}

func TestServiceList(t *testing.T) {
	s := startServer(t, Options{})
	c := adminClient(t, s)

	tests := []struct {
		name string
		set  func()
		want map[string]string
	}{
		{"defaults", func() {}, map[string]string{
			"apid": "Running/healthy", "containerd": "Running/healthy", "cri": "Running/healthy",
			"etcd": "Preparing/unhealthy", "kubelet": "Running/healthy", "machined": "Running/healthy",
			"trustd": "Running/healthy", "udevd": "Running/healthy",
		}},
		{"kubelet fails", func() { s.SetServiceState("kubelet", "Failed", false) }, map[string]string{"kubelet": "Failed/unhealthy"}},
		{"new service", func() { s.SetServiceState("ext-tailscale", "Running", true) }, map[string]string{"ext-tailscale": "Running/healthy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.set()
			got := serviceStates(t, c)
			for id, want := range tt.want {
				if got[id] != want {
					t.Errorf("service %s = %q, want %q (all: %v)", id, got[id], want, got)
				}
			}
		})
	}
}

// TestNodesByRole: a worker answers without etcd and trustd, its etcd
// member list fails, and one node's service can be Waiting, Starting or
// Failed while the others run.
func TestNodesByRole(t *testing.T) {
	s := startServer(t, Options{Nodes: []string{"10.0.0.10"}, Workers: []string{"10.0.0.20"}})
	c := adminClient(t, s)
	if err := c.Bootstrap(client.WithNode(callCtx(t), "10.0.0.10"), &machine.BootstrapRequest{}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	states := func(node string) map[string]string {
		t.Helper()
		resp, err := c.ServiceList(client.WithNode(callCtx(t), node))
		if err != nil {
			t.Fatalf("ServiceList on %s: %v", node, err)
		}
		out := map[string]string{}
		for _, svc := range resp.Messages[0].Services {
			out[svc.Id] = svc.State
		}
		return out
	}
	cp, w := states("10.0.0.10"), states("10.0.0.20")
	if cp["etcd"] != "Running" || cp["trustd"] != "Running" {
		t.Errorf("control plane services %v, want etcd and trustd Running", cp)
	}
	if _, ok := w["etcd"]; ok || w["trustd"] != "" || w["kubelet"] != "Running" {
		t.Errorf("worker services %v, want no etcd or trustd and kubelet Running", w)
	}
	_, err := c.EtcdMemberList(client.WithNode(callCtx(t), "10.0.0.20"), &machine.EtcdMemberListRequest{})
	wantCode(t, err, codes.FailedPrecondition, "etcd is not running on 10.0.0.20: it is a worker node")
	resp, err := c.EtcdMemberList(callCtx(t), &machine.EtcdMemberListRequest{})
	if err != nil || len(resp.Messages) != 1 || len(resp.Messages[0].Members) != 1 {
		t.Fatalf("etcd members from the endpoint: %v %v, want the one control-plane member", resp, err)
	}
	for _, state := range []string{"Waiting", "Starting", "Failed"} {
		s.SetNodeServiceState("10.0.0.20", "kubelet", state, false)
		if got := states("10.0.0.20")["kubelet"]; got != state {
			t.Errorf("worker kubelet = %q, want %q", got, state)
		}
		if got := states("10.0.0.10")["kubelet"]; got != "Running" {
			t.Errorf("control-plane kubelet = %q while the worker's is %s", got, state)
		}
	}
	s.SetNodeServiceState("10.0.0.20", "kubelet", "", false)
	if got := states("10.0.0.20")["kubelet"]; got != "Running" {
		t.Errorf("worker kubelet after the override is removed = %q", got)
	}
}

func TestBootstrapAndEtcd(t *testing.T) {
	nodes := []string{"10.0.0.10", "10.0.0.11"}
	s := startServer(t, Options{Nodes: nodes})
	c := adminClient(t, s)

	_, err := c.EtcdMemberList(callCtx(t), &machine.EtcdMemberListRequest{})
	wantCode(t, err, codes.Unavailable, "not been bootstrapped")

	steps := []struct {
		name     string
		wantCode codes.Code
		wantText string
	}{
		{"first bootstrap", codes.OK, ""},
		{"second bootstrap", codes.FailedPrecondition, "etcd data directory is not empty"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			err := c.Bootstrap(callCtx(t), &machine.BootstrapRequest{})
			if st.wantCode == codes.OK {
				if err != nil {
					t.Fatalf("Bootstrap: %v", err)
				}
				return
			}
			wantCode(t, err, st.wantCode, st.wantText)
		})
	}
	if !s.Bootstrapped() {
		t.Fatal("Bootstrapped() = false after Bootstrap")
	}
	if got := serviceStates(t, c)["etcd"]; got != "Running/healthy" {
		t.Errorf("etcd after bootstrap = %s", got)
	}
	resp, err := c.EtcdMemberList(callCtx(t), &machine.EtcdMemberListRequest{})
	if err != nil {
		t.Fatalf("EtcdMemberList: %v", err)
	}
	var got []string
	for _, m := range resp.Messages[0].Members {
		got = append(got, m.Hostname+" "+strings.Join(m.ClientUrls, ","))
		if m.Id == 0 {
			t.Errorf("member %s has id 0", m.Hostname)
		}
	}
	want := []string{"talos-10-0-0-10 https://10.0.0.10:2379", "talos-10-0-0-11 https://10.0.0.11:2379"}
	if !slices.Equal(got, want) {
		t.Errorf("members %q, want %q", got, want)
	}
}

func TestApplyConfiguration(t *testing.T) {
	s := startServer(t, Options{ClusterName: "guildnet", Endpoint: "https://127.0.0.1:6443"})
	c := adminClient(t, s)
	cp, err := s.MachineConfig(configmachine.TypeControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	worker, err := s.MachineConfig(configmachine.TypeWorker)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		req         *machine.ApplyConfigurationRequest
		wantCode    codes.Code
		wantText    string
		wantMode    machine.ApplyConfigurationRequest_Mode
		wantApplied int
	}{
		{"control plane, auto", &machine.ApplyConfigurationRequest{Data: cp, Mode: machine.ApplyConfigurationRequest_AUTO}, codes.OK, "", machine.ApplyConfigurationRequest_NO_REBOOT, 1},
		{"dry run is not counted", &machine.ApplyConfigurationRequest{Data: cp, Mode: machine.ApplyConfigurationRequest_AUTO, DryRun: true}, codes.OK, "", machine.ApplyConfigurationRequest_NO_REBOOT, 1},
		{"worker, reboot", &machine.ApplyConfigurationRequest{Data: worker}, codes.OK, "", machine.ApplyConfigurationRequest_REBOOT, 2},
		{"not yaml", &machine.ApplyConfigurationRequest{Data: []byte("\x00\x01 not a config")}, codes.InvalidArgument, "", 0, 2},
		{"invalid config", &machine.ApplyConfigurationRequest{Data: []byte("version: v1alpha1\nmachine:\n  type: controlplane\n")}, codes.InvalidArgument, "", 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.ApplyConfiguration(callCtx(t), tt.req)
			if tt.wantCode != codes.OK {
				wantCode(t, err, tt.wantCode, tt.wantText)
			} else {
				if err != nil {
					t.Fatalf("ApplyConfiguration: %v", err)
				}
				if got := resp.Messages[0].Mode; got != tt.wantMode {
					t.Errorf("mode %s, want %s", got, tt.wantMode)
				}
			}
			if got := s.AppliedConfigs(); got != tt.wantApplied {
				t.Errorf("AppliedConfigs() = %d, want %d", got, tt.wantApplied)
			}
		})
	}
	if !bytes.Equal(s.LastAppliedConfig(), worker) {
		t.Error("LastAppliedConfig is not the last accepted config")
	}
}

// The controller generates its own secrets and talosconfig; after it applies
// its config the node speaks with that identity, as a real node does.
func TestApplyConfigurationTakesTheConfigsIdentity(t *testing.T) {
	s := startServer(t, Options{})
	oldTalosconfig, err := s.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, oldTalosconfig)

	in, err := generate.NewInput("controller-made", "https://127.0.0.1:6443", constants.DefaultKubernetesVersion,
		generate.WithEndpointList([]string{s.Endpoint()}),
		generate.WithInstallDisk("/dev/sda"), // metal validation requires one, as on a real node
	)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := in.Config(configmachine.TypeControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	data, err := cfg.EncodeBytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ApplyConfiguration(callCtx(t), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_AUTO}); err != nil {
		t.Fatalf("ApplyConfiguration: %v", err)
	}

	ctrlCfg, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	ctrlBytes, err := ctrlCfg.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(t, ctrlBytes).Version(callCtx(t)); err != nil {
		t.Fatalf("Version with the controller's own talosconfig after apply: %v", err)
	}
	// The old identity is gone, for the open connection and for new ones.
	if _, err := c.Version(callCtx(t)); err == nil {
		t.Error("Version on a connection authenticated by the old CA succeeded")
	}
	if _, err := newClient(t, oldTalosconfig).Version(callCtx(t)); err == nil {
		t.Error("Version with the old talosconfig succeeded")
	}
	// Talosconfig now issues from the new CA.
	if _, err := adminClient(t, s).Version(callCtx(t)); err != nil {
		t.Fatalf("Version with Talosconfig() after apply: %v", err)
	}
}

func TestKubeconfig(t *testing.T) {
	s := startServer(t, Options{Endpoint: "https://10.0.0.10:6443"})
	c := adminClient(t, s)

	big := bytes.Repeat([]byte("# padding to span several stream chunks\n"), 3*KubeconfigChunk/40)
	tests := []struct {
		name      string
		set       []byte // nil: the default kubeconfig
		wantExact bool
		wantIn    string
	}{
		{"default points at the endpoint", nil, false, "server: https://10.0.0.10:6443"},
		{"set by the test", []byte("apiVersion: v1\nkind: Config\n"), true, ""},
		{"larger than one chunk", big, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.set != nil {
				s.SetKubeconfig(tt.set)
			}
			got, err := c.Kubeconfig(callCtx(t))
			if err != nil {
				t.Fatalf("Kubeconfig: %v", err)
			}
			if tt.wantExact && !bytes.Equal(got, tt.set) {
				t.Fatalf("kubeconfig: got %d bytes, want the %d set", len(got), len(tt.set))
			}
			if !bytes.Contains(got, []byte(tt.wantIn)) {
				t.Fatalf("kubeconfig does not contain %q:\n%s", tt.wantIn, got)
			}
		})
	}
}

func TestTLSRefusals(t *testing.T) {
	s := startServer(t, Options{})
	other := startServer(t, Options{}) // a different bundle, so a different OS CA
	otherTalosconfig, err := other.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := s.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientconfig.FromBytes(tc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.Context]
	caOnly := *ctx
	caOnly.Crt, caOnly.Key = "", ""

	tests := []struct {
		name string
		opts []client.OptionFunc
	}{
		{"no client certificate", []client.OptionFunc{client.WithConfigContext(&caOnly)}},
		{"insecure, no client certificate", []client.OptionFunc{client.WithEndpoints(s.Endpoint()), client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true})}},
		{"certificate from another CA", func() []client.OptionFunc {
			oc, err := clientconfig.FromBytes(otherTalosconfig)
			if err != nil {
				t.Fatal(err)
			}
			octx := *oc.Contexts[oc.Context]
			octx.Endpoints = []string{s.Endpoint()}
			octx.CA = ctx.CA // trust this server, present the other CA's cert
			return []client.OptionFunc{client.WithConfigContext(&octx)}
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := client.New(callCtx(t), tt.opts...)
			if err != nil {
				t.Fatalf("client.New: %v", err)
			}
			defer c.Close()
			if _, err := c.Version(callCtx(t)); err == nil {
				t.Fatal("Version succeeded without a trusted client certificate")
			}
		})
	}
	// The properly configured client still works.
	if _, err := adminClient(t, s).Version(callCtx(t)); err != nil {
		t.Fatalf("Version with the admin talosconfig: %v", err)
	}
}

func TestRoles(t *testing.T) {
	s := startServer(t, Options{})
	readerCfg, err := s.TalosconfigWithRoles(role.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reader := newClient(t, readerCfg)

	tests := []struct {
		name    string
		call    func(ctx context.Context) error
		allowed bool
	}{
		{"Version", func(ctx context.Context) error { _, err := reader.Version(ctx); return err }, true},
		{"ServiceList", func(ctx context.Context) error { _, err := reader.ServiceList(ctx); return err }, true},
		{"Bootstrap", func(ctx context.Context) error { return reader.Bootstrap(ctx, &machine.BootstrapRequest{}) }, false},
		{"Kubeconfig", func(ctx context.Context) error { _, err := reader.Kubeconfig(ctx); return err }, false},
		{"ApplyConfiguration", func(ctx context.Context) error {
			_, err := reader.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("x")})
			return err
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(callCtx(t))
			if tt.allowed {
				if err != nil {
					t.Fatalf("os:reader %s: %v", tt.name, err)
				}
				return
			}
			wantCode(t, err, codes.PermissionDenied, "not authorized")
		})
	}
	if s.Bootstrapped() {
		t.Error("a reader bootstrapped the cluster")
	}
}

func TestMaintenanceMode(t *testing.T) {
	s := startServer(t, Options{Maintenance: true})
	insecure, err := client.New(callCtx(t), client.WithEndpoints(s.Endpoint()), client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = insecure.Close() })

	if _, err := insecure.Version(callCtx(t)); err != nil {
		t.Fatalf("Version in maintenance mode: %v", err)
	}
	_, err = insecure.ServiceList(callCtx(t))
	wantCode(t, err, codes.Unimplemented, "maintenance mode")

	cp, err := s.MachineConfig(configmachine.TypeControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := insecure.ApplyConfiguration(callCtx(t), &machine.ApplyConfigurationRequest{Data: cp, Mode: machine.ApplyConfigurationRequest_AUTO})
	if err != nil {
		t.Fatalf("ApplyConfiguration in maintenance mode: %v", err)
	}
	if resp.Messages[0].Mode != machine.ApplyConfigurationRequest_REBOOT {
		t.Errorf("mode %s, want REBOOT", resp.Messages[0].Mode)
	}
	if s.InMaintenance() || s.AppliedConfigs() != 1 {
		t.Fatalf("after apply: InMaintenance=%v AppliedConfigs=%d", s.InMaintenance(), s.AppliedConfigs())
	}
	// Out of maintenance: the insecure client is refused, the talosconfig works.
	if _, err := insecure.Version(callCtx(t)); err == nil {
		t.Error("insecure Version succeeded after leaving maintenance mode")
	}
	if _, err := adminClient(t, s).ServiceList(callCtx(t)); err != nil {
		t.Fatalf("ServiceList with talosconfig after apply: %v", err)
	}
}

func TestWriteTalosconfig(t *testing.T) {
	s := startServer(t, Options{ClusterName: "gn", Nodes: []string{"10.0.0.10"}})
	path := filepath.Join(t.TempDir(), "talosconfig")
	if err := s.WriteTalosconfig(path); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientconfig.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts["gn"]
	if cfg.Context != "gn" || ctx == nil || !slices.Equal(ctx.Endpoints, []string{s.Endpoint()}) || !slices.Equal(ctx.Nodes, []string{"10.0.0.10"}) {
		t.Fatalf("talosconfig context %q: %+v", cfg.Context, ctx)
	}
	c, err := client.New(callCtx(t), client.WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Version(client.WithNodes(callCtx(t), ctx.Nodes...)); err != nil {
		t.Fatalf("Version from the written talosconfig: %v", err)
	}
}

func TestStartRejectsNonLoopback(t *testing.T) {
	if s, err := Start(Options{Addr: "0.0.0.0:0"}); err == nil {
		s.Close()
		t.Fatal("Start on 0.0.0.0 succeeded")
	}
}
