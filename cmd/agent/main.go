// Command agent runs on every node of a GuildNet deployment: it enrolls with
// the controller once, then heartbeats, runs the tasks the controller sends
// and reports their results.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/cli"
	"github.com/guildnet/metaguildnet/tasks"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	root := &cobra.Command{Use: "agent", Short: "MetaGuildNet node agent", Version: buildinfo.Version}
	root.AddCommand(runCmd(), buildinfo.Command(), stateDirCmd())
	return root
}

func runCmd() *cobra.Command {
	var cfg agent.Config
	var labels []string
	var tokenFile string
	var lf cli.LogFlags
	cmd := &cobra.Command{
		Use:   "run --controller nats://HOST:PORT --name NAME [--token-file FILE]",
		Short: "Enroll (first start, with a join token) and serve the controller",
		Long: "Run the agent. The first start exchanges a join token for a node identity kept in --state-dir;\n" +
			"later starts use that identity and need no token. Pass the token as METAGN_TOKEN (environment,\n" +
			".env.local, .env) or in a file (--token-file): --token puts it in the process list for everyone\n" +
			"on the machine to read. Flags can also be set as METAGN_<FLAG>; task settings (KUBECONFIG,\n" +
			"TS_ROUTES, ...) come from the same places.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tokenOnCommandLine := cmd.Flags().Changed("token")
			vals, err := cli.LoadConfig(cmd)
			if err != nil {
				return err
			}
			if tokenFile != "" {
				if cfg.Token != "" {
					return cli.Fail(cli.ExitUsage, errors.New("--token-file and --token (or METAGN_TOKEN) both given: use one"))
				}
				if cfg.Token, err = readTokenFile(tokenFile); err != nil {
					return cli.Fail(cli.ExitUsage, err)
				}
			}
			cfg.Labels = map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--label %q: want k=v", l))
				}
				cfg.Labels[k] = v
			}
			if cfg.StateDir == "" {
				cfg.StateDir = defaultStateDir(cfg.Name)
			}
			cfg.ControllerFromToken = cfg.ControllerURL == defaultController
			tailnetDefaults(&cfg)
			log, err := lf.Logger()
			if err != nil {
				return err
			}
			defer log.Sync()
			cfg.Log = log.With()
			if tokenOnCommandLine {
				log.Warn("--token on the command line is visible to every user of this machine (ps): pass it as METAGN_TOKEN or with --token-file")
			}
			cfg.Version = buildinfo.Version
			cfg.TrimMemory = true
			cfg.Settings = vals.Settings()
			cfg.Tasks = tasks.Builtin()
			a, err := agent.New(cfg)
			if err != nil {
				return cli.Fail(cli.ExitUsage, err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return cli.Fail(cli.ExitUsage, err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ControllerURL, "controller", defaultController, "controller NATS URL, comma-separated for a cluster (default: the join token's URLs, then "+defaultController+"; with tsnet "+defaultTailnetController+")")
	f.StringVar(&cfg.Token, "token", "", "join token (first start only; prefer METAGN_TOKEN or --token-file: a flag shows in ps)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the join token (first start only)")
	f.StringVar(&cfg.Name, "name", hostname(), "node name (a-z, 0-9, '-', '_')")
	f.StringVar(&cfg.Cluster, "cluster", "", "cluster this node belongs to")
	f.StringVar(&cfg.Role, "role", "", "node role (e.g. controlplane, worker, router)")
	f.StringSliceVar(&labels, "label", nil, "label k=v (repeatable)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "where the node identity and task journal live (default ~/.local/state/metaguildnet-agent/NAME)")
	f.IntVar(&cfg.MaxConcurrent, "max-concurrent", 8, "tasks running at once")
	tailnetFlags(cmd, &cfg.Tailnet)
	f.DurationVar(&cfg.FaultTaskDelay, "fault-task-delay", 0, "testing: delay every task by this much")
	f.MarkHidden("fault-task-delay")
	lf.Add(cmd)
	return cmd
}

// readTokenFile reads a join token from path: the whole file, surrounding
// white space trimmed. The token is not echoed in errors.
func readTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if fi.Size() > 4096 {
		return "", fmt.Errorf("--token-file %s: %d bytes is too large for a join token", path, fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("--token-file %s: want one token on one line", path)
	}
	return tok, nil
}

func hostname() string {
	h, _ := os.Hostname()
	h = strings.ToLower(strings.Split(h, ".")[0])
	return h
}

func defaultStateDir(name string) string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return d + "/metaguildnet-agent/" + name
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.local/state/metaguildnet-agent/" + name
	}
	return "/var/lib/metaguildnet-agent/" + name
}
