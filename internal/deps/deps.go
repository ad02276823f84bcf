//go:build tools

// Package deps pins the modules the project builds against so that go.mod
// keeps them while the packages that use them are being written. It is never
// compiled into a binary (the tools build tag is never set).
package deps

import (
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/nats-io/nkeys"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/shirou/gopsutil/v4/cpu"
	_ "github.com/siderolabs/talos/pkg/machinery/client"
	_ "github.com/spf13/cobra"
	_ "go.uber.org/zap"
	_ "gopkg.in/rethinkdb/rethinkdb-go.v6"
	_ "gopkg.in/yaml.v3"
	_ "k8s.io/client-go/dynamic"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "tailscale.com/client/local"
	_ "tailscale.com/tsnet"
)
