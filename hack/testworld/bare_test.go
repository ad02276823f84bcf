package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
	"tailscale.com/client/local"

	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/talosstandin"
	"github.com/guildnet/metaguildnet/messages"
)

// TestBareWorld runs `testworld up --bare --clusters 2` for real and checks
// that the world holds nothing of GuildNet and that its fleet.yaml and node
// env files describe it; then it plays Talos setup on one cluster (configs
// applied in maintenance mode, bootstrap) and sees the world register the
// Nodes and CoreDNS, which the live control plane makes Ready/available.
func TestBareWorld(t *testing.T) {
	testenv.Require(t, testenv.NeedKube, testenv.NeedHeadscale, testenv.NeedControlPlane, testenv.NeedTailscaled)
	if err := probeNetNS(); err != nil {
		testenv.Require(t, testenv.NeedNetNS) // skips, or fails with CI=true
	}
	bin := filepath.Join(t.TempDir(), "testworld")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build testworld: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "bare")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("testworld %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	start := time.Now()
	run("up", "--dir", dir, "--bare", "--clusters", "2")
	t.Cleanup(func() { _ = exec.Command(bin, "down", "--dir", dir).Run() })
	t.Logf("bare world with 2 clusters up in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// fleet.yaml: messages.Fleet's field names exactly (strict).
	raw, err := os.ReadFile(filepath.Join(dir, "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f messages.Fleet
	if err := yaml.UnmarshalStrict(raw, &f); err != nil {
		t.Fatalf("fleet.yaml is not a messages.Fleet: %v", err)
	}
	if f.APIVersion != "metaguildnet/v1" || f.Kind != "Fleet" || len(f.Clusters) != 2 || f.Clusters[0].Name != "alpha" || f.Clusters[1].Name != "beta" {
		t.Fatalf("fleet = %s %s %d clusters", f.APIVersion, f.Kind, len(f.Clusters))
	}
	keyRef := string(f.Clusters[0].Network.HeadscaleAPIKeyFrom)
	keyPath, ok := strings.CutPrefix(keyRef, "file:")
	if !ok || keyPath != filepath.Join(dir, "secrets", "headscale-api-key") {
		t.Fatalf("headscaleAPIKeyFrom = %q", keyRef)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("API key file: %v %v", st, err)
	}
	keyB, _ := os.ReadFile(keyPath)
	apiKey := strings.TrimSpace(string(keyB))

	wantNodes := map[string][]string{
		"alpha": {"alpha-cp1/controlplane", "alpha-w1/worker", "alpha-r1/router", "alpha-host/hostapp"},
		"beta":  {"beta-cp1/controlplane", "beta-w1/worker", "beta-r1/router"},
	}
	for _, c := range f.Clusters {
		var got []string
		for _, n := range c.Nodes {
			got = append(got, n.Name+"/"+n.Role)
			if (n.Role == messages.RoleHostApp) != (n.TalosEndpoint == "") {
				t.Errorf("node %s (%s): talosEndpoint %q", n.Name, n.Role, n.TalosEndpoint)
			}
		}
		if !slices.Equal(got, wantNodes[c.Name]) {
			t.Errorf("cluster %s nodes = %v, want %v", c.Name, got, wantNodes[c.Name])
		}
		if c.Network.LoginServer == "" || c.Network.User != "cluster-"+c.Name || len(c.Network.Routes) != 3 ||
			c.Cluster.Provider != "talos" || c.Cluster.Talos.Endpoint == "" || c.Application.RethinkDB.Addr == "" ||
			!slices.Equal(c.Application.RethinkDB.Databases, []string{"org_demo__main"}) {
			t.Errorf("cluster %s spec incomplete: %+v", c.Name, c)
		}
	}
	if f.Clusters[0].Application.HostApp.ConfigPath == "" || f.Clusters[1].Application.HostApp.ConfigPath != "" {
		t.Errorf("hostApp: %+v / %+v", f.Clusters[0].Application.HostApp, f.Clusters[1].Application.HostApp)
	}
	if strings.Contains(string(raw), apiKey) {
		t.Fatal("the Headscale API key is in fleet.yaml")
	}

	// One env file per node with what an agent needs, nothing secret.
	nodeEnv := map[string]map[string]string{}
	for _, c := range f.Clusters {
		for _, n := range c.Nodes {
			p := filepath.Join(dir, "nodes", n.Name, "env")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("node %s: %v", n.Name, err)
			}
			if strings.Contains(string(b), apiKey) {
				t.Fatalf("%s holds the API key", p)
			}
			env := readEnv(t, p)
			nodeEnv[n.Name] = env
			if env["METAGN_NAME"] != n.Name || env["METAGN_CLUSTER"] != c.Name || env["METAGN_ROLE"] != n.Role ||
				env["TS_SOCKET"] == "" || env["RETHINKDB_ADDR"] != c.Application.RethinkDB.Addr || env["TALOS_ENDPOINT"] != n.TalosEndpoint {
				t.Errorf("node %s env = %v", n.Name, env)
			}
			if n.Role == messages.RoleRouter && (env["TS_ROUTES"] != strings.Join(c.Network.Routes, ",") || env["TS_HOSTNAME"] != n.Hostname) {
				t.Errorf("router %s: TS_ROUTES %q TS_HOSTNAME %q, fleet %v %q", n.Name, env["TS_ROUTES"], env["TS_HOSTNAME"], c.Network.Routes, n.Hostname)
			}
			if (n.Role == messages.RoleHostApp) != (env["HOSTAPP_URL"] != "") {
				t.Errorf("node %s HOSTAPP_URL = %q", n.Name, env["HOSTAPP_URL"])
			}
		}
	}
	// The env file works as `set -a; . FILE; set +a` does.
	out, err := exec.Command("sh", "-c", `set -a; . "$1"; set +a; env`, "sh", filepath.Join(dir, "nodes", "alpha-cp1", "env")).Output()
	if err != nil || !strings.Contains(string(out), "METAGN_NAME=alpha-cp1\n") {
		t.Fatalf("sourcing the env file: %v\n%s", err, out)
	}

	// Nothing of GuildNet: no Nodes, no CRDs, no Deployments; RethinkDB
	// without org_ databases.
	kube := map[string]kubernetes.Interface{}
	worldEnv := readEnv(t, filepath.Join(dir, "env"))
	for _, c := range f.Clusters {
		cfg, err := clientcmd.BuildConfigFromFlags("", worldEnv["KUBECONFIG_"+strings.ToUpper(c.Name)])
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		kube[c.Name] = cs
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) != 0 {
			t.Errorf("cluster %s: Nodes before setup: %v %v", c.Name, len(nodes.Items), err)
		}
		deps, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
		if err != nil || len(deps.Items) != 0 {
			t.Errorf("cluster %s: Deployments before setup: %v %v", c.Name, len(deps.Items), err)
		}
		crds, err := cs.Discovery().ServerResourcesForGroupVersion("guildnet.io/v1alpha1")
		if err == nil {
			t.Errorf("cluster %s: guildnet.io/v1alpha1 served before setup: %v", c.Name, crds)
		}
		sess, err := r.Connect(r.ConnectOpts{Address: c.Application.RethinkDB.Addr, Username: "admin", Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var dbs []string
		cur, err := r.DBList().Run(sess)
		if err == nil {
			err = cur.All(&dbs)
		}
		sess.Close()
		if err != nil || !slices.Equal(dbs, []string{"rethinkdb"}) {
			t.Errorf("cluster %s: RethinkDB databases before setup = %v, %v", c.Name, dbs, err)
		}
	}

	// Headscale: no users, and the API key works.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.Clusters[0].Network.LoginServer+"/api/v1/user", nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var users struct{ Users []json.RawMessage }
	_ = json.NewDecoder(resp.Body).Decode(&users)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(users.Users) != 0 {
		t.Fatalf("headscale users with the API key: %d %v", resp.StatusCode, users.Users)
	}

	// tailscaled per node, logged out.
	for name, env := range nodeEnv {
		lc := &local.Client{Socket: env["TS_SOCKET"], UseSocketOnly: true}
		st, err := lc.StatusWithoutPeers(ctx)
		if err != nil || st.BackendState != "NeedsLogin" {
			t.Errorf("node %s tailscaled: %v %v", name, st, err)
		}
	}

	// Talos nodes in maintenance mode: apid answers without a client
	// certificate (only maintenance mode does).
	for _, c := range f.Clusters {
		for _, n := range c.Nodes {
			if n.TalosEndpoint == "" {
				continue
			}
			tc, err := client.New(ctx, client.WithEndpoints(n.TalosEndpoint), client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tc.Version(ctx); err != nil {
				t.Errorf("node %s: Version without a client certificate (maintenance mode): %v", n.Name, err)
			}
			if _, err := tc.ServiceList(ctx); err == nil || !strings.Contains(err.Error(), "maintenance mode") {
				t.Errorf("node %s: ServiceList = %v, want Talos's 'not implemented in maintenance mode'", n.Name, err)
			}
			tc.Close()
		}
	}

	// Setup's Talos part by hand on alpha: configs in maintenance mode,
	// bootstrap on the controlplane; the world registers the Nodes and
	// CoreDNS, and the live control plane makes them Ready / available.
	alpha := f.Clusters[0]
	var cpEndpoint string
	for _, n := range alpha.Nodes {
		if n.Role == messages.RoleControlPlane {
			cpEndpoint = n.TalosEndpoint
		}
	}
	in, err := generate.NewInput("alpha", alpha.Cluster.Talos.Endpoint, constants.DefaultKubernetesVersion,
		generate.WithEndpointList([]string{cpEndpoint}), generate.WithInstallDisk(talosstandin.DefaultInstallDisk))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range alpha.Nodes {
		if n.TalosEndpoint == "" {
			continue
		}
		typ := configmachine.TypeWorker
		if n.Role == messages.RoleControlPlane {
			typ = configmachine.TypeControlPlane
		}
		cfg, err := in.Config(typ)
		if err != nil {
			t.Fatal(err)
		}
		data, err := cfg.EncodeBytes()
		if err != nil {
			t.Fatal(err)
		}
		tc, err := client.New(ctx, client.WithEndpoints(n.TalosEndpoint), client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tc.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: data}); err != nil {
			t.Fatalf("apply config to %s: %v", n.Name, err)
		}
		tc.Close()
	}
	talosconfig, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	tctx := talosconfig.Contexts[talosconfig.Context]
	tctx.Endpoints, tctx.Nodes = []string{cpEndpoint}, nil
	tc, err := client.New(ctx, client.WithConfigContext(tctx))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	bootAt := time.Now()
	if err := tc.Bootstrap(ctx, &machine.BootstrapRequest{}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	cs := kube["alpha"]
	for {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		ready := 0
		if err == nil {
			for _, n := range nodes.Items {
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
		}
		dep, derr := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if ready == 3 && derr == nil && dep.Status.AvailableReplicas == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after bootstrap: %d Nodes Ready, CoreDNS %v %v", ready, dep, derr)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("bootstrap -> 3 Nodes Ready and CoreDNS available in %v", time.Since(bootAt).Round(time.Millisecond))
	// beta is untouched.
	if nodes, err := kube["beta"].CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil || len(nodes.Items) != 0 {
		t.Errorf("beta Nodes after alpha's bootstrap: %v %v", len(nodes.Items), err)
	}
	// The kubeconfig Talos hands out after bootstrap is the world's.
	kc, err := tc.Kubeconfig(ctx)
	if err != nil || !strings.Contains(string(kc), strings.TrimPrefix(alpha.Cluster.Talos.Endpoint, "https://")) {
		t.Fatalf("kubeconfig after bootstrap: %v (%d bytes)", err, len(kc))
	}

	// The database and application steps on the bootstrapped cluster,
	// with what each node's env file gives its agent.
	t.Run("database and application steps", func(t *testing.T) {
		testAppLayersOnBareWorld(t, alpha, nodeEnv, kc)
	})

	run("down", "--dir", dir)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after down: %v", dir, err)
	}
}
