package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics/report"
	"github.com/guildnet/metaguildnet/messages"
)

func age(ms int64, seen time.Time) string {
	if seen.IsZero() {
		return "never"
	}
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.1fs ago", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds ago", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return d.Round(time.Minute).String() + " ago"
	}
}

var stateMark = map[string]string{messages.StateOnline: "●", messages.StateStale: "◐", messages.StateOffline: "○"}

// printStatus prints the fleet grouped by cluster (nodes arrive sorted by
// cluster, then name), each cluster headed by its status line.
func printStatus(w io.Writer, st messages.StatusReply) {
	if len(st.Nodes) == 0 {
		fmt.Fprintln(w, "no nodes enrolled yet: create a token with `controller token create` and start an agent with it")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	cluster := "\x00"
	for _, n := range st.Nodes {
		if n.Cluster != cluster {
			cluster = n.Cluster
			fmt.Fprintf(tw, "\nCLUSTER %s  %s\n", report.ClusterName(cluster), clusterLine(st.Clusters, cluster))
			fmt.Fprintln(tw, "  NODE\tSTATE\tROLE\tHEARTBEAT\tLAYERS\tTAILNET\tVERSION\tADDRESSES\tLABELS\t")
		}
		labels := make([]string, 0, len(n.Labels))
		for k, v := range n.Labels {
			labels = append(labels, k+"="+v)
		}
		addrs := n.Addresses
		if len(addrs) > 3 {
			addrs = append(addrs[:3:3], fmt.Sprintf("+%d", len(n.Addresses)-3))
		}
		fmt.Fprintf(tw, "  %s\t%s %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", n.Name, stateMark[n.State], n.State, dash(n.Role),
			age(n.AgeMS, n.LastSeen), report.LayerSummary(n.Layers), tailnetSummary(n.Tailnet), dash(n.AgentVersion), dash(strings.Join(addrs, ",")), dash(strings.Join(labels, ",")))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d nodes: %d online, %d stale, %d offline (heartbeat every %s)\n",
		len(st.Nodes), st.Summary.Online, st.Summary.Stale, st.Summary.Offline, st.HeartbeatInterval)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var outcomeMark = map[messages.Outcome]string{messages.OutcomeOK: "✓", messages.OutcomeWarn: "⚠", messages.OutcomeFail: "✗", messages.OutcomeUnknown: "?"}

func printRun(w io.Writer, r runOutput) {
	fmt.Fprintf(w, "task %s: %s on %s (%d nodes)\n", r.TaskID, r.Kind, r.Target, len(r.Results))
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tOUTCOME\tDURATION\tDETAIL\t")
	for _, res := range r.Results {
		detail := res.Reason
		if len(res.Output) > 0 && string(res.Output) != "null" {
			if detail != "" {
				detail += ": "
			}
			detail += string(res.Output)
		}
		if len(detail) > 90 {
			detail = detail[:87] + "..."
		}
		fmt.Fprintf(tw, "  %s\t%s %s\t%dms\t%s\t\n", res.Node, outcomeMark[res.Outcome], res.Outcome, res.DurationMS, detail)
	}
	tw.Flush()
}

// clusterLine is a cluster's status in the fleet view: "✗ unhealthy
// network✓ host✓ cluster✗ (verified 2026-11-29 21:04:05Z)", from the last
// verification that covered it.
func clusterLine(cs []messages.ClusterStatus, name string) string {
	i := slices.IndexFunc(cs, func(c messages.ClusterStatus) bool { return c.Name == name })
	if i < 0 || cs[i].OverallStatus == "" {
		return "? not verified yet"
	}
	c := cs[i]
	return fmt.Sprintf("%s %s  %s  (verified %s)", report.Mark(c.OverallStatus), c.OverallStatus, report.LayerSummary(c.Layers),
		c.LastVerified.UTC().Format("2006-01-02 15:04:05Z07:00"))
}
