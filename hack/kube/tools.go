//go:build tools

// Package kube only records, for go mod tidy, the main packages this tools
// module builds: kube-apiserver and etcd for the test world.
package kube

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
