//go:build tools

// Package kwok only records, for go mod tidy, the main package this tools
// module builds: KWOK, which plays the kubelet of the test world's nodes
// (pods go Running with no containers), so that the live control plane
// (kube-controller-manager, kube-scheduler) has nodes to schedule onto.
package kwok

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
