//go:build tools

// Package kube only records, for go mod tidy, the main packages this tools
// module builds for the test world: etcd and kube-apiserver, and the live
// control plane beside them (kube-controller-manager, kube-scheduler).
package kube

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
