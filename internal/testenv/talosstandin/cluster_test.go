package talosstandin

import (
	"bytes"
	"crypto/tls"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"google.golang.org/grpc/codes"
)

// clusterConfigs generates one cluster's controlplane and worker configs
// and its talosconfig, as the controller does, from one secrets bundle.
func clusterConfigs(t *testing.T, endpoints []string) (cp, worker, talosconfig []byte) {
	t.Helper()
	in, err := generate.NewInput("bare", "https://127.0.0.1:6443", constants.DefaultKubernetesVersion,
		generate.WithEndpointList(endpoints), generate.WithInstallDisk(DefaultInstallDisk))
	if err != nil {
		t.Fatal(err)
	}
	enc := func(typ configmachine.Type) []byte {
		c, err := in.Config(typ)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.EncodeBytes()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tc, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	tcb, err := tc.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return enc(configmachine.TypeControlPlane), enc(configmachine.TypeWorker), tcb
}

func insecureClient(t *testing.T, endpoint string) *client.Client {
	t.Helper()
	c, err := client.New(callCtx(t), client.WithEndpoints(endpoint), client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientAt is the talosconfig's client aimed at one endpoint.
func clientAt(t *testing.T, talosconfig []byte, endpoint string) *client.Client {
	t.Helper()
	c := newClient(t, talosconfig)
	_ = c.Close()
	cfg := c.GetConfigContext()
	cfg.Endpoints = []string{endpoint}
	cfg.Nodes = nil
	c2, err := client.New(callCtx(t), client.WithConfigContext(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c2.Close() })
	return c2
}

type stateLog struct {
	mu  sync.Mutex
	got []string
}

func (l *stateLog) add(node, role, state string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, node+" "+role+" "+state)
}

func (l *stateLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.got
	l.got = nil
	return out
}

// TestClusterLifecycle: three nodes of a bare cluster, each its own apid,
// go maintenance -> configured -> bootstrapped; the config version only
// moves on an apply; bootstrap happens once for all; the kubeconfig is
// handed out only after it and only by a control-plane node.
func TestClusterLifecycle(t *testing.T) {
	cl := NewCluster()
	var log stateLog
	worldKubeconfig := []byte("apiVersion: v1\nkind: Config\n# the world's\n")
	start := func(name string) *Server {
		return startServer(t, Options{Name: name, Maintenance: true, Cluster: cl, Kubeconfig: worldKubeconfig, OnState: log.add})
	}
	cp1, cp2, w1 := start("cp1"), start("cp2"), start("w1")
	cpCfg, wCfg, tc := clusterConfigs(t, []string{cp1.Endpoint()})

	for _, s := range []*Server{cp1, cp2, w1} {
		if s.State() != StateMaintenance {
			t.Fatalf("%s starts %s", s.Name(), s.State())
		}
	}
	// The worker first: it waits for a control-plane node's CA key (trustd).
	apply := func(s *Server, data []byte) {
		t.Helper()
		if _, err := insecureClient(t, s.Endpoint()).ApplyConfiguration(callCtx(t), &machine.ApplyConfigurationRequest{Data: data}); err != nil {
			t.Fatalf("apply to %s in maintenance: %v", s.Name(), err)
		}
	}
	apply(w1, wCfg)
	apply(cp1, cpCfg)
	if got, want := log.take(), []string{"w1 worker configured", "cp1 controlplane configured"}; !slices.Equal(got, want) {
		t.Fatalf("transitions %q, want %q", got, want)
	}
	c1, cw := clientAt(t, tc, cp1.Endpoint()), clientAt(t, tc, w1.Endpoint())

	// The applied config reads back; its version is 1.
	rc, err := c1.Read(callCtx(t), ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(back, cpCfg) {
		t.Fatalf("read back %d bytes (%v), want the applied %d", len(back), err, len(cpCfg))
	}
	if cp1.AppliedConfigs() != 1 || w1.AppliedConfigs() != 1 {
		t.Fatalf("config versions cp1=%d w1=%d", cp1.AppliedConfigs(), w1.AppliedConfigs())
	}
	_, err = c1.Kubeconfig(callCtx(t))
	wantCode(t, err, codes.FailedPrecondition, "not been bootstrapped")
	err = cw.Bootstrap(callCtx(t), &machine.BootstrapRequest{})
	wantCode(t, err, codes.FailedPrecondition, "worker")

	if err := c1.Bootstrap(callCtx(t), &machine.BootstrapRequest{}); err != nil {
		t.Fatalf("bootstrap cp1: %v", err)
	}
	if got, want := log.take(), []string{"cp1 controlplane bootstrapped", "w1 worker bootstrapped"}; !slices.Equal(got, want) {
		t.Fatalf("transitions %q, want %q", got, want)
	}
	err = c1.Bootstrap(callCtx(t), &machine.BootstrapRequest{})
	wantCode(t, err, codes.FailedPrecondition, "etcd data directory is not empty")
	if cp2.State() != StateMaintenance {
		t.Fatalf("cp2 is %s before its config", cp2.State())
	}

	// A control-plane node configured later joins etcd.
	apply(cp2, cpCfg)
	if got, want := log.take(), []string{"cp2 controlplane configured", "cp2 controlplane bootstrapped"}; !slices.Equal(got, want) {
		t.Fatalf("transitions %q, want %q", got, want)
	}
	c2 := clientAt(t, tc, cp2.Endpoint())
	err = c2.Bootstrap(callCtx(t), &machine.BootstrapRequest{})
	wantCode(t, err, codes.FailedPrecondition, "etcd data directory is not empty")
	resp, err := c2.EtcdMemberList(callCtx(t), &machine.EtcdMemberListRequest{})
	if err != nil || len(resp.Messages[0].Members) != 2 {
		t.Fatalf("etcd members from cp2: %v %v, want cp1 and cp2", resp, err)
	}
	_, err = cw.EtcdMemberList(callCtx(t), &machine.EtcdMemberListRequest{})
	wantCode(t, err, codes.FailedPrecondition, "worker")

	kc, err := c1.Kubeconfig(callCtx(t))
	if err != nil || !bytes.Equal(kc, worldKubeconfig) {
		t.Fatalf("kubeconfig after bootstrap: %q %v, want the world's", kc, err)
	}
	_, err = cw.Kubeconfig(callCtx(t))
	wantCode(t, err, codes.FailedPrecondition, "control plane")

	// Services by role: the worker has no etcd; the control plane's runs.
	svcs := func(c *client.Client) map[string]string {
		r, err := c.ServiceList(callCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, s := range r.Messages[0].Services {
			m[s.Id] = s.State
		}
		return m
	}
	if m := svcs(cw); m["etcd"] != "" || m["kubelet"] != "Running" {
		t.Errorf("worker services %v", m)
	}
	if m := svcs(c2); m["etcd"] != "Running" {
		t.Errorf("cp2 services %v", m)
	}

	// The fault knob: every call refused, retryable for the client.
	cp1.SetRefusing(true)
	_, err = c1.Version(callCtx(t))
	wantCode(t, err, codes.Unavailable, "connection refused")
	cp1.SetRefusing(false)
	if _, err := c1.Version(callCtx(t)); err != nil {
		t.Fatalf("Version after the knob is off: %v", err)
	}
	if cp1.AppliedConfigs() != 1 || cp2.AppliedConfigs() != 1 || w1.AppliedConfigs() != 1 {
		t.Fatal("a config version moved without an apply")
	}
}

// TestInvalidConfigRefusedInMaintenance: a config a patch made invalid is refused with
// Talos's validation error, and the node stays in maintenance.
func TestInvalidConfigRefusedInMaintenance(t *testing.T) {
	s := startServer(t, Options{Maintenance: true, Cluster: NewCluster()})
	cp, _, _ := clusterConfigs(t, []string{s.Endpoint()})
	bad := bytes.Replace(cp, []byte("disk: /dev/sda"), []byte("disk: \"\""), 1)
	if bytes.Equal(bad, cp) {
		t.Fatal("the install disk line was not found in the config")
	}
	_, err := insecureClient(t, s.Endpoint()).ApplyConfiguration(callCtx(t), &machine.ApplyConfigurationRequest{Data: bad})
	wantCode(t, err, codes.InvalidArgument, "install")
	if s.State() != StateMaintenance || s.AppliedConfigs() != 0 {
		t.Fatalf("after a refused config: %s, version %d", s.State(), s.AppliedConfigs())
	}
}
