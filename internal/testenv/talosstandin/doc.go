// Package talosstandin is a STAND-IN for a Talos node's API (apid), for tests
// only.
//
// Why it exists: no Talos node can be had on the machines this project is
// built and tested on. Talos OS images cannot be fetched and there is no
// hypervisor or container engine to run one. The Talos machinery module,
// however, generates real secrets bundles, machine configs and talosconfigs,
// and its client speaks mTLS gRPC. This package serves that client: a gRPC
// server registering the real machine.MachineServiceServer, with a serving
// certificate signed by the OS CA of a real secrets bundle and client
// certificates verified against that CA, so the real
// github.com/siderolabs/talos/pkg/machinery/client is exercised end to end
// (talosconfig parsing, TLS, gRPC, response filtering, the kubeconfig
// stream).
//
// What it implements (the calls the controller uses), with state kept in
// memory for one "machine" that answers for every node in Options.Nodes
// (control plane) and Options.Workers:
//
//   - Version: tag TalosVersion, platform metal.
//   - ApplyConfiguration: the config is parsed with Talos' own config
//     loader and validated for metal mode (so, as on a real metal node, an
//     install disk is required; `talosctl gen config` defaults it to
//     /dev/sda); invalid configs get InvalidArgument. Accepted ones are counted (AppliedConfigs). If the
//     config carries an OS CA certificate and key, the stand-in takes that
//     identity, as a real node does after applying it: from then on it
//     serves a certificate from that CA and trusts client certificates from
//     it, so a talosconfig generated with the controller's own bundle works.
//   - Bootstrap: once. A second call fails with FailedPrecondition "etcd
//     data directory is not empty", as real Talos does.
//   - EtcdMemberList: Unavailable before Bootstrap (etcd is not running);
//     after it, one member per control-plane node. Asked of a worker, it
//     fails with FailedPrecondition (a worker runs no etcd).
//   - ServiceList: apid, containerd, cri, etcd, kubelet, machined, trustd,
//     udevd on a control-plane node, the same without etcd and trustd on a
//     worker. All Running and healthy, except etcd, which is Preparing until
//     Bootstrap. SetServiceState overrides any of them on every node;
//     SetNodeServiceState on one node (e.g. a worker's kubelet Waiting,
//     Starting or Failed).
//   - Kubeconfig: a stream of common.Data carrying a tar.gz with one file,
//     "kubeconfig", as apid sends it. The default kubeconfig points at
//     Options.Endpoint with the bundle's Kubernetes CA and an admin client
//     certificate; SetKubeconfig replaces it (e.g. with the kubeconfig of a
//     real test kube-apiserver).
//
// Also as on a real node: roles from the client certificate's organisation
// are enforced (os:reader may call Version, ServiceList and EtcdMemberList;
// ApplyConfiguration, Bootstrap and Kubeconfig need os:admin), a client
// without a certificate from the trusted CA is refused in the TLS handshake,
// and requests that name nodes (client.WithNode / WithNodes) are answered
// per node with Metadata.Hostname set, unknown nodes getting an error.
//
// With Options.Maintenance the stand-in starts like a node booted from an
// ISO, waiting for its config: no client certificate is asked for (clients
// connect with an insecure TLS config, as `talosctl apply-config --insecure`
// does), only Version and ApplyConfiguration are answered, and the first
// accepted ApplyConfiguration moves it to the normal, mTLS-only mode.
//
// A bare cluster (the world's TESTENV_BARE) is one Server per node, each on
// its own endpoint, started with Maintenance, a Name, the world's
// Kubeconfig, an OnState callback and one shared *Cluster. Each node goes
// maintenance -> configured (its first accepted config; its role is the
// config's machine.type) -> bootstrapped (Bootstrap on a control-plane
// node makes every configured node bootstrapped; a node configured later
// joins). AppliedConfigs is the node's config version and Read serves the
// applied config at ConfigPath (os:admin), so a client can tell a re-apply
// of the same config is not needed. A worker config carries the OS CA
// without its key: the worker serves a certificate from a control-plane
// node's key once one is configured (as trustd issues it). Kubeconfig
// answers only on a bootstrapped control-plane node. SetRefusing makes
// every call fail with Unavailable (a refusing apid).
//
// Everything else of MachineService answers Unimplemented. Nothing is
// installed, rebooted or run: this is a protocol stand-in, not a node.
//
// Use:
//
//	srv, err := talosstandin.Start(talosstandin.Options{ClusterName: "guildnet"})
//	if err != nil { ... }
//	defer srv.Close()
//	cfgBytes, _ := srv.Talosconfig()
//	cfg, _ := clientconfig.FromBytes(cfgBytes)
//	c, _ := client.New(ctx, client.WithConfig(cfg))
//	v, _ := c.Version(ctx)
//
// It listens on 127.0.0.1 only (by default on a free port).
package talosstandin
