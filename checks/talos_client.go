package checks

// The Talos checks' implementation, through the real talos machinery
// client. The client's package initialisation touches ~9 MiB of the binary;
// the agent hands those pages back once it is up (internal/agent/memory.go),
// so the checks are always built in.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	talos "github.com/siderolabs/talos/pkg/machinery/client"
)

const talosClientKey = "talos.client"

// talosTarget is the run's Talos client and the nodes it asks.
type talosTarget struct {
	c     *talos.Client
	nodes []string
	path  string
}

// ctx returns ctx aimed at nodes (or the endpoints when none are set).
func (t *talosTarget) ctx(ctx context.Context, nodes []string) context.Context {
	if len(nodes) == 0 {
		return ctx
	}
	return talos.WithNodes(ctx, nodes...)
}

func runTalos(ctx context.Context, cx *CheckEnv, path string, which talosCheck) Result {
	t, err := talosClient(ctx, cx, path)
	if err != nil {
		return Fail("%v", err)
	}
	switch which {
	case talosVersion:
		return checkTalosVersion(ctx, cx, t)
	case talosEtcdMembers:
		return checkTalosEtcdMembers(ctx, cx, t)
	case talosServices:
		return checkTalosServices(ctx, cx, t)
	}
	return Unknown("no such Talos check %d", which)
}

// talosClient builds the run's client once. New dials lazily, so this
// does no I/O beyond reading the talosconfig.
func talosClient(ctx context.Context, cx *CheckEnv, path string) (*talosTarget, error) {
	t, _, err := LazyClient(cx, talosClientKey, func() (*talosTarget, func(), error) {
		return newTalosClient(ctx, cx, path)
	})
	return t, err
}

func newTalosClient(ctx context.Context, cx *CheckEnv, path string) (*talosTarget, func(), error) {
	opts := []talos.OptionFunc{talos.WithConfigFromFile(path)}
	if name := cx.Settings.Get("TALOS_CONTEXT", ""); name != "" {
		opts = append(opts, talos.WithContextName(name))
	}
	c, err := talos.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("Talos client from %s: %w", path, err)
	}
	t := &talosTarget{c: c, path: path}
	if s := cx.Settings.Get("TALOS_NODES", ""); s != "" {
		for n := range strings.SplitSeq(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				t.nodes = append(t.nodes, n)
			}
		}
	} else if cc := c.GetConfigContext(); cc != nil {
		t.nodes = slices.Clone(cc.Nodes)
	}
	return t, func() { c.Close() }, nil
}

// nodeErrors splits a talos client error into per-node messages.
func nodeErrors(ctx context.Context, err error) []string {
	if err == nil {
		return nil
	}
	// The client gathers node errors in a go-multierror, which lists them
	// through WrappedErrors.
	var me interface{ WrappedErrors() []error }
	if errors.As(err, &me) {
		out := make([]string, 0, len(me.WrappedErrors()))
		for _, e := range me.WrappedErrors() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{errText(ctx, err)}
}

func checkTalosVersion(ctx context.Context, cx *CheckEnv, t *talosTarget) Result {
	resp, err := t.c.Version(t.ctx(ctx, t.nodes))
	type nodeVersion struct {
		Node    string `json:"node"`
		Version string `json:"version"`
	}
	var vs []nodeVersion
	tags := map[string]bool{}
	if resp != nil {
		for _, m := range resp.Messages {
			nv := nodeVersion{Node: m.GetMetadata().GetHostname(), Version: m.GetVersion().GetTag()}
			if nv.Node == "" {
				nv.Node = "endpoint"
			}
			vs = append(vs, nv)
			tags[nv.Version] = true
		}
	}
	obs := map[string]any{"nodes": vs}
	if errs := nodeErrors(ctx, err); len(errs) > 0 {
		return Fail("apid not answering Version: %s", strings.Join(errs, "; ")).With(obs, map[string]any{"nodes": t.nodes})
	}
	if len(vs) == 0 {
		return Fail("apid answered Version with no node")
	}
	desc := make([]string, len(vs))
	for i, v := range vs {
		desc[i] = v.Node + " " + v.Version
	}
	if len(tags) > 1 {
		return Warn("Talos versions differ: %s", strings.Join(desc, ", ")).With(obs, nil)
	}
	return Pass("apid answers on %d nodes: %s", len(vs), strings.Join(desc, ", ")).With(obs, nil)
}

func checkTalosEtcdMembers(ctx context.Context, cx *CheckEnv, t *talosTarget) Result {
	// etcd runs on control-plane nodes only: ask METAGN_TALOS_CP_NODES, else
	// the endpoints (a control-plane address in GuildNet's flow).
	nodes := settingList(cx, "METAGN_TALOS_CP_NODES", "")
	resp, err := t.c.EtcdMemberList(t.ctx(ctx, nodes), &machineapi.EtcdMemberListRequest{})
	if errs := nodeErrors(ctx, err); len(errs) > 0 {
		return Fail("etcd member list: %s", strings.Join(errs, "; "))
	}
	var members, learners []string
	for _, m := range resp.GetMessages() {
		for _, mem := range m.GetMembers() {
			name := mem.GetHostname()
			if name == "" {
				name = fmt.Sprintf("%x", mem.GetId())
			}
			if slices.Contains(members, name) {
				continue
			}
			members = append(members, name)
			if mem.GetIsLearner() {
				learners = append(learners, name)
			}
		}
	}
	obs := map[string]any{"members": members, "learners": learners}
	switch {
	case len(members) == 0:
		return Fail("etcd reports no members (not bootstrapped?)").With(obs, nil)
	case len(learners) > 0:
		return Warn("etcd members still learners: %s", strings.Join(learners, ", ")).With(obs, nil)
	}
	return Pass("etcd has %d members: %s", len(members), strings.Join(members, ", ")).With(obs, nil)
}

// DefaultTalosStartGrace is how long a Talos service may stay in a
// transitional state (Initialized, Preparing, Waiting, Starting) and count
// as coming up (a warning) before it counts as stuck (a failure); setting
// METAGN_TALOS_START_GRACE. Talos' own health check waits the same way:
// it retries until services are Running and healthy, and gives up only at
// its timeout.
const DefaultTalosStartGrace = 5 * time.Minute

// talosTransitional are the service states on the way to Running.
var talosTransitional = []string{"Initialized", "Preparing", "Waiting", "Starting"}

func checkTalosServices(ctx context.Context, cx *CheckEnv, t *talosTarget) Result {
	grace, err := settingDuration(cx, "METAGN_TALOS_START_GRACE", DefaultTalosStartGrace)
	if err != nil {
		return Fail("%v", err)
	}
	resp, err := t.c.ServiceList(t.ctx(ctx, t.nodes))
	errs := nodeErrors(ctx, err)
	var bad, coming []string
	total := 0
	for _, m := range resp.GetMessages() {
		node := m.GetMetadata().GetHostname()
		if node == "" {
			node = "endpoint"
		}
		for _, s := range m.GetServices() {
			total++
			h := s.GetHealth()
			switch {
			case slices.Contains(talosTransitional, s.GetState()):
				// Coming up, or stuck: the time since its last event says.
				since := time.Duration(-1)
				if evs := s.GetEvents().GetEvents(); len(evs) > 0 && evs[len(evs)-1].GetTs() != nil {
					since = time.Since(evs[len(evs)-1].GetTs().AsTime())
				}
				switch {
				case since < 0:
					coming = append(coming, fmt.Sprintf("%s/%s %s", node, s.GetId(), s.GetState()))
				case since <= grace:
					coming = append(coming, fmt.Sprintf("%s/%s %s for %s", node, s.GetId(), s.GetState(), since.Round(time.Second)))
				default:
					bad = append(bad, fmt.Sprintf("%s/%s stuck %s for %s (more than %s)", node, s.GetId(), s.GetState(), since.Round(time.Second), grace))
				}
			case s.GetState() != "Running" && s.GetState() != "Finished":
				bad = append(bad, fmt.Sprintf("%s/%s %s", node, s.GetId(), s.GetState()))
			case h != nil && !h.GetUnknown() && !h.GetHealthy():
				bad = append(bad, fmt.Sprintf("%s/%s unhealthy (%s)", node, s.GetId(), orNone(h.GetLastMessage())))
			}
		}
	}
	obs := map[string]any{"services": total, "problems": len(bad) + len(errs), "coming_up": len(coming)}
	thr := map[string]any{"start_grace_s": grace.Seconds()}
	if len(errs) > 0 || len(bad) > 0 {
		return Fail("Talos services: %s", strings.Join(slices.Concat(errs, bad, coming), "; ")).With(obs, thr)
	}
	if total == 0 {
		return Fail("Talos listed no services")
	}
	if len(coming) > 0 {
		return Warn("Talos services coming up: %s", strings.Join(coming, "; ")).With(obs, thr)
	}
	return Pass("%d Talos services up", total).With(obs, nil)
}
