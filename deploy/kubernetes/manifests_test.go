// Package kubernetes_test applies the agent's manifests to the test world's
// real kube-apiserver (internal/testenv) and checks what its service
// account may do: every read the checks make, and nothing else (no
// Secrets). live_test.go runs the DaemonSet on a live control plane, where
// its pods are scheduled and go Running.
package kubernetes_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/tasks"
)

const (
	namespace = "metaguildnet"
	saName    = "metaguildnet-agent"
	saUser    = "system:serviceaccount:" + namespace + ":" + saName
)

var world *testenv.Shared

func TestMain(m *testing.M) {
	world = testenv.StartShared(testenv.SeedOptions{Nodes: 3, Workspaces: []string{"demo"}})
	code := m.Run()
	world.Stop()
	os.Exit(code)
}

// applyManifests server-side applies every document of the file, with
// strict field validation: a misspelt or misplaced field fails.
func applyManifests(t *testing.T, cfg *rest.Config, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if raw == nil {
			continue
		}
		obj := &unstructured.Unstructured{Object: raw}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		body, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		force := true
		_, err = dyn.Resource(m.Resource).Namespace(obj.GetNamespace()).Patch(t.Context(), obj.GetName(), types.ApplyPatchType, body,
			metav1.PatchOptions{FieldManager: "metaguildnet-deploy-test", Force: &force, FieldValidation: "Strict"})
		if err != nil {
			t.Fatalf("apply %s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// saConfig is a client that authenticates with a real token of the
// agent's service account (TokenRequest), as the agent in its pod does.
func saConfig(t *testing.T, admin *rest.Config) *rest.Config {
	t.Helper()
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), saName,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", saUser, err)
	}
	return &rest.Config{Host: admin.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

func TestAgentRBAC(t *testing.T) {
	kube, _ := world.Require(t)
	admin := kube.RESTConfig()
	objs := applyManifests(t, admin, "agent-daemonset.yaml")
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"} {
		if !kinds[k] {
			t.Fatalf("the manifest has no %s", k)
		}
	}
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("no wildcards", func(t *testing.T) {
		cr, err := cs.RbacV1().ClusterRoles().Get(t.Context(), saName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cr.Rules {
			for _, v := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames) {
				if strings.Contains(v, "*") {
					t.Errorf("rule %v has a wildcard", r)
				}
			}
			for _, v := range r.Verbs {
				if !slices.Contains([]string{"get", "list"}, v) {
					t.Errorf("rule %v grants %s", r, v)
				}
			}
		}
		if !slices.ContainsFunc(cr.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "nodes") }) {
			t.Error("no rule for nodes")
		}
	})

	t.Run("access review", func(t *testing.T) {
		type ask struct {
			verb, group, resource, ns string
			allowed                   bool
		}
		for _, a := range []ask{
			// What the checks read.
			{"list", "", "nodes", "", true},
			{"list", "", "pods", "kube-system", true},
			{"list", "", "pods", "rethinkdb", true},
			{"get", "", "services", "rethinkdb", true},
			{"get", "apps", "deployments", "guildnet-system", true},
			{"get", "apps", "daemonsets", "metallb-system", true},
			{"get", "apiextensions.k8s.io", "customresourcedefinitions", "", true},
			{"list", "metallb.io", "ipaddresspools", "metallb-system", true},
			{"get", "metallb.io", "l2advertisements", "metallb-system", true},
			{"list", "guildnet.io", "workspaces", "", true},
			// Secrets, in any form, anywhere.
			{"get", "", "secrets", namespace, false},
			{"list", "", "secrets", namespace, false},
			{"list", "", "secrets", "", false},
			{"watch", "", "secrets", "", false},
			{"get", "", "secrets", "kube-system", false},
			// Nothing else, and nothing that writes.
			{"list", "", "configmaps", "", false},
			{"create", "", "pods", "default", false},
			{"delete", "", "nodes", "", false},
			{"patch", "apps", "deployments", "guildnet-system", false},
			{"create", "", "serviceaccounts/token", namespace, false},
			{"impersonate", "", "users", "", false},
			{"list", "metallb.io", "l2advertisements", "metallb-system", false},
		} {
			attrs := &authorizationv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.ns}
			if res, sub, ok := strings.Cut(a.resource, "/"); ok {
				attrs.Resource, attrs.Subresource = res, sub
			}
			sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{User: saUser, ResourceAttributes: attrs,
					Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != a.allowed {
				t.Errorf("%s %s.%s in %q: allowed=%v, want %v (%s)", a.verb, a.resource, a.group, a.ns, sar.Status.Allowed, a.allowed, sar.Status.Reason)
			}
		}
	})

	t.Run("with its own token", func(t *testing.T) {
		sa, err := kubernetes.NewForConfig(saConfig(t, admin))
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := sa.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
		if err != nil || len(nodes.Items) != 3 {
			t.Fatalf("list nodes as the agent: %d nodes, %v", len(nodes.Items), err)
		}
		if _, err := sa.CoreV1().Pods("kube-system").List(t.Context(), metav1.ListOptions{}); err != nil {
			t.Fatalf("list pods as the agent: %v", err)
		}
		if _, err := sa.CoreV1().Secrets(namespace).List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list secrets as the agent: %v, want forbidden", err)
		}
		if _, err := sa.CoreV1().Secrets("kube-system").Get(t.Context(), "anything", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("get a secret as the agent: %v, want forbidden", err)
		}
	})
}

// The checks that read the API server pass on the healthy seeded world
// with the agent's service account, as they do as cluster-admin: the role
// lacks nothing they read. (Checks that dial RethinkDB or the host app are left out: the
// Service addresses are not loopback.)
func TestChecksRunWithTheAgentsRole(t *testing.T) {
	kube, _ := world.Require(t)
	admin := kube.RESTConfig()
	applyManifests(t, admin, "agent-daemonset.yaml")
	checks := []string{"kube_api_ready", "nodes_ready", "coredns_running", "metallb_available", "guildnet_crds_established",
		"rethinkdb_pods_ready", "rethinkdb_address", "operator_available", "workspaces_settled"}

	asAdmin := runChecks(t, kube.KubeconfigPath(), checks)
	saKubeconfig := writeKubeconfig(t, saConfig(t, admin))
	asAgent := runChecks(t, saKubeconfig, checks)
	for _, name := range checks {
		a, ok := asAdmin[name]
		if !ok {
			t.Errorf("%s did not run", name)
			continue
		}
		g := asAgent[name]
		t.Logf("%s: %s %q", name, g.Status, g.Message)
		// The seeded world is healthy: every one passes.
		if g.Status != "pass" || a.Status != "pass" {
			t.Errorf("%s: as the agent %s %q, as admin %s %q; want pass for both", name, g.Status, g.Message, a.Status, a.Message)
		}
	}
}

type checkResult struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func runChecks(t *testing.T, kubeconfig string, checks []string) map[string]checkResult {
	t.Helper()
	args, err := json.Marshal(map[string]any{"scope": "cluster", "checks": checks})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := tasks.Verify{}.Run(ctx, &tasks.Env{Node: "guildnet-node-1", Cluster: "c1", Role: "controlplane",
		Settings: config.Settings{"KUBECONFIG": kubeconfig}}, args)
	if err != nil {
		t.Fatal(err)
	}
	// Read through JSON: the output is the wire payload, whatever Go type
	// carries it.
	b, err := json.Marshal(out.Data)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Checks []checkResult `json:"checks"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	res := map[string]checkResult{}
	for _, c := range v.Checks {
		res[c.Name] = c
	}
	return res
}

func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["w"] = &clientcmdapi.Cluster{Server: cfg.Host, InsecureSkipTLSVerify: true}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["w"] = &clientcmdapi.Context{Cluster: "w", AuthInfo: "agent"}
	kc.CurrentContext = "w"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		t.Fatal(err)
	}
	return p
}
