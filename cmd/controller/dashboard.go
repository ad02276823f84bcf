package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/guildnet/metaguildnet/internal/cli"
)

func dashboardCmd() *cobra.Command {
	d := &cobra.Command{Use: "dashboard", Short: "The web dashboard on the --http address"}
	var dataDir, ttl string
	var asJSON bool
	login := &cobra.Command{
		Use:   "login [--ttl 10m] [--json]",
		Short: "Print a one-time sign-in link to the dashboard (acting, such as diagnose now, needs a session)",
		Long: "Print a one-time sign-in link to the running controller's web dashboard. The link works once\n" +
			"and expires after --ttl (at most 1h); the controller keeps only its hash. Opening it starts an\n" +
			"operator session in that browser. The token is the last line, for pasting into /login.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl != "" {
				if d, err := time.ParseDuration(ttl); err != nil || d <= 0 {
					return cli.Fail(cli.ExitUsage, fmt.Errorf("--ttl %q: want a positive duration such as 10m", ttl))
				}
			}
			c, ctx, done, err := session(cmd, &dataDir, 10*time.Second)
			if err != nil {
				return err
			}
			defer done()
			rep, err := c.DashboardLogin(ctx, ttl)
			if err != nil {
				return apiErr(err)
			}
			if asJSON {
				return printJSON(rep)
			}
			fmt.Printf("Open this link once, before %s (it signs that browser in):\n%s\n%s\n",
				rep.ExpiresAt.Local().Format(time.Kitchen), rep.URL, rep.Token)
			return nil
		},
	}
	dataDirFlag(login, &dataDir)
	login.Flags().StringVar(&ttl, "ttl", "", "how long the link works (default 10m, at most 1h)")
	login.Flags().BoolVar(&asJSON, "json", false, "print url, token and expires_at as JSON")
	d.AddCommand(login)
	return d
}
