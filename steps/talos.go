package steps

// The cluster family, Talos part: machine configs generated on the
// controller from one secrets bundle per cluster and applied to each
// node's apid (maintenance mode first, as `talosctl apply-config
// --insecure` does), etcd bootstrapped once on the first control-plane
// node, the kubeconfig fetched from it and handed to the cluster's agents.
// With provider kubernetes the kubeconfig comes from
// cluster.kubeconfigFrom instead and the Talos steps have nothing to do.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	talos "github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v4"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guildnet/metaguildnet/messages"
)

// Names, defaults and limits of the Talos steps, in one place.
const (
	ProviderTalos      = "talos"
	ProviderKubernetes = "kubernetes"

	// Files in the controller's secrets dir of a cluster (SealEnv.Dir),
	// in a subdirectory: the controller keeps sealed outputs of steps as
	// files named by their keys in Dir itself, and no key (no slash) can
	// name these.
	talosSecretsDir      = "talos"
	TalosSecretsFile     = talosSecretsDir + "/secrets.yaml" // the secrets bundle, created once
	TalosconfigFile      = talosSecretsDir + "/talosconfig"  // the cluster's admin talosconfig, created once
	talosPreviousConfig  = "talos-previous-config.yaml"
	stateKubeconfigFile  = "kubeconfig"
	stateTalosconfigFile = "talosconfig"

	// Sealed keys.
	SealedMachineConfig = "machineconfig"
	SealedTalosconfig   = "talosconfig"
	SealedKubeconfig    = "kubeconfig"
	sealedSavedKube     = "saved_kubeconfig"
	sealedSavedTalos    = "saved_talosconfig"

	// TalosConfigPath is where a Talos node keeps its applied config
	// (`talosctl read /system/state/config.yaml`).
	TalosConfigPath = "/system/state/config.yaml"
	// DefaultInstallDisk is the install disk of generated configs, as
	// `talosctl gen config` defaults it; a config patch may change it.
	DefaultInstallDisk = "/dev/sda"
	// maxTalosFile bounds a config or kubeconfig read from a node.
	maxTalosFile = 4 << 20
	// talosProbeTimeout bounds the insecure maintenance-mode probe.
	talosProbeTimeout = 5 * time.Second
	// talosCallTimeout bounds one apid call.
	talosCallTimeout = 30 * time.Second
	// etcdWait bounds the wait for etcd after Bootstrap; readyzWait the
	// wait for the API server's /readyz after the kubeconfig is fetched.
	etcdWait   = 2 * time.Minute
	readyzWait = 3 * time.Minute
)

func talosSteps() []Step {
	return []Step{
		{
			Name: "talos_machine_config", Layer: messages.LayerCluster, Scope: ScopeNode,
			Description: "the node runs the machine config generated for it (applied in maintenance mode first)",
			Roles:       []string{messages.RoleControlPlane, messages.RoleWorker, messages.RoleRouter}, // a router is a Kubernetes worker with a Talos apid
			Critical:    true,
			Prereqs:     talosEndpointPrereq,
			Seal:        sealMachineConfig,
			Plan:        planMachineConfig,
			Apply:       applyMachineConfig,
			Undo:        undoMachineConfig,
		},
		{
			Name: "talos_bootstrap", Layer: messages.LayerCluster, Scope: ScopeCluster,
			Description: "etcd is bootstrapped, once, on the first control-plane node",
			After:       []string{"talos_machine_config"},
			Critical:    true,
			Seal:        sealTalosconfigOnly,
			Plan:        planBootstrap,
			Apply:       applyBootstrap,
			Undo:        undoBootstrap,
		},
		{
			Name: "kubeconfig_fetch", Layer: messages.LayerCluster, Scope: ScopeCluster,
			Description:   "the controller holds the cluster's kubeconfig and talosconfig (fetched from the first control-plane node)",
			After:         []string{"talos_bootstrap"},
			Critical:      true,
			Seal:          sealFetch,
			SealedOutputs: []string{SealedKubeconfig, SealedTalosconfig},
			Plan:          planFetch,
			Apply:         applyFetch,
		},
		{
			Name: "kubeconfig_install", Layer: messages.LayerCluster, Scope: ScopeNode,
			Description: "the agent keeps the cluster's kubeconfig and talosconfig in its state dir (0600)",
			After:       []string{"kubeconfig_fetch"},
			Critical:    true,
			Seal:        sealInstall,
			Plan:        planInstall,
			Apply:       applyInstall,
			Undo:        undoInstall,
		},
	}
}

func isTalos(spec messages.FleetCluster) bool { return spec.Cluster.Provider != ProviderKubernetes }

// firstControlPlane is the cluster's first controlplane node in the spec.
func firstControlPlane(spec messages.FleetCluster) (messages.FleetNode, error) {
	for _, n := range spec.Nodes {
		if n.Role == messages.RoleControlPlane {
			return n, nil
		}
	}
	return messages.FleetNode{}, Configf("give one node role controlplane", "cluster %s has no controlplane node", spec.Name)
}

// nodeTalosEndpoint is where this node's apid answers: the TALOS_ENDPOINT
// setting, else the spec's talosEndpoint for the node.
func nodeTalosEndpoint(env *Env) string {
	if ep := env.Settings.Get("TALOS_ENDPOINT", ""); ep != "" {
		return ep
	}
	for _, n := range env.Spec.Nodes {
		if n.Name == env.Node {
			return n.TalosEndpoint
		}
	}
	return ""
}

// firstCPEndpoint is the first control-plane node's apid: this node's own
// setting when it is that node, else the spec's talosEndpoint.
func firstCPEndpoint(env *Env) (string, messages.FleetNode, error) {
	cp, err := firstControlPlane(env.Spec)
	if err != nil {
		return "", cp, err
	}
	if cp.Name == env.Node {
		if ep := nodeTalosEndpoint(env); ep != "" {
			return ep, cp, nil
		}
	}
	if cp.TalosEndpoint == "" {
		return "", cp, Configf(fmt.Sprintf("set clusters[%s].nodes[%s].talosEndpoint (HOST:50000)", env.Spec.Name, cp.Name),
			"cluster %s: the first controlplane node %s has no talosEndpoint", env.Spec.Name, cp.Name)
	}
	return cp.TalosEndpoint, cp, nil
}

func talosEndpointPrereq(_ context.Context, env *Env) error {
	if !isTalos(env.Spec) || nodeTalosEndpoint(env) != "" {
		return nil
	}
	return Blocked(fmt.Sprintf("node %s has no Talos endpoint (TALOS_ENDPOINT unset and no talosEndpoint in the spec)", env.Node),
		fmt.Sprintf("export TALOS_ENDPOINT=NODE_IP:50000 in the agent's environment, or set clusters[%s].nodes[%s].talosEndpoint", env.Spec.Name, env.Node))
}

// --- on the controller: the secrets bundle and the generated configs ---

// bundleMu serializes the creation of secrets bundles: Seal runs for
// several nodes at once.
var bundleMu sync.Mutex

// writeOnce0600 writes b to path (mode 0600) unless it exists; the file
// appears whole (rename).
func writeOnce0600(path string, b []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// generateOnce writes what gen makes, encoded, to path (mode 0600)
// unless path exists; what names the thing in errors.
func generateOnce[T any](path, what string, gen func() (T, error), encode func(T) ([]byte, error)) error {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	v, err := gen()
	if err != nil {
		return fmt.Errorf("generate %s: %w", what, err)
	}
	data, err := encode(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	if err := writeOnce0600(path, data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// clusterSecrets loads the cluster's secrets bundle and talosconfig from
// dir, creating them the first time.
func clusterSecrets(spec messages.FleetCluster, dir string) (*secrets.Bundle, []byte, error) {
	bundleMu.Lock()
	defer bundleMu.Unlock()
	if dir == "" {
		return nil, nil, errors.New("no secrets dir for the cluster")
	}
	if err := os.MkdirAll(filepath.Join(dir, talosSecretsDir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("secrets dir: %w", err)
	}
	bpath := filepath.Join(dir, TalosSecretsFile)
	err := generateOnce(bpath, "the Talos secrets bundle", func() (*secrets.Bundle, error) {
		return secrets.NewBundle(secrets.NewClock(), config.TalosVersionCurrent)
	}, func(b *secrets.Bundle) ([]byte, error) { return yaml.Marshal(b) })
	if err != nil {
		return nil, nil, err
	}
	bundle, err := secrets.LoadBundle(bpath)
	if err != nil {
		return nil, nil, fmt.Errorf("load the Talos secrets bundle %s: %w", bpath, err)
	}
	in, err := talosInput(spec, bundle)
	if err != nil {
		return nil, nil, err
	}
	tpath := filepath.Join(dir, TalosconfigFile)
	err = generateOnce(tpath, "the talosconfig", in.Talosconfig, (*clientconfig.Config).Bytes)
	if err != nil {
		return nil, nil, err
	}
	tc, err := os.ReadFile(tpath)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", tpath, err)
	}
	return bundle, tc, nil
}

// talosInput is the generate input of a cluster: name, Kubernetes
// endpoint and version from the spec (defaults: the cluster's name,
// https://FIRST_CP_HOST:6443, machinery's default version), the control
// plane's apid endpoints for the talosconfig.
func talosInput(spec messages.FleetCluster, bundle *secrets.Bundle) (*generate.Input, error) {
	t := spec.Cluster.Talos
	name := t.ClusterName
	if name == "" {
		name = spec.Name
	}
	var eps []string
	for _, n := range spec.Nodes {
		if n.Role == messages.RoleControlPlane && n.TalosEndpoint != "" {
			eps = append(eps, n.TalosEndpoint)
		}
	}
	endpoint := t.Endpoint
	if endpoint == "" {
		if len(eps) == 0 {
			return nil, Configf(fmt.Sprintf("set clusters[%s].cluster.talos.endpoint (https://IP:6443)", spec.Name),
				"cluster %s: no Kubernetes endpoint and no controlplane talosEndpoint to derive it from", spec.Name)
		}
		host, _, err := net.SplitHostPort(eps[0])
		if err != nil {
			host = eps[0]
		}
		endpoint = "https://" + net.JoinHostPort(host, "6443")
	}
	version := t.KubernetesVersion
	if version == "" {
		version = constants.DefaultKubernetesVersion
	}
	in, err := generate.NewInput(name, endpoint, strings.TrimPrefix(version, "v"),
		generate.WithSecretsBundle(bundle),
		generate.WithEndpointList(eps),
		generate.WithInstallDisk(DefaultInstallDisk),
	)
	if err != nil {
		return nil, Configf(fmt.Sprintf("check clusters[%s].cluster.talos (clusterName, endpoint, kubernetesVersion)", spec.Name),
			"cluster %s: Talos config input: %v", spec.Name, err)
	}
	return in, nil
}

// machineConfigFor generates the node's machine config (controlplane for
// role controlplane, worker otherwise) with the spec's patches applied.
func machineConfigFor(spec messages.FleetCluster, node messages.FleetNode, bundle *secrets.Bundle) ([]byte, error) {
	in, err := talosInput(spec, bundle)
	if err != nil {
		return nil, err
	}
	typ := configmachine.TypeWorker
	if node.Role == messages.RoleControlPlane {
		typ = configmachine.TypeControlPlane
	}
	cfg, err := in.Config(typ)
	if err != nil {
		return nil, fmt.Errorf("generate the %s config of node %s: %w", typ, node.Name, err)
	}
	patches, err := configpatcher.LoadPatches(spec.Cluster.Talos.ConfigPatches)
	if err != nil {
		return nil, Configf(fmt.Sprintf("fix clusters[%s].cluster.talos.configPatches", spec.Name), "cluster %s: config patch: %v", spec.Name, err)
	}
	out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), patches)
	if err != nil {
		return nil, Configf(fmt.Sprintf("fix clusters[%s].cluster.talos.configPatches", spec.Name), "cluster %s: applying the config patches: %v", spec.Name, err)
	}
	b, err := out.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode the config of node %s: %w", node.Name, err)
	}
	return b, nil
}

func sealMachineConfig(_ context.Context, se *SealEnv) (map[string]string, error) {
	if !isTalos(se.Spec) {
		return nil, nil
	}
	bundle, tc, err := clusterSecrets(se.Spec, se.Dir)
	if err != nil {
		return nil, err
	}
	mc, err := machineConfigFor(se.Spec, se.Node, bundle)
	if err != nil {
		return nil, err
	}
	return map[string]string{SealedMachineConfig: string(mc), SealedTalosconfig: string(tc)}, nil
}

func sealTalosconfigOnly(_ context.Context, se *SealEnv) (map[string]string, error) {
	if !isTalos(se.Spec) {
		return nil, nil
	}
	_, tc, err := clusterSecrets(se.Spec, se.Dir)
	if err != nil {
		return nil, err
	}
	return map[string]string{SealedTalosconfig: string(tc)}, nil
}

// --- on the agent: talking to apid ---

func insecureTalos(ctx context.Context, ep string) (*talos.Client, error) {
	c, err := talos.New(ctx, talos.WithEndpoints(ep), talos.WithTLSConfig(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // maintenance mode has no identity yet, as talosctl --insecure
	if err != nil {
		return nil, fmt.Errorf("Talos client for %s (maintenance mode): %w", ep, err)
	}
	return c, nil
}

// secureTalos is the talosconfig's client aimed at ep alone.
func secureTalos(ctx context.Context, env *Env, ep string) (*talos.Client, error) {
	tc := env.Sealed[SealedTalosconfig]
	if tc == "" {
		return nil, errors.New("no talosconfig was sealed for this step (the controller's Seal did not run)")
	}
	cfg, err := clientconfig.FromString(tc)
	if err != nil {
		return nil, fmt.Errorf("parse the sealed talosconfig: %w", err)
	}
	cc := cfg.Contexts[cfg.Context]
	if cc == nil {
		return nil, fmt.Errorf("the sealed talosconfig has no context %q", cfg.Context)
	}
	one := *cc
	one.Endpoints, one.Nodes = []string{ep}, nil
	c, err := talos.New(ctx, talos.WithConfigContext(&one))
	if err != nil {
		return nil, fmt.Errorf("Talos client for %s: %w", ep, err)
	}
	return c, nil
}

// inMaintenance reports whether apid at ep answers an insecure client, as
// only a node in maintenance mode does. An apid that refuses the
// connection is an error (retryable, naming the endpoint), not a node out
// of maintenance: the mTLS call that would follow fails with a TLS error
// that hides the cause.
func inMaintenance(ctx context.Context, ep string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, talosProbeTimeout)
	defer cancel()
	c, err := insecureTalos(ctx, ep)
	if err != nil {
		return false, nil
	}
	defer c.Close()
	_, err = c.Version(ctx)
	if err != nil && strings.Contains(err.Error(), "connection refused") {
		return false, fmt.Errorf("apid at %s refused the connection: %w", ep, err)
	}
	return err == nil, nil
}

// appliedConfig reads the node's applied config through mTLS.
func appliedConfig(ctx context.Context, env *Env, ep string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, talosCallTimeout)
	defer cancel()
	c, err := secureTalos(ctx, env, ep)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	rc, err := c.Read(ctx, TalosConfigPath)
	if err != nil {
		return nil, fmt.Errorf("read the applied config from apid at %s: %w", ep, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxTalosFile+1))
	if err != nil {
		return nil, fmt.Errorf("read the applied config from apid at %s: %w", ep, err)
	}
	if len(b) > maxTalosFile {
		return nil, fmt.Errorf("the applied config at %s exceeds %d bytes", ep, maxTalosFile)
	}
	return b, nil
}

func shortSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])[:12]
}

// configObservation is what the node runs compared to what it should.
type configObservation struct {
	ep          string
	maintenance bool
	current     []byte
	want        []byte
}

func (o configObservation) plan() Plan {
	switch {
	case o.maintenance:
		return Plan{Action: messages.ActionCreate, Diff: fmt.Sprintf("apply the machine config (sha256 %s) to %s in maintenance mode", shortSum(o.want), o.ep)}
	case bytes.Equal(o.current, o.want):
		return Plan{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("machine config sha256 %s applied", shortSum(o.want))}
	}
	return Plan{Action: messages.ActionUpdate, Diff: fmt.Sprintf("machine config sha256 %s -> %s", shortSum(o.current), shortSum(o.want))}
}

func observeConfig(ctx context.Context, env *Env) (configObservation, error) {
	o := configObservation{ep: nodeTalosEndpoint(env), want: []byte(env.Sealed[SealedMachineConfig])}
	if o.ep == "" {
		return o, talosEndpointPrereq(ctx, env)
	}
	if len(o.want) == 0 {
		return o, errors.New("no machine config was sealed for this step (the controller's Seal did not run)")
	}
	if m, err := inMaintenance(ctx, o.ep); err != nil {
		return o, err
	} else if m {
		o.maintenance = true
		return o, nil
	}
	cur, err := appliedConfig(ctx, env, o.ep)
	if err != nil {
		return o, err
	}
	o.current = cur
	return o, nil
}

func notTalos(env *Env) Plan {
	return Plan{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("provider %s: no Talos", env.Spec.Cluster.Provider)}
}

func planMachineConfig(ctx context.Context, env *Env) (Plan, error) {
	if !isTalos(env.Spec) {
		return notTalos(env), nil
	}
	o, err := observeConfig(ctx, env)
	if err != nil {
		return Plan{}, err
	}
	return o.plan(), nil
}

// machineConfigUndo is what Undo needs: no secret, only which config
// was there (its hash); the config itself stays in the agent's state dir.
type machineConfigUndo struct {
	Endpoint       string `json:"endpoint"`
	Created        bool   `json:"created,omitempty"`
	PreviousSHA256 string `json:"previous_sha256,omitempty"`
}

// applyTalosConfig sends data to apid at ep (insecure in maintenance).
func applyTalosConfig(ctx context.Context, env *Env, ep string, data []byte, maintenance bool) error {
	ctx, cancel := context.WithTimeout(ctx, talosCallTimeout)
	defer cancel()
	var c *talos.Client
	var err error
	if maintenance {
		c, err = insecureTalos(ctx, ep)
	} else {
		c, err = secureTalos(ctx, env, ep)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_AUTO})
	if status.Code(err) == codes.InvalidArgument {
		return Configf(fmt.Sprintf("fix clusters[%s].cluster.talos.configPatches (or the Talos settings) so the node accepts its config", env.Spec.Name),
			"node %s refused its machine config: %v", env.Node, err)
	}
	if err != nil {
		return fmt.Errorf("apply the machine config to apid at %s: %w", ep, err)
	}
	for _, m := range resp.GetMessages() {
		for _, w := range m.GetWarnings() {
			env.logger().Info("talos config warning", zap.String("node", env.Node), zap.String("warning", w))
		}
	}
	return nil
}

func applyMachineConfig(ctx context.Context, env *Env) (Applied, error) {
	if !isTalos(env.Spec) {
		p := notTalos(env)
		return Applied{Action: p.Action, Diff: p.Diff}, nil
	}
	o, err := observeConfig(ctx, env)
	if err != nil {
		return Applied{}, err
	}
	p := o.plan()
	if p.Action == messages.ActionUnchanged {
		return Applied{Action: p.Action, Diff: p.Diff}, nil
	}
	undo := machineConfigUndo{Endpoint: o.ep, Created: o.maintenance}
	if !o.maintenance {
		// Keep the previous config (a secret) on this node for Undo.
		if err := writeState(env, talosPreviousConfig, o.current); err != nil {
			return Applied{}, err
		}
		undo.PreviousSHA256 = hex.EncodeToString(sum(o.current))
	}
	if err := applyTalosConfig(ctx, env, o.ep, o.want, o.maintenance); err != nil {
		return Applied{}, err
	}
	return Applied{Action: p.Action, Diff: p.Diff, Undo: undo,
		Outputs: map[string]string{"config_sha256": hex.EncodeToString(sum(o.want))}}, nil
}

// undoMachineConfig re-applies the previous config when there was one. A
// node that was in maintenance mode cannot go back to it short of a reset
// (talosctl reset wipes it), which setup never does: it stays configured.
func undoMachineConfig(ctx context.Context, env *Env, raw json.RawMessage) error {
	u, err := parseMachineConfigUndo(raw)
	if err != nil {
		return err
	}
	if u.Created || u.PreviousSHA256 == "" {
		env.logger().Info("talos_machine_config undo: the node was in maintenance mode; it keeps its config (only a reset would remove it)", zap.String("node", env.Node))
		return nil
	}
	prev, err := os.ReadFile(filepath.Join(env.StateDir, talosPreviousConfig))
	if err != nil {
		return fmt.Errorf("undo of talos_machine_config: the previous config: %w", err)
	}
	if hex.EncodeToString(sum(prev)) != u.PreviousSHA256 {
		return fmt.Errorf("undo of talos_machine_config: the kept previous config is not the one this apply replaced (sha256 %s)", u.PreviousSHA256[:12])
	}
	cur, err := appliedConfig(ctx, env, u.Endpoint)
	if err != nil {
		return err
	}
	if bytes.Equal(cur, prev) {
		return nil
	}
	return applyTalosConfig(ctx, env, u.Endpoint, prev, false)
}

func sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// writeState writes a 0600 file in the agent's state dir, whole.
func writeState(env *Env, name string, b []byte) error {
	if env.StateDir == "" {
		return errors.New("the agent has no state dir")
	}
	p := filepath.Join(env.StateDir, name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// --- talos_bootstrap ---

// etcdState says whether etcd runs on the node at ep and its members.
func etcdState(ctx context.Context, env *Env, ep string) (running bool, members int, err error) {
	ctx, cancel := context.WithTimeout(ctx, talosCallTimeout)
	defer cancel()
	c, err := secureTalos(ctx, env, ep)
	if err != nil {
		return false, 0, err
	}
	defer c.Close()
	sl, err := c.ServiceList(ctx)
	if err != nil {
		return false, 0, fmt.Errorf("list services on apid at %s: %w", ep, err)
	}
	for _, m := range sl.GetMessages() {
		for _, s := range m.GetServices() {
			if s.GetId() == "etcd" && s.GetState() == "Running" {
				running = true
			}
		}
	}
	if !running {
		return false, 0, nil
	}
	ml, err := c.EtcdMemberList(ctx, &machine.EtcdMemberListRequest{})
	if err != nil {
		return true, 0, fmt.Errorf("list etcd members on apid at %s: %w", ep, err)
	}
	for _, m := range ml.GetMessages() {
		members += len(m.GetMembers())
	}
	return true, members, nil
}

func planBootstrap(ctx context.Context, env *Env) (Plan, error) {
	if !isTalos(env.Spec) {
		return notTalos(env), nil
	}
	ep, cp, err := firstCPEndpoint(env)
	if err != nil {
		return Plan{}, err
	}
	if m, err := inMaintenance(ctx, ep); err != nil {
		return Plan{}, err
	} else if m {
		return Plan{Action: messages.ActionCreate, Diff: "bootstrap etcd on " + cp.Name + " once it runs its machine config"}, nil
	}
	running, members, err := etcdState(ctx, env, ep)
	if err != nil {
		return Plan{}, err
	}
	if running && members > 0 {
		return Plan{Action: messages.ActionUnchanged, Diff: fmt.Sprintf("etcd running with %d member(s)", members)}, nil
	}
	return Plan{Action: messages.ActionCreate, Diff: "bootstrap etcd on " + cp.Name}, nil
}

func applyBootstrap(ctx context.Context, env *Env) (Applied, error) {
	p, err := planBootstrap(ctx, env)
	if err != nil || p.Action == messages.ActionUnchanged {
		return Applied{Action: p.Action, Diff: p.Diff}, err
	}
	ep, cp, _ := firstCPEndpoint(env)
	cctx, cancel := context.WithTimeout(ctx, talosCallTimeout)
	defer cancel()
	c, err := secureTalos(cctx, env, ep)
	if err != nil {
		return Applied{}, err
	}
	defer c.Close()
	err = c.Bootstrap(cctx, &machine.BootstrapRequest{})
	if status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), "not empty") {
		err = nil // bootstrapped meanwhile: the same end
	}
	if err != nil {
		return Applied{}, fmt.Errorf("bootstrap etcd on %s (%s): %w", cp.Name, ep, err)
	}
	// Wait until etcd runs with a member, as talosctl health would.
	ctx, wcancel := context.WithTimeout(ctx, etcdWait)
	defer wcancel()
	for {
		running, members, err := etcdState(ctx, env, ep)
		if err == nil && running && members > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return Applied{}, fmt.Errorf("etcd on %s did not come up after bootstrap: %w", cp.Name, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return Applied{Action: messages.ActionCreate, Diff: p.Diff}, nil
}

// undoBootstrap is nothing: etcd cannot be un-bootstrapped short of a
// reset of the control plane (talosctl reset), which setup never does.
func undoBootstrap(_ context.Context, env *Env, _ json.RawMessage) error {
	env.logger().Info("talos_bootstrap undo: nothing to undo (an etcd cluster is not un-bootstrapped; only a reset would)", zap.String("cluster", env.Cluster))
	return nil
}

// --- kubeconfig_fetch ---

func sealFetch(ctx context.Context, se *SealEnv) (map[string]string, error) {
	out, err := sealTalosconfigOnly(ctx, se)
	if err != nil || out == nil {
		return out, err
	}
	if se.Saved != nil {
		if kc, ok := se.Saved(SealedKubeconfig); ok {
			out[sealedSavedKube] = kc
		}
		if tc, ok := se.Saved(SealedTalosconfig); ok {
			out[sealedSavedTalos] = tc
		}
	}
	return out, nil
}

func fetchKubeconfig(ctx context.Context, env *Env) ([]byte, string, error) {
	ep, cp, err := firstCPEndpoint(env)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, talosCallTimeout)
	defer cancel()
	c, err := secureTalos(ctx, env, ep)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	kc, err := c.Kubeconfig(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("fetch the kubeconfig from %s (%s): %w", cp.Name, ep, err)
	}
	if len(kc) == 0 || len(kc) > maxTalosFile {
		return nil, "", fmt.Errorf("the kubeconfig from %s is %d bytes", cp.Name, len(kc))
	}
	return kc, cp.Name, nil
}

func fetchPlan(env *Env, kc []byte, from string) Plan {
	savedKC, haveKC := env.Sealed[sealedSavedKube]
	savedTC := env.Sealed[sealedSavedTalos]
	switch {
	case !haveKC:
		return Plan{Action: messages.ActionCreate, Diff: "fetch the kubeconfig from " + from}
	case savedKC == string(kc) && savedTC == env.Sealed[SealedTalosconfig]:
		return Plan{Action: messages.ActionUnchanged, Diff: "the controller's kubeconfig is " + from + "'s"}
	}
	return Plan{Action: messages.ActionUpdate, Diff: "the kubeconfig from " + from + " differs from the controller's"}
}

func planFetch(ctx context.Context, env *Env) (Plan, error) {
	if !isTalos(env.Spec) {
		return Plan{Action: messages.ActionUnchanged, Diff: "provider kubernetes: the kubeconfig comes from cluster.kubeconfigFrom"}, nil
	}
	// Before bootstrap there is nothing to fetch yet: say what will be.
	ep, cp, err := firstCPEndpoint(env)
	if err != nil {
		return Plan{}, err
	}
	if m, err := inMaintenance(ctx, ep); err != nil {
		return Plan{}, err
	} else if m {
		return Plan{Action: messages.ActionCreate, Diff: "fetch the kubeconfig from " + cp.Name + " after bootstrap"}, nil
	}
	if running, _, err := etcdState(ctx, env, ep); err != nil {
		return Plan{}, err
	} else if !running {
		return Plan{Action: messages.ActionCreate, Diff: "fetch the kubeconfig from " + cp.Name + " after bootstrap"}, nil
	}
	kc, from, err := fetchKubeconfig(ctx, env)
	if err != nil {
		return Plan{}, err
	}
	return fetchPlan(env, kc, from), nil
}

func applyFetch(ctx context.Context, env *Env) (Applied, error) {
	if !isTalos(env.Spec) {
		p, _ := planFetch(ctx, env)
		return Applied{Action: p.Action, Diff: p.Diff}, nil
	}
	kc, from, err := fetchKubeconfig(ctx, env)
	if err != nil {
		return Applied{}, err
	}
	p := fetchPlan(env, kc, from)
	if p.Action == messages.ActionUnchanged {
		return Applied{Action: p.Action, Diff: p.Diff}, nil
	}
	if err := waitReadyz(ctx, kc); err != nil {
		return Applied{}, err
	}
	return Applied{Action: p.Action, Diff: p.Diff,
		Sealed: map[string]string{SealedKubeconfig: string(kc), SealedTalosconfig: env.Sealed[SealedTalosconfig]}}, nil
}

// waitReadyz waits until the API server of kubeconfig answers /readyz.
func waitReadyz(ctx context.Context, kubeconfig []byte) error {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return fmt.Errorf("the fetched kubeconfig: %w", err)
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("the fetched kubeconfig: %w", err)
	}
	defer hc.CloseIdleConnections()
	url := strings.TrimSuffix(cfg.Host, "/") + "/readyz"
	ctx, wcancel := context.WithTimeout(ctx, readyzWait)
	defer wcancel()
	var last error
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			cancel()
			return fmt.Errorf("readyz: %w", err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		cancel()
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the API server is not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// --- kubeconfig_install ---

func sealInstall(_ context.Context, se *SealEnv) (map[string]string, error) {
	if !isTalos(se.Spec) {
		return nil, nil // resolved on the agent from cluster.kubeconfigFrom
	}
	var kc, tc string
	var ok bool
	if se.Saved != nil {
		kc, ok = se.Saved(SealedKubeconfig)
		tc, _ = se.Saved(SealedTalosconfig)
	}
	if !ok {
		// Nothing to hand out before kubeconfig_fetch: Plan says so,
		// Apply fails.
		return map[string]string{}, nil
	}
	out := map[string]string{SealedKubeconfig: kc}
	if tc != "" {
		// Aim the node's talosconfig at its own apid.
		if se.Node.TalosEndpoint != "" {
			if cfg, err := clientconfig.FromString(tc); err == nil && cfg.Contexts[cfg.Context] != nil {
				cfg.Contexts[cfg.Context].Endpoints = []string{se.Node.TalosEndpoint}
				if b, err := cfg.Bytes(); err == nil {
					tc = string(b)
				}
			}
		}
		out[SealedTalosconfig] = tc
	}
	return out, nil
}

// installWant is what the state dir should hold: file name -> content.
func installWant(env *Env) (map[string][]byte, error) {
	if isTalos(env.Spec) {
		kc := env.Sealed[SealedKubeconfig]
		if kc == "" {
			return nil, errNoKubeconfigYet
		}
		want := map[string][]byte{stateKubeconfigFile: []byte(kc)}
		if tc := env.Sealed[SealedTalosconfig]; tc != "" {
			want[stateTalosconfigFile] = []byte(tc)
		}
		return want, nil
	}
	ref := env.Spec.Cluster.KubeconfigFrom
	if ref == "" {
		return nil, Configf(fmt.Sprintf("set clusters[%s].cluster.kubeconfigFrom (env:NAME or file:PATH)", env.Spec.Name),
			"cluster %s: provider kubernetes needs kubeconfigFrom", env.Spec.Name)
	}
	if env.Secret == nil {
		return nil, errors.New("no secret resolver on this agent")
	}
	kc, err := env.Secret(ref)
	if err != nil {
		return nil, Configf(fmt.Sprintf("make %s resolvable on node %s", ref, env.Node), "kubeconfigFrom: %v", err)
	}
	if _, err := clientcmd.Load([]byte(kc)); err != nil {
		return nil, Configf(fmt.Sprintf("point clusters[%s].cluster.kubeconfigFrom at a kubeconfig", env.Spec.Name), "kubeconfigFrom %s is not a kubeconfig: %v", ref, err)
	}
	return map[string][]byte{stateKubeconfigFile: []byte(kc)}, nil
}

// installDiff compares the state dir with want: the files to write and
// whether any exists already.
func installDiff(env *Env, want map[string][]byte) (changed []string, existed map[string]bool) {
	existed = map[string]bool{}
	for _, name := range []string{stateKubeconfigFile, stateTalosconfigFile} {
		w, ok := want[name]
		if !ok {
			continue
		}
		cur, err := os.ReadFile(filepath.Join(env.StateDir, name))
		if err == nil {
			existed[name] = true
		}
		if err != nil || !bytes.Equal(cur, w) {
			changed = append(changed, name)
		}
	}
	return changed, existed
}

func installPlan(changed []string, existed map[string]bool) Plan {
	if len(changed) == 0 {
		return Plan{Action: messages.ActionUnchanged, Diff: "state dir holds the cluster's kubeconfig"}
	}
	action := messages.ActionCreate
	for _, n := range changed {
		if existed[n] {
			action = messages.ActionUpdate
		}
	}
	return Plan{Action: action, Diff: "write " + strings.Join(changed, ", ") + " in the state dir"}
}

// errNoKubeconfigYet: the controller holds no kubeconfig for the cluster.
var errNoKubeconfigYet = errors.New("the controller holds no kubeconfig for this cluster yet (kubeconfig_fetch has not applied)")

func planInstall(_ context.Context, env *Env) (Plan, error) {
	want, err := installWant(env)
	if errors.Is(err, errNoKubeconfigYet) {
		return Plan{Action: messages.ActionCreate, Diff: "write the cluster's kubeconfig in the state dir once kubeconfig_fetch has run"}, nil
	}
	if err != nil {
		return Plan{}, err
	}
	return installPlan(installDiff(env, want)), nil
}

// installUndo says, per file, whether this apply created it (Undo
// removes it) or replaced it (Undo restores NAME.prev).
type installUndo struct {
	Created  []string `json:"created,omitempty"`
	Replaced []string `json:"replaced,omitempty"`
}

func applyInstall(_ context.Context, env *Env) (Applied, error) {
	want, err := installWant(env)
	if err != nil {
		return Applied{}, err
	}
	changed, existed := installDiff(env, want)
	p := installPlan(changed, existed)
	if len(changed) == 0 {
		return Applied{Action: p.Action, Diff: p.Diff}, nil
	}
	var u installUndo
	for _, name := range changed {
		if existed[name] {
			prev, err := os.ReadFile(filepath.Join(env.StateDir, name))
			if err != nil {
				return Applied{}, fmt.Errorf("keep the previous %s: %w", name, err)
			}
			if err := writeState(env, name+".prev", prev); err != nil {
				return Applied{}, err
			}
			u.Replaced = append(u.Replaced, name)
		} else {
			u.Created = append(u.Created, name)
		}
		if err := writeState(env, name, want[name]); err != nil {
			return Applied{}, err
		}
	}
	return Applied{Action: p.Action, Diff: p.Diff, Undo: u}, nil
}

func undoInstall(_ context.Context, env *Env, raw json.RawMessage) error {
	u, err := parseInstallUndo(raw)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range u.Created {
		if !validStateName(name) {
			errs = append(errs, fmt.Errorf("undo of kubeconfig_install: unknown file %q", name))
			continue
		}
		if err := os.Remove(filepath.Join(env.StateDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, name := range u.Replaced {
		if !validStateName(name) {
			errs = append(errs, fmt.Errorf("undo of kubeconfig_install: unknown file %q", name))
			continue
		}
		prev, err := os.ReadFile(filepath.Join(env.StateDir, name+".prev"))
		if err != nil {
			errs = append(errs, fmt.Errorf("undo of kubeconfig_install: %w", err))
			continue
		}
		if err := writeState(env, name, prev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// validStateName keeps Undo to the files this step writes (the Undo JSON
// comes back from the controller).
func validStateName(n string) bool { return n == stateKubeconfigFile || n == stateTalosconfigFile }

// logger is env.Log, or a no-op logger.
func (env *Env) logger() *zap.Logger {
	if env.Log == nil {
		return zap.NewNop()
	}
	return env.Log
}

// strictJSON decodes raw into v, refusing unknown fields and trailing data.
func strictJSON(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// parseMachineConfigUndo decodes and checks talos_machine_config's Undo
// data (it comes back from the controller).
func parseMachineConfigUndo(raw json.RawMessage) (machineConfigUndo, error) {
	var u machineConfigUndo
	if err := strictJSON(raw, &u); err != nil {
		return u, fmt.Errorf("undo of talos_machine_config: %w", err)
	}
	if _, _, err := net.SplitHostPort(u.Endpoint); err != nil {
		return machineConfigUndo{}, fmt.Errorf("undo of talos_machine_config: endpoint %q: %w", u.Endpoint, err)
	}
	if u.PreviousSHA256 != "" {
		if b, err := hex.DecodeString(u.PreviousSHA256); err != nil || len(b) != sha256.Size {
			return machineConfigUndo{}, fmt.Errorf("undo of talos_machine_config: previous_sha256 %q is not a sha256", u.PreviousSHA256)
		}
	}
	return u, nil
}

// parseInstallUndo decodes and checks kubeconfig_install's Undo data.
func parseInstallUndo(raw json.RawMessage) (installUndo, error) {
	var u installUndo
	if err := strictJSON(raw, &u); err != nil {
		return u, fmt.Errorf("undo of kubeconfig_install: %w", err)
	}
	for _, n := range slices.Concat(u.Created, u.Replaced) {
		if !validStateName(n) {
			return installUndo{}, fmt.Errorf("undo of kubeconfig_install: unknown file %q", n)
		}
	}
	return u, nil
}

// ValidateTalosPatches reports the first config patch that does not load
// (as `talosctl --config-patch` would refuse it), by index: for a spec
// parser that refuses a bad file before anything is applied. Whether the
// patched config is valid is the node's to say (ApplyConfiguration).
func ValidateTalosPatches(patches []string) error {
	for i, p := range patches {
		if _, err := configpatcher.LoadPatch([]byte(p)); err != nil {
			return fmt.Errorf("configPatches[%d]: %w", i, err)
		}
	}
	return nil
}
