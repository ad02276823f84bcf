package steps

import (
	"context"
	"errors"
	"testing"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// On a bare Talos cluster (no kubeconfig anywhere yet) the Kubernetes
// steps plan create, since kubeconfig_install earlier in the run makes
// the kubeconfig; an apply that still has none is blocked with the
// command; with provider kubernetes a missing kubeconfig blocks at once.
func TestKubeStepsOnABareCluster(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	env := &Env{Node: "cp1", Cluster: "alpha", Role: messages.RoleControlPlane, Settings: config.Settings{}, StateDir: t.TempDir(),
		Spec: messages.FleetCluster{Name: "alpha", Cluster: messages.FleetKube{Provider: "talos"}}}
	reg := Builtin()
	ctx := context.Background()
	for _, name := range []string{"k8s_namespaces", "guildnet_crds", "metallb", "rethinkdb_service", "workspace_operator"} {
		st, ok := reg.Lookup(name)
		if !ok {
			t.Fatalf("%s not registered", name)
		}
		if st.Prereqs != nil {
			if err := st.Prereqs(ctx, env); err != nil {
				t.Errorf("%s prereqs on a bare talos cluster: %v", name, err)
			}
		}
		p, err := st.Plan(ctx, env)
		if err != nil || p.Action != messages.ActionCreate {
			t.Errorf("%s plan on a bare cluster: %+v %v, want create", name, p, err)
		}
		_, err = st.Apply(ctx, env)
		var be *BlockedError
		if !errors.As(err, &be) || Classify(err) != messages.StepErrBlocked {
			t.Errorf("%s apply without a kubeconfig: %v, want blocked", name, err)
		}
	}
	env.Spec.Cluster.Provider = "kubernetes"
	if err := kubeconfigPrereq(ctx, env); Classify(err) != messages.StepErrBlocked {
		t.Errorf("provider kubernetes without a kubeconfig: %v, want blocked", err)
	}
}
