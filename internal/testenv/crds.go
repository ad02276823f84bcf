package testenv

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/guildnet/metaguildnet/internal/crds"
)

// worldCRDs are the GuildNet and MetalLB CRDs (package crds, shared with
// the setup steps).
func worldCRDs() []*unstructured.Unstructured { return append(crds.GuildNet(), crds.MetalLB()...) }

// seedCRDs installs the GuildNet and MetalLB CRDs and waits until each is
// Established.
func (g *GuildNet) seedCRDs(ctx context.Context) error {
	ri := g.Dynamic.Resource(crdGVR)
	all := worldCRDs()
	for _, c := range all {
		if _, err := ri.Create(ctx, c, metav1.CreateOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", c.GetName(), err)
		}
	}
	for _, c := range all {
		name := c.GetName()
		if err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
			u, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("get CRD %s: %w", name, err)
			}
			return crdEstablished(u), nil
		}); err != nil {
			return fmt.Errorf("wait for CRD %s Established: %w", name, err)
		}
	}
	return nil
}

func crdEstablished(u *unstructured.Unstructured) bool { return crds.Established(u) }
