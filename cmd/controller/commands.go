package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/bundle"
	"github.com/guildnet/metaguildnet/diagnostics/report"
	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/messages"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "controller",
		Short: "MetaGuildNet fleet controller",
		Long: "The MetaGuildNet controller: an embedded NATS server with JetStream that enrolls agents,\n" +
			"sends them tasks and keeps the fleet's state. Flags can also be set as METAGN_<FLAG> in the\n" +
			"environment, .env.local or .env (flags win, then the environment, then .env.local, then .env).",
		Version: buildinfo.Version,
	}
	root.AddCommand(serveCmd(), tokenCmd(), relayCmd(), statusCmd(), runCmd(), nodesCmd(), verifyCmd(), reportCmd(), diagnoseCmd(), setupCmd(), rolloutCmd(), backupCmd(), restoreCmd(), buildinfo.Command())
	root.AddCommand(dashboardCmd())
	return root
}

func dataDirFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "data-dir", config.DefaultDataDir(), "controller state directory (env METAGN_DATA_DIR)")
}

func serveCmd() *cobra.Command {
	var o controller.Options
	var lf cli.LogFlags
	var layerIntervals map[string]string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the controller",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			log, err := lf.Logger()
			if err != nil {
				return err
			}
			defer log.Sync()
			o.Log = log
			if err := tailnetEnv(&o); err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			o.SweepLayerIntervals = map[string]time.Duration{}
			for l, v := range layerIntervals {
				d, err := time.ParseDuration(v)
				if err != nil {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--sweep-layer-interval %s=%s: want a positive duration", l, v))
				}
				o.SweepLayerIntervals[l] = d
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			c, err := controller.Start(ctx, o)
			if err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			<-ctx.Done()
			log.Info("shutting down")
			c.Close()
			return nil
		},
	}
	dataDirFlag(cmd, &o.DataDir)
	cmd.Flags().StringVar(&o.Listen, "listen", controller.DefaultListen, "NATS address agents and the CLI connect to (port 0 picks one; tailnet[:PORT] binds to the host tailscaled's tailnet IP)")
	cmd.Flags().StringVar(&o.Advertise, "advertise", "", "nats://HOST:PORT agents reach this controller at, when not --listen's (join tokens carry it; a cluster's peers advertise it to agents)")
	cmd.Flags().StringVar(&o.HTTP, "http", "127.0.0.1:8222", "address of the web dashboard, /healthz and /metrics (empty disables; tailnet[:PORT] serves on the controller's tailnet address; any other non-loopback address needs --http-tls-cert/--http-tls-key)")
	cmd.Flags().StringVar(&o.HTTPTLSCert, "http-tls-cert", "", "serve --http over TLS with this certificate (PEM; with --http-tls-key)")
	cmd.Flags().StringVar(&o.HTTPTLSKey, "http-tls-key", "", "the private key of --http-tls-cert (PEM)")
	cmd.Flags().DurationVar(&o.HeartbeatInterval, "heartbeat-interval", controller.DefaultHeartbeatInterval,
		fmt.Sprintf("agent heartbeat interval, at least %v; a node is stale after %d missed", controller.MinHeartbeatInterval, controller.StaleAfter))
	cmd.Flags().IntVar(&o.OfflineAfter, "offline-after", controller.DefaultOfflineAfter,
		fmt.Sprintf("heartbeat intervals without a heartbeat before a node is offline (at least %d)", controller.MinOfflineAfter))
	cmd.Flags().IntVar(&o.MaxMessageBytes, "max-message-bytes", messages.DefaultMaxMessageBytes,
		fmt.Sprintf("largest payload accepted (%d to %d)", controller.MinMaxMessageBytes, controller.MaxMaxMessageBytes))
	cmd.Flags().DurationVar(&o.Retention, "retention", controller.DefaultRetention, "how long task history and results are kept")
	cmd.Flags().DurationVar(&o.SweepInterval, "sweep-interval", controller.DefaultSweepInterval, "how often to verify the whole fleet (negative disables)")
	cmd.Flags().StringToStringVar(&layerIntervals, "sweep-layer-interval", nil, "per-layer sweep interval, e.g. network=15s,database=30s")
	cmd.Flags().DurationVar(&o.HistoryRetention, "history-retention", controller.DefaultHistoryRetention, "how long verification reports are kept")
	tailnetFlags(cmd, &o)
	cmd.Flags().StringVar(&o.RulesFile, "rules-file", "", "YAML file of diagnostic rules that extend the built-in ones")
	cmd.Flags().BoolVar(&o.Pprof, "pprof", false, "serve /debug/pprof on the --http address")
	clusterFlags(cmd, &o.Cluster)
	cmd.Flags().StringVar(&o.LeafListen, "leaf-listen", "", "HOST:PORT where relays' leaf links connect (makes this controller a hub; docs/HA.md)")
	cmd.Flags().StringVar(&o.RelaySecretFile, "relay-secret-file", "", "file holding the secret relays authenticate with (default DATA_DIR/relay.secret)")
	lf.Add(cmd)
	return cmd
}

// clusterFlags are serve's flags for a cluster of controllers (docs/HA.md).
func clusterFlags(cmd *cobra.Command, o *controller.ClusterOptions) {
	cmd.Flags().StringVar(&o.Name, "cluster-name", "", "join a cluster of controllers of this name (with --cluster-listen and --peers; docs/HA.md)")
	cmd.Flags().StringVar(&o.Listen, "cluster-listen", "", "HOST:PORT where this controller accepts its peers' routes")
	cmd.Flags().StringSliceVar(&o.Peers, "peers", nil, "the other controllers' route URLs, nats://HOST:PORT,... ")
	cmd.Flags().StringVar(&o.SecretFile, "cluster-secret-file", "", "file holding the secret routes authenticate with, the same on every peer (default DATA_DIR/cluster.secret)")
	cmd.Flags().DurationVar(&o.LeaseTTL, "lease-ttl", controller.DefaultLeaseTTL, "how long the active controller's lease outlives its last renewal (failover takes about this long)")
}

// relayCmd runs a relay: a NATS leaf node for one site (docs/HA.md).
func relayCmd() *cobra.Command {
	var ro controller.RelayOptions
	var lf cli.LogFlags
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: a leaf node the site's agents connect to, linked to the hub",
		Long: "Run a relay for one site: agents there connect to --listen with their own keys and the same\n" +
			"per-node permissions as at the hub; the relay links to the hub (a controller serving\n" +
			"--leaf-listen) over one leaf connection authenticated with the relay secret. It keeps no\n" +
			"state. Agents enroll through the relay as at the hub (it asks the hub about each join token by its hash).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			log, err := lf.Logger()
			if err != nil {
				return err
			}
			defer log.Sync()
			ro.Log = log
			if ro.SecretFile == "" {
				return cli.Fail(cli.ExitUsage, errors.New("--relay-secret-file: required (the hub's relay secret)"))
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			r, err := controller.StartRelay(ctx, ro)
			if err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			<-ctx.Done()
			log.Info("shutting down")
			r.Close()
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&ro.Hub, "hub", nil, "the hub's leaf URLs, nats://HOST:PORT,... (every peer's for a cluster)")
	cmd.Flags().StringVar(&ro.Listen, "listen", "127.0.0.1:4222", "address the site's agents connect to")
	cmd.Flags().StringVar(&ro.SecretFile, "relay-secret-file", "", "file holding the relay secret the hub accepts (0600)")
	cmd.Flags().IntVar(&ro.MaxMessageBytes, "max-message-bytes", messages.DefaultMaxMessageBytes, "largest payload accepted")
	lf.Add(cmd)
	return cmd
}

// dial connects to the controller for dataDir, mapping failures to exit 2.
func dial(dataDir string) (*ctlclient.Client, error) {
	c, err := ctlclient.Dial(dataDir)
	if err != nil {
		return nil, cli.Fail(cli.ExitUsage, err)
	}
	return c, nil
}

// session loads the layered configuration, then connects to the
// controller of *dataDir (read after loading: METAGN_DATA_DIR may set it).
// done closes the connection and the context.
func session(cmd *cobra.Command, dataDir *string, timeout time.Duration) (c *ctlclient.Client, ctx context.Context, done func(), err error) {
	if _, err := cli.LoadConfig(cmd); err != nil {
		return nil, nil, nil, err
	}
	return connect(cmd, *dataDir, timeout)
}

// apiErr maps an API failure to an exit code: refusals of the request are
// usage errors (2), and so is an unreachable controller.
func apiErr(err error) error {
	var ae *ctlclient.APIError
	if errors.As(err, &ae) || errors.Is(err, ctlclient.ErrUnreachable) {
		return cli.Fail(cli.ExitUsage, err)
	}
	return cli.Fail(cli.ExitUsage, err)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func tokenCmd() *cobra.Command {
	tok := &cobra.Command{Use: "token", Short: "Manage join tokens"}
	var dataDir, ttl string
	var reusable bool
	var scope messages.TokenScope
	var labels, urls []string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token (printed as the last line)",
		Long: "Create a join token. A node enrolling with it gets the token's scope: --cluster fixes the\n" +
			"cluster, --role (repeatable) the roles it may take, --label the labels it gets. A node's\n" +
			"cluster, role and labels are fixed at enrollment; only `controller nodes set` changes them.\n" +
			"--url (repeatable) makes the token name other URLs for agents to dial than the controllers'\n" +
			"own, such as a site's relay (nats://RELAY:PORT): agents there then enroll and run through it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			if d, err := time.ParseDuration(ttl); err != nil || d <= 0 {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("--ttl %q: want a positive duration such as 24h", ttl))
			}
			var err error
			if scope.Labels, err = parseLabels(labels); err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			if len(urls) > 0 {
				if _, err := messages.ValidateControllerURLs(strings.Join(urls, ",")); err != nil {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--url: %w", err))
				}
			}
			c, err := dial(dataDir)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			rep, err := c.TokenCreateWith(ctx, messages.TokenCreateRequest{TTL: ttl, Reusable: reusable, Scope: scope, URLs: urls})
			if err != nil {
				return apiErr(err)
			}
			use := "single-use"
			if rep.Reusable {
				use = "reusable"
			}
			if sc := scopeString(rep.Scope); sc != "" {
				use += ", " + sc
			}
			fmt.Fprintf(os.Stderr, "join token (%s, expires %s); keep it secret:\n", use, rep.ExpiresAt.Format(time.RFC3339))
			fmt.Println(rep.Token)
			return nil
		},
	}
	dataDirFlag(create, &dataDir)
	create.Flags().StringVar(&ttl, "ttl", "24h", "how long the token is valid")
	create.Flags().BoolVar(&reusable, "reusable", false, "allow many nodes to enroll with it until it expires")
	create.Flags().StringVar(&scope.Cluster, "cluster", "", "nodes enrolling with it belong to this cluster")
	create.Flags().StringSliceVar(&scope.Roles, "role", nil, "roles nodes enrolling with it may take (repeatable)")
	create.Flags().StringSliceVar(&labels, "label", nil, "label k=v nodes enrolling with it get (repeatable)")
	create.Flags().StringSliceVar(&urls, "url", nil, "a URL the token names for agents to dial instead of the controllers' (e.g. a site's relay, nats://RELAY:PORT; repeatable)")
	tok.AddCommand(create)
	return tok
}

// parseLabels turns k=v flags into a map.
func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want k=v", kv)
		}
		m[k] = v
	}
	if err := messages.ValidateLabels(m); err != nil {
		return nil, fmt.Errorf("--label: %w", err)
	}
	return m, nil
}

func scopeString(s messages.TokenScope) string {
	var parts []string
	if s.Cluster != "" {
		parts = append(parts, "cluster "+s.Cluster)
	}
	if len(s.Roles) > 0 {
		parts = append(parts, "roles "+strings.Join(s.Roles, "|"))
	}
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		parts = append(parts, k+"="+s.Labels[k])
	}
	return strings.Join(parts, ", ")
}

func statusCmd() *cobra.Command {
	var dataDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the fleet: nodes by cluster, their state and heartbeat age",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, done, err := session(cmd, &dataDir, time.Minute)
			if err != nil {
				return err
			}
			defer done()
			st, err := c.Status(ctx)
			if err != nil {
				return apiErr(err)
			}
			if err := show(asJSON, st, func(w io.Writer) { printStatus(w, st) }); err != nil {
				return err
			}
			if st.Summary.Stale+st.Summary.Offline > 0 {
				return cli.Unhealthy
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	jsonFlag(cmd, &asJSON)
	return cmd
}

func runCmd() *cobra.Command {
	var dataDir, target, timeout, args string
	var asJSON, skipOffline bool
	cmd := &cobra.Command{
		Use:   "run --target SELECTOR TASK",
		Short: "Run a task on the nodes a selector picks and wait for every outcome",
		Long: "Run a task kind (ping, facts, sleep, ...) on the nodes SELECTOR picks: all, a node name,\n" +
			"cluster=C, role=R, or labels k=v,k2=v2 (ANDed). Waits until every node has an outcome:\n" +
			"ok, warn, fail, or unknown with a reason (offline, timed_out, rejected, expired).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			if target == "" {
				return cli.Fail(cli.ExitUsage, errors.New("--target: missing (all, NAME, cluster=C, role=R or k=v,...)"))
			}
			d, err := time.ParseDuration(timeout)
			if err != nil || d <= 0 {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("--timeout %q: want a positive duration", timeout))
			}
			req := messages.RunRequest{Target: target, Kind: pos[0], Timeout: timeout, SkipOffline: skipOffline}
			if args != "" {
				if !json.Valid([]byte(args)) {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--args: not valid JSON: %s", args))
				}
				req.Args = json.RawMessage(args)
			}
			c, ctx, done, err := connect(cmd, dataDir, d+time.Minute)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.Run(ctx, req)
			if err != nil {
				return apiErr(err)
			}
			report, err := c.Wait(ctx, rep.TaskID)
			if err != nil {
				return apiErr(err)
			}
			out := runOutput{TaskID: report.TaskID, Kind: report.Kind, Target: report.Target, Results: report.Results}
			if err := show(asJSON, out, func(w io.Writer) { printRun(w, out) }); err != nil {
				return err
			}
			for _, r := range report.Results {
				if r.Outcome == messages.OutcomeFail || r.Outcome == messages.OutcomeUnknown {
					return cli.Unhealthy
				}
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&target, "target", "", "which nodes: all, NAME, cluster=C, role=R, k=v,k2=v2")
	cmd.Flags().StringVar(&timeout, "timeout", "30s", "deadline for the task on every node")
	cmd.Flags().StringVar(&args, "args", "", "task arguments as JSON")
	cmd.Flags().BoolVar(&skipOffline, "skip-offline", false, "settle offline nodes at once as unknown/offline instead of waiting for them until the deadline")
	jsonFlag(cmd, &asJSON)
	return cmd
}

// runOutput is the `run --json` contract.
type runOutput struct {
	TaskID  string                `json:"task_id"`
	Kind    string                `json:"kind"`
	Target  string                `json:"target"`
	Results []messages.NodeResult `json:"results"`
}

func nodesCmd() *cobra.Command {
	nodes := &cobra.Command{Use: "nodes", Short: "Manage enrolled nodes"}
	var dataDir string
	rm := &cobra.Command{
		Use:   "remove NAME",
		Short: "Revoke a node at once: its connection is closed and it cannot reconnect",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			c, ctx, done, err := session(cmd, &dataDir, 10*time.Second)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.NodesRemove(ctx, pos[0])
			if err != nil {
				return apiErr(err)
			}
			fmt.Printf("removed %s (%d connection(s) closed)\n", rep.Name, rep.Disconnected)
			return nil
		},
	}
	dataDirFlag(rm, &dataDir)
	nodes.AddCommand(rm, nodesSetCmd())
	return nodes
}

func nodesSetCmd() *cobra.Command {
	var dataDir, cluster, role string
	var labels, unset []string
	cmd := &cobra.Command{
		Use:   "set NAME [--cluster C] [--role R] [--label k=v ...] [--unset-label k ...]",
		Short: "Change a node's cluster, role or labels (they decide which tasks and checks it gets)",
		Long: "Change what a node is. A node's cluster, role and labels are fixed at enrollment and only\n" +
			"the operator changes them: the node learns the change within a minute, and a heartbeat that\n" +
			"claims otherwise is refused.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, pos []string) error {
			req := messages.NodesSetRequest{Name: pos[0], UnsetLabels: unset}
			if cmd.Flags().Changed("cluster") {
				req.Cluster = &cluster
			}
			if cmd.Flags().Changed("role") {
				req.Role = &role
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			c, ctx, done, err := session(cmd, &dataDir, 10*time.Second)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.NodesSet(ctx, req)
			if err != nil {
				return apiErr(err)
			}
			ls := make([]string, 0, len(rep.Node.Labels))
			for _, k := range slices.Sorted(maps.Keys(rep.Node.Labels)) {
				ls = append(ls, k+"="+rep.Node.Labels[k])
			}
			fmt.Printf("%s: cluster %s, role %s, labels %s\n", rep.Name, dash(rep.Node.Cluster), dash(rep.Node.Role), dash(strings.Join(ls, ",")))
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&cluster, "cluster", "", "the node's cluster (\"\" for none)")
	cmd.Flags().StringVar(&role, "role", "", "the node's role (\"\" for none)")
	cmd.Flags().StringSliceVar(&labels, "label", nil, "set label k=v (repeatable)")
	cmd.Flags().StringSliceVar(&unset, "unset-label", nil, "remove label k (repeatable)")
	return cmd
}

func verifyCmd() *cobra.Command {
	var dataDir, node, cluster, timeout string
	var layers []string
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify the fleet layer by layer (network, host, cluster, database, application)",
		Long: "Run the verification checks now: node checks (network, host) on every selected node, cluster\n" +
			"checks (cluster, database, application) once per cluster on a controlplane agent (or any online\n" +
			"one). Exit 0 when healthy, 1 when not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			if node != "" && cluster != "" {
				return cli.Fail(cli.ExitUsage, errors.New("--node and --cluster: give one or neither"))
			}
			c, ctx, done, err := connectUntilInterrupted(cmd, dataDir)
			if err != nil {
				return err
			}
			defer done()
			req := messages.VerifyRequest{Node: node, Cluster: cluster, Layers: layers, Timeout: timeout}
			for {
				// As long as the controller gives the request (the checks
				// may take --timeout, at most messages.MaxVerifyTimeout).
				rctx, cancel := context.WithTimeout(ctx, messages.APITimeout(messages.APIVerify))
				rep, err := c.Verify(rctx, req)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return apiErr(err)
				}
				show(asJSON, rep, func(w io.Writer) { report.WriteText(w, rep) })
				if !watch {
					if !report.Healthy(rep) {
						return cli.Unhealthy
					}
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
				if !asJSON {
					fmt.Println(strings.Repeat("─", 72))
				}
			}
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&node, "node", "", "verify this node (and its cluster's checks)")
	cmd.Flags().StringVar(&cluster, "cluster", "", "verify this cluster's nodes")
	cmd.Flags().StringSliceVar(&layers, "layer", nil, "only these layers (network, host, cluster, database, application, or custom)")
	cmd.Flags().StringVar(&timeout, "timeout", messages.DefaultVerifyTimeout.String(),
		fmt.Sprintf("deadline for the checks on each node (at most %v)", messages.MaxVerifyTimeout))
	jsonFlag(cmd, &asJSON)
	cmd.Flags().BoolVar(&watch, "watch", false, "verify again every --every until interrupted")
	cmd.Flags().DurationVar(&every, "every", 10*time.Second, "interval for --watch")
	return cmd
}

func reportCmd() *cobra.Command {
	var dataDir string
	var last, asJSON bool
	cmd := &cobra.Command{
		Use:   "report --last",
		Short: "Show the newest verification report (from `verify` or the continuous sweeps)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !last {
				return cli.Fail(cli.ExitUsage, errors.New("say which report: --last"))
			}
			c, ctx, done, err := session(cmd, &dataDir, 30*time.Second)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.LastReport(ctx)
			if err != nil {
				return apiErr(err)
			}
			show(asJSON, rep, func(w io.Writer) { report.WriteText(w, rep) })
			if !report.Healthy(rep) {
				return cli.Unhealthy
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().BoolVar(&last, "last", false, "the newest report")
	jsonFlag(cmd, &asJSON)
	return cmd
}

func diagnoseCmd() *cobra.Command {
	var dataDir, node, cluster, bundlePath string
	var all, asJSON, evidence bool
	cmd := &cobra.Command{
		Use:   "diagnose (--node N | --cluster C | --all)",
		Short: "Find root causes and fixes: verification plus each node's collectors, analysed by the rules",
		Long: "Diagnose one node, a cluster or the fleet: the verification checks and each node's collectors\n" +
			"(system metrics, component health, logs, configuration; secrets redacted on the node) are matched\n" +
			"against the rules (docs/TROUBLESHOOTING.md). A cause that explains many failures is shown once with\n" +
			"its symptoms. --bundle writes a redacted support bundle (with --node).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			n := 0
			for _, set := range []bool{node != "", cluster != "", all} {
				if set {
					n++
				}
			}
			if n != 1 {
				return cli.Fail(cli.ExitUsage, errors.New("say what to diagnose: one of --node N, --cluster C or --all"))
			}
			if bundlePath != "" && node == "" {
				return cli.Fail(cli.ExitUsage, errors.New("--bundle needs --node: a support bundle is for one node"))
			}
			c, ctx, done, err := connect(cmd, dataDir, 2*time.Minute)
			if err != nil {
				return err
			}
			defer done()
			res, err := c.Diagnose(ctx, messages.DiagnoseRequest{Node: node, Cluster: cluster})
			if err != nil {
				return apiErr(err)
			}
			if asJSON {
				printJSON(res.Diagnosis)
			} else {
				diagnostics.WriteText(os.Stdout, res.Diagnosis, diagnostics.TextOptions{Evidence: evidence})
				for _, note := range res.Notes {
					fmt.Fprintln(os.Stdout, "note:", note)
				}
			}
			if bundlePath != "" {
				err := bundle.WriteFile(bundlePath, bundle.Contents{Node: node, Created: time.Now().UTC(),
					Sections: res.Sections[node], Diagnosis: &res.Diagnosis, Report: res.Report})
				if err != nil {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--bundle %s: %w", bundlePath, err))
				}
				fmt.Fprintf(os.Stderr, "wrote support bundle %s (redacted)\n", bundlePath)
			}
			if res.Diagnosis.Status != messages.Healthy {
				return cli.Unhealthy
			}
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&node, "node", "", "diagnose this node")
	cmd.Flags().StringVar(&cluster, "cluster", "", "diagnose this cluster")
	cmd.Flags().BoolVar(&all, "all", false, "diagnose the whole fleet")
	cmd.Flags().StringVar(&bundlePath, "bundle", "", "also write a redacted support bundle (tar.gz) for --node")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the findings as JSON")
	cmd.Flags().BoolVar(&evidence, "evidence", false, "show what fired each finding")
	return cmd
}

func backupCmd() *cobra.Command {
	var dataDir, out string
	cmd := &cobra.Command{
		Use:   "backup --out FILE",
		Short: "Write the running controller's whole state (nodes, token hashes, tasks, results, reports) to FILE",
		Long: "Take a snapshot of the fleet state from a running controller: every JetStream stream it keeps,\n" +
			"with its configuration and messages, as JSON lines. `controller restore` rebuilds a data dir\n" +
			"from it; agents then reconnect with their existing keys. The file holds no secret that lets\n" +
			"anyone join (tokens are stored hashed) but it does describe the fleet: it is written 0600.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return cli.Fail(cli.ExitUsage, errors.New("--out: missing (the file to write)"))
			}
			c, ctx, done, err := session(cmd, &dataDir, 10*time.Minute)
			if err != nil {
				return err
			}
			defer done()
			tmp := out + ".tmp"
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("--out: %w", err))
			}
			st, err := controller.Backup(ctx, c.Conn(), f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp, out)
			}
			if err != nil {
				os.Remove(tmp)
				return cli.Fail(cli.ExitUsage, err)
			}
			fmt.Printf("backup %s: %d streams, %d records, %d bytes of data\n", out, st.Streams, st.Records, st.Bytes)
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&out, "out", "", "file to write")
	return cmd
}

func restoreCmd() *cobra.Command {
	var dataDir, in string
	cmd := &cobra.Command{
		Use:   "restore --in FILE --data-dir DIR",
		Short: "Rebuild a controller's data dir from a backup (then start `controller serve --data-dir DIR`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := cli.LoadConfig(cmd); err != nil {
				return err
			}
			if in == "" {
				return cli.Fail(cli.ExitUsage, errors.New("--in: missing (the backup file)"))
			}
			f, err := os.Open(in)
			if err != nil {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("--in: %w", err))
			}
			defer f.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			st, err := controller.Restore(ctx, f, dataDir)
			if err != nil {
				return cli.Fail(cli.ExitUsage, fmt.Errorf("%s: %w", in, err))
			}
			fmt.Printf("restored %d streams, %d records into %s; start it with: controller serve --data-dir %s\n", st.Streams, st.Records, dataDir, dataDir)
			return nil
		},
	}
	dataDirFlag(cmd, &dataDir)
	cmd.Flags().StringVar(&in, "in", "", "backup file to read")
	return cmd
}
