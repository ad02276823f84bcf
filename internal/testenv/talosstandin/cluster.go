package talosstandin

import (
	"bytes"
	"net"
	"sync"
	"time"

	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Node states, in the order a node goes through them: booted from an ISO
// and waiting for a config (maintenance), running a config (configured),
// running a config in a cluster whose etcd was bootstrapped
// (bootstrapped).
const (
	StateMaintenance  = "maintenance"
	StateConfigured   = "configured"
	StateBootstrapped = "bootstrapped"
)

// Node roles, as a machine config's machine.type names them.
const (
	RoleControlPlane = "controlplane"
	RoleWorker       = "worker"
)

// Cluster is the etcd that several stand-in nodes share, one Server per
// node (each with its own apid endpoint, as real nodes have): Bootstrap on
// one control-plane node bootstraps them all, a second Bootstrap on any
// of them fails, and a node configured after the bootstrap joins (a
// control-plane node as an etcd member). Give the same *Cluster in
// Options.Cluster of each node's Start.
type Cluster struct {
	mu    sync.Mutex
	boot  bool
	nodes []*Server
	// cas are the OS CAs with keys that control-plane nodes got from
	// their configs, by certificate: what trustd issues workers'
	// certificates from.
	cas map[string]*x509.PEMEncodedCertificateAndKey
}

// issuer returns the OS CA with its key for a CA certificate, if a node of
// the cluster has it.
func (c *Cluster) issuer(crt []byte) *x509.PEMEncodedCertificateAndKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cas[string(crt)]
}

// addIssuer records an OS CA with its key and returns the nodes waiting
// for it.
func (c *Cluster) addIssuer(ca *x509.PEMEncodedCertificateAndKey) []*Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cas == nil {
		c.cas = map[string]*x509.PEMEncodedCertificateAndKey{}
	}
	c.cas[string(ca.Crt)] = ca
	var waiting []*Server
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.pendingCA != nil && bytes.Equal(n.pendingCA.Crt, ca.Crt) {
			waiting = append(waiting, n)
		}
		n.mu.Unlock()
	}
	return waiting
}

// NewCluster returns a cluster that has not been bootstrapped.
func NewCluster() *Cluster { return &Cluster{} }

// Bootstrapped reports whether a node of the cluster was bootstrapped.
func (c *Cluster) Bootstrapped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.boot
}

func (c *Cluster) join(s *Server) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes = append(c.nodes, s)
}

// bootstrap starts etcd on s, the cluster's first member.
func (c *Cluster) bootstrap(s *Server) error {
	c.mu.Lock()
	if c.boot {
		c.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "etcd data directory is not empty")
	}
	if s.Role() != RoleControlPlane {
		c.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "bootstrap is not available on a worker node: only a control plane node runs etcd")
	}
	c.boot = true
	notes := c.syncLocked()
	c.mu.Unlock()
	notes.fire()
	return nil
}

// configured is called after s accepted a config: in a bootstrapped
// cluster the node joins.
func (c *Cluster) configured(s *Server) {
	c.mu.Lock()
	notes := c.syncLocked()
	c.mu.Unlock()
	notes.fire()
}

// syncLocked makes every configured node of a bootstrapped cluster
// bootstrapped, with the control-plane nodes as etcd members, and returns
// the transitions to report. c.mu is held.
func (c *Cluster) syncLocked() notifications {
	if !c.boot {
		return nil
	}
	var members []*machine.EtcdMember
	for _, s := range c.nodes {
		if s.State() != StateMaintenance && s.Role() == RoleControlPlane {
			members = append(members, s.member())
		}
	}
	var notes notifications
	for _, s := range c.nodes {
		notes = append(notes, s.setBootstrapped(members)...)
	}
	return notes
}

// notification is one OnState call, made outside every lock.
type notification struct {
	fn                func(node, role, state string)
	node, role, state string
}

type notifications []notification

func (ns notifications) fire() {
	for _, n := range ns {
		if n.fn != nil {
			n.fn(n.node, n.role, n.state)
		}
	}
}

// member is s as an etcd member (stable id per node).
func (s *Server) member() *machine.EtcdMember {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.memberID == 0 {
		s.memberID = randomID()
	}
	host := s.nodeAddr()
	return &machine.EtcdMember{
		Id:         s.memberID,
		Hostname:   hostnameFor(s.opts.Name),
		PeerUrls:   []string{"https://" + net.JoinHostPort(host, "2380")},
		ClientUrls: []string{"https://" + net.JoinHostPort(host, "2379")},
	}
}

// nodeAddr is the node's address for etcd URLs: its first Options.Nodes
// entry. s.mu is held.
func (s *Server) nodeAddr() string { return s.opts.Nodes[0] }

// setBootstrapped marks a configured node of a bootstrapped cluster and
// sets the etcd members it reports. It returns the transition, if any.
func (s *Server) setBootstrapped(members []*machine.EtcdMember) notifications {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == StateMaintenance {
		return nil
	}
	s.members = members
	if s.boot {
		return nil
	}
	s.boot = true
	s.state = StateBootstrapped
	if s.role == RoleControlPlane {
		s.services["etcd"] = newService("etcd", "Running", true, time.Now(), "Health check successful")
	}
	return notifications{{fn: s.opts.OnState, node: s.opts.Name, role: s.role, state: StateBootstrapped}}
}
