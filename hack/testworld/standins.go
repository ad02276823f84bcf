package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"

	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
)

// The stand-ins for what cannot run on these machines (see each package's
// doc). Each one adds its addresses to the env file and its port to what
// `testworld exec` forwards.

type rdb struct{ s *rdbstandin.Server }

func (r rdb) name() string { return "rethinkdb stand-in" }
func (r rdb) close()       { _ = r.s.Close() }

// GuildNet's database naming: org_<org>__<db> with meta tables.
var rdbDatabases = map[string][]string{
	"org_demo__main": {"_schemas", "_audit", "_info"},
}

func (w *world) startStandins(ctx context.Context) error {
	s, err := rdbstandin.Start(rdbstandin.Options{Databases: rdbDatabases})
	if err != nil {
		return fmt.Errorf("start rethinkdb stand-in: %w", err)
	}
	w.standins = append(w.standins, rdb{s})
	w.add("RETHINKDB_ADDR", s.Addr(), "RethinkDB STAND-IN (wire protocol, SCRAM-SHA-256), not a real RethinkDB")
	w.add("RETHINKDB_USER", rdbstandin.DefaultUser, "")
	w.add("RETHINKDB_PASS", "", "")
	w.addPort(s.Addr())
	log("rethinkdb stand-in at %s", s.Addr())

	if err := w.startTalos(ctx); err != nil {
		return err
	}
	return w.startHostApp(ctx)
}

type talos struct{ s *talosstandin.Server }

func (t talos) name() string { return "talos apid stand-in" }
func (t talos) close()       { t.s.Close() }

// startTalos runs the Talos apid stand-in as the control-plane node of a
// cluster that is already up: its Kubernetes endpoint and Kubeconfig call
// are the world's kube-apiserver, and it is bootstrapped (through the real
// talos client) so etcd is running and has a member.
func (w *world) startTalos(ctx context.Context) error {
	s, err := talosstandin.Start(talosstandin.Options{ClusterName: "guildnet", Endpoint: w.kube.URL()})
	if err != nil {
		return fmt.Errorf("start talos stand-in: %w", err)
	}
	w.standins = append(w.standins, talos{s})
	kc, err := os.ReadFile(w.kube.KubeconfigPath())
	if err != nil {
		return fmt.Errorf("talos stand-in: read kubeconfig: %w", err)
	}
	s.SetKubeconfig(kc)
	path := filepath.Join(w.dir, "talosconfig")
	if err := s.WriteTalosconfig(path); err != nil {
		return err
	}
	cfg, err := clientconfig.Open(path)
	if err != nil {
		return fmt.Errorf("talos stand-in: read talosconfig: %w", err)
	}
	c, err := client.New(ctx, client.WithConfig(cfg))
	if err != nil {
		return fmt.Errorf("talos stand-in: client: %w", err)
	}
	defer c.Close()
	if err := c.Bootstrap(ctx, &machine.BootstrapRequest{}); err != nil {
		return fmt.Errorf("talos stand-in: bootstrap: %w", err)
	}
	w.add("TALOS_ENDPOINT", s.Endpoint(), "Talos apid STAND-IN (mTLS gRPC MachineService), bootstrapped; not a Talos node")
	w.add("TALOSCONFIG", path, "")
	w.addPort(s.Endpoint())
	log("talos stand-in at %s (talosconfig %s)", s.Endpoint(), path)
	return nil
}

type hostApp struct{ s *hostappstandin.Server }

func (h hostApp) name() string { return "host-app stand-in" }
func (h hostApp) close()       { h.s.Close() }

// startHostApp runs the GuildNet host-app stand-in (TLS, self-signed)
// reporting healthy clusters and the world's Headscale, its proxy
// answering from the seeded API server's pods and Services as GuildNet's
// does.
func (w *world) startHostApp(context.Context) error {
	s, err := hostappstandin.Start(hostappstandin.Options{
		// The clusters make demo's agents join (alpha, beta), besides the
		// world's own name: an agent judges /api/health for its cluster.
		Clusters: []hostappstandin.Cluster{
			{ID: "guildnet", Name: "guildnet", Status: hostappstandin.StatusOK},
			{ID: "alpha", Name: "alpha", Status: hostappstandin.StatusOK},
			{ID: "beta", Name: "beta", Status: hostappstandin.StatusOK},
		},
		Kube: w.seeded.Clientset,
	})
	if err != nil {
		return fmt.Errorf("start host-app stand-in: %w", err)
	}
	w.standins = append(w.standins, hostApp{s})
	ca := filepath.Join(w.dir, "hostapp-ca.pem")
	if err := s.WriteCA(ca); err != nil {
		return err
	}
	w.add("HOSTAPP_URL", s.URL(), "GuildNet host-app STAND-IN (TLS, /healthz, /api/health, /proxy/server/{id}/); not the host app")
	w.add("METAGN_HOSTAPP_CA", ca, "the host app's self-signed certificate, to trust")
	w.addPort(s.URL())
	log("host-app stand-in at %s", s.URL())
	return nil
}
