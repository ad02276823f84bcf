package fleet_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/messages"
)

const minimal = `apiVersion: metaguildnet/v1
kind: Fleet
metadata:
  name: t
clusters:
  - name: alpha
    nodes:
      - name: n1
        role: controlplane
      - name: n2
        role: router
    network:
      loginServer: http://127.0.0.1:8080
      headscaleAPIKeyFrom: env:HS_KEY
    cluster:
      provider: kubernetes
      kubeconfigFrom: file:/tmp/kc
`

func TestExamplesParse(t *testing.T) {
	for _, name := range []string{"fleet.yaml", "fleet-2clusters.yaml"} {
		f, err := fleet.Load(filepath.Join("..", "deploy", "examples", name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(f.Clusters) == 0 || fleet.Hash(f) == "" {
			t.Fatalf("%s: parsed to %+v", name, f)
		}
	}
	f, _ := fleet.Load("../deploy/examples/fleet-2clusters.yaml")
	if len(f.Clusters) != 2 || f.Clusters[0].Nodes[0].TalosEndpoint != "10.1.0.10:50000" {
		t.Fatalf("two clusters with talos port defaulted: %+v", f.Clusters[0].Nodes[0])
	}
}

func TestDefaults(t *testing.T) {
	f, err := fleet.Parse("f.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Clusters[0]
	want := map[string]any{
		"user": c.Network.User == "cluster-alpha", "routes": strings.Join(c.Network.Routes, ",") == "10.0.0.0/24,10.96.0.0/12,10.244.0.0/16",
		"accept": *c.Network.AcceptRoutes, "approve": *c.Network.AutoApproveRoutes,
		"pool": c.Cluster.Addons.MetalLB.Pool == "workspaces", "addrs": c.Cluster.Addons.MetalLB.Addresses[0] == "10.0.0.200-10.0.0.250",
		"l2": c.Cluster.Addons.MetalLB.L2Advertisement == "workspaces-l2", "crds": *c.Cluster.Addons.CRDs,
		"rdb":     c.Application.RethinkDB.Namespace == "default" && c.Application.RethinkDB.Service == "rethinkdb" && c.Application.RethinkDB.Port == 28015,
		"op":      c.Application.Operator.Namespace == "guildnet-system" && *c.Application.Operator.Replicas == 1,
		"hostapp": c.Application.HostApp.ListenLocal == "127.0.0.1:8090", "hostname": c.Nodes[0].Hostname == "n1",
	}
	for k, ok := range want {
		if ok != true {
			t.Errorf("default %s not filled: %+v", k, c)
		}
	}
}

func TestHashCanonical(t *testing.T) {
	a, err := fleet.Parse("a.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	// Same spec: keys reordered, a comment, a default written out.
	reordered := strings.Replace(minimal, "kind: Fleet\napiVersion: metaguildnet/v1\n", "", 1)
	reordered = "# comment\nkind: Fleet\n" + strings.Replace(reordered, "kind: Fleet\n", "", 1)
	reordered = strings.Replace(reordered, "      loginServer:", "      user: cluster-alpha\n      loginServer:", 1)
	b, err := fleet.Parse("b.yaml", []byte(reordered))
	if err != nil {
		t.Fatal(err)
	}
	if fleet.Hash(a) != fleet.Hash(b) {
		t.Fatalf("same spec, different hashes")
	}
	c, _ := fleet.Parse("c.yaml", []byte(strings.Replace(minimal, "n2", "n3", 1)))
	if fleet.Hash(a) == fleet.Hash(c) {
		t.Fatalf("different specs, same hash")
	}
	// A spec through JSON (as the CLI sends it) hashes the same and validates.
	raw, _ := json.Marshal(a)
	var back messages.Fleet
	if err := json.Unmarshal(raw, &back); err != nil || fleet.Validate(&back) != nil || fleet.Hash(&back) != fleet.Hash(a) {
		t.Fatalf("JSON round trip: %v %v", err, fleet.Validate(&back))
	}
}

func TestErrorsNameFileLineField(t *testing.T) {
	cases := []struct {
		name, edit, repl, want string
	}{
		{"unknown field", "        role: router\n", "        role: router\n        colour: red\n", "f.yaml:12: clusters[0].nodes[1].colour: unknown field"},
		{"bad role", "role: router", "role: boss", `f.yaml:11: clusters[0].nodes[1].role: "boss" is not one of controlplane, worker, router, hostapp`},
		{"no controlplane", "role: controlplane", "role: worker", "f.yaml:7: clusters[0].nodes: cluster \"alpha\" has no node with role controlplane"},
		{"bad route", "      headscaleAPIKeyFrom: env:HS_KEY\n", "      headscaleAPIKeyFrom: env:HS_KEY\n      routes: [10.0.0.0/33]\n", `f.yaml:15: clusters[0].network.routes[0]: "10.0.0.0/33" is not a CIDR`},
		{"literal secret", "env:HS_KEY", "hskey_abcdef0123456789", "f.yaml:14: clusters[0].network.headscaleAPIKeyFrom: not a secret reference"},
		{"kubernetes needs kubeconfig", "      kubeconfigFrom: file:/tmp/kc\n", "", "f.yaml:15: clusters[0].cluster.kubeconfigFrom: missing"},
		{"talos needs endpoints", "provider: kubernetes", "provider: talos", "f.yaml:8: clusters[0].nodes[0].talosEndpoint: missing"},
		{"bad apiVersion", "metaguildnet/v1", "metaguildnet/v2", `f.yaml:1: apiVersion: want "metaguildnet/v1"`},
		{"bad kind", "kind: Fleet", "kind: Flet", `f.yaml:2: kind: want "Fleet"`},
		{"bad node name", "name: n2", "name: N.2", `f.yaml:10: clusters[0].nodes[1].name:`},
		{"duplicate node", "name: n2", "name: n1", `f.yaml:10: clusters[0].nodes[1].name: node "n1" is also clusters[0].nodes[0]`},
		{"wrong type", "    nodes:\n", "    nodes: 3\n    x:\n", "f.yaml:7: clusters[0].nodes: want a list"},
		{"syntax", "kind: Fleet", "kind: [Fleet", "f.yaml:"},
		{"alias", "role: router", "role: *x", "f.yaml:"},
		{"bad int", "      kubeconfigFrom: file:/tmp/kc\n", "      kubeconfigFrom: file:/tmp/kc\n    application: {rethinkdb: {port: many}}\n", `f.yaml:18: clusters[0].application.rethinkdb.port: want a whole number, got "many"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(minimal, tc.edit, tc.repl, 1)
			_, err := fleet.Parse("f.yaml", []byte(src))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant prefix %q\nspec:\n%s", err, tc.want, src)
			}
			if strings.Contains(err.Error(), "hskey_") {
				t.Fatalf("error repeats a secret: %v", err)
			}
		})
	}
}

func TestLoadBounds(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.yaml")
	os.WriteFile(p, []byte(strings.Repeat("#\n", fleet.MaxFileBytes)), 0o600)
	if _, err := fleet.Load(p); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("oversize file: %v", err)
	}
	if _, err := fleet.Load(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
	if _, err := fleet.Parse("e.yaml", nil); err == nil || !strings.HasPrefix(err.Error(), "e.yaml") {
		t.Fatalf("empty file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	for _, p := range []string{"../deploy/examples/fleet.yaml", "../deploy/examples/fleet-2clusters.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte("clusters: [{nodes: [{labels: {a: [1]}}]}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		spec, err := fleet.Parse("fuzz.yaml", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		if err := fleet.Validate(spec); err != nil {
			t.Fatalf("accepted spec does not validate after defaults: %v", err)
		}
		fleet.Hash(spec)
	})
}

// A hostapp node runs GuildNet's host app, not Talos: provider talos does
// not ask it for an apid address (the bare test world's alpha-host).
func TestTalosHostAppNodeNeedsNoEndpoint(t *testing.T) {
	spec := strings.NewReplacer("provider: kubernetes\n      kubeconfigFrom: file:/tmp/kc", "provider: talos\n      talos:\n        endpoint: https://127.0.0.1:6443",
		"        role: controlplane\n", "        role: controlplane\n        talosEndpoint: 127.0.0.1:50000\n",
		"        role: router\n", "        role: router\n        talosEndpoint: 127.0.0.1:50001\n      - name: h1\n        role: hostapp\n").Replace(minimal)
	if _, err := fleet.Parse("f.yaml", []byte(spec)); err != nil {
		t.Fatalf("a hostapp node without talosEndpoint: %v\n%s", err, spec)
	}
}
