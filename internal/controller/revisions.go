package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/messages"
)

// Spec revisions (docs/ROLLOUT.md): every spec setup applies or a rollout
// rolls out, numbered, with its canonical hash, in KV mgn_spec_revisions.
// Keys: r.NNNNNNNNNN (a messages.SpecRevision), h.HASH (the revision
// number of a hash), "latest" (the newest number), "applied" (the revision
// last applied in full).

const specRevisionsBucket = "mgn_spec_revisions"

type revisions struct {
	kv jetstream.KeyValue
	mu sync.Mutex // one writer of "latest" at a time in this controller
}

func revKey(n int64) string { return fmt.Sprintf("r.%010d", n) }

func (rv *revisions) number(ctx context.Context, key string) (int64, error) {
	e, err := rv.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spec revisions: read %s: %w", key, err)
	}
	n, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("spec revisions: %s: %w", key, err)
	}
	return n, nil
}

// record stores spec (defaults filled) as a revision and returns its
// number: the existing one when a revision with the same hash exists.
func (rv *revisions) record(ctx context.Context, spec messages.Fleet, source string) (int64, string, error) {
	fleet.Defaults(&spec)
	hash := fleet.Hash(&spec)
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if n, err := rv.number(ctx, "h."+hash); err != nil || n > 0 {
		return n, hash, err
	}
	latest, err := rv.number(ctx, "latest")
	if err != nil {
		return 0, "", err
	}
	n := latest + 1
	b, err := json.Marshal(messages.SpecRevision{Revision: n, Hash: hash, Source: source, Created: time.Now().UTC(), Spec: spec})
	if err != nil {
		return 0, "", err
	}
	if _, err := rv.kv.Put(ctx, revKey(n), b); err != nil {
		return 0, "", fmt.Errorf("spec revisions: store %d: %w", n, err)
	}
	for k, v := range map[string]string{"h." + hash: strconv.FormatInt(n, 10), "latest": strconv.FormatInt(n, 10)} {
		if _, err := rv.kv.PutString(ctx, k, v); err != nil {
			return 0, "", fmt.Errorf("spec revisions: store %s: %w", k, err)
		}
	}
	return n, hash, nil
}

// markApplied makes revision n the applied one.
func (rv *revisions) markApplied(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	_, err := rv.kv.PutString(ctx, "applied", strconv.FormatInt(n, 10))
	return err
}

// markAppliedHash makes the revision of a hash the applied one.
func (rv *revisions) markAppliedHash(ctx context.Context, hash string) error {
	n, err := rv.number(ctx, "h."+hash)
	if err != nil {
		return err
	}
	return rv.markApplied(ctx, n)
}

func (rv *revisions) applied(ctx context.Context) (int64, error) { return rv.number(ctx, "applied") }

func (rv *revisions) get(ctx context.Context, n int64) (messages.SpecRevision, error) {
	e, err := rv.kv.Get(ctx, revKey(n))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return messages.SpecRevision{}, messages.Errorf(messages.CodeNotFound, "no spec revision %d", n)
	}
	if err != nil {
		return messages.SpecRevision{}, fmt.Errorf("spec revision %d: %w", n, err)
	}
	var r messages.SpecRevision
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return r, fmt.Errorf("spec revision %d: %w", n, err)
	}
	return r, nil
}

// diff compares two revisions field by field, per cluster.
func (rv *revisions) diff(ctx context.Context, from, to int64) (messages.RolloutDiffReply, error) {
	a, err := rv.get(ctx, from)
	if err != nil {
		return messages.RolloutDiffReply{}, err
	}
	b, err := rv.get(ctx, to)
	if err != nil {
		return messages.RolloutDiffReply{}, err
	}
	rows := specDiff(a.Spec, b.Spec)
	if len(rows) > messages.MaxRolloutDiffRows {
		rows = rows[:messages.MaxRolloutDiffRows]
	}
	return messages.RolloutDiffReply{V: messages.Version, From: from, To: to, FromHash: a.Hash, ToHash: b.Hash, Rows: rows}, nil
}

// specDiff lists the fields that differ between two specs: the spec's own
// fields under cluster "", each cluster's flattened fields under its name
// (a cluster only in one of them: one row, field "", "absent").
func specDiff(a, b messages.Fleet) []messages.RolloutDiffRow {
	var rows []messages.RolloutDiffRow
	top := func(f messages.Fleet) map[string]string {
		f.Clusters = nil
		return flatten(f)
	}
	rows = append(rows, diffMaps("", top(a), top(b))...)
	ca, cb := map[string]messages.FleetCluster{}, map[string]messages.FleetCluster{}
	var names []string
	for _, c := range a.Clusters {
		ca[c.Name] = c
		names = append(names, c.Name)
	}
	for _, c := range b.Clusters {
		cb[c.Name] = c
		if _, ok := ca[c.Name]; !ok {
			names = append(names, c.Name)
		}
	}
	for _, n := range names {
		x, inA := ca[n]
		y, inB := cb[n]
		switch {
		case !inA:
			rows = append(rows, messages.RolloutDiffRow{Cluster: n, Field: "", From: "", To: "(added)"})
		case !inB:
			rows = append(rows, messages.RolloutDiffRow{Cluster: n, Field: "", From: "(present)", To: ""})
		default:
			rows = append(rows, diffMaps(n, clusterFields(x), clusterFields(y))...)
		}
	}
	return rows
}

// clusterFields flattens a cluster; nodes are keyed by name, not index, so
// a node added in the middle shows as one change.
func clusterFields(c messages.FleetCluster) map[string]string {
	nodes := c.Nodes
	c.Nodes = nil
	m := flatten(c)
	delete(m, "name")
	for _, n := range nodes {
		for k, v := range flatten(n) {
			if k == "name" {
				continue
			}
			m["nodes["+n.Name+"]."+k] = v
		}
		if _, ok := m["nodes["+n.Name+"].role"]; !ok {
			m["nodes["+n.Name+"]"] = `"` + n.Name + `"`
		}
	}
	return m
}

// flatten maps dotted paths to JSON leaves; lists are leaves.
func flatten(v any) map[string]string {
	b, _ := json.Marshal(v)
	var x any
	json.Unmarshal(b, &x)
	out := map[string]string{}
	var walk func(prefix string, x any)
	walk = func(prefix string, x any) {
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			for k, v := range m {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, v)
			}
			return
		}
		if m, ok := x.(map[string]any); ok && len(m) == 0 {
			return
		}
		j, _ := json.Marshal(x)
		out[prefix] = string(j)
	}
	walk("", x)
	return out
}

func diffMaps(cluster string, a, b map[string]string) []messages.RolloutDiffRow {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var rows []messages.RolloutDiffRow
	for k := range keys {
		if a[k] != b[k] {
			rows = append(rows, messages.RolloutDiffRow{Cluster: cluster, Field: k, From: a[k], To: b[k]})
		}
	}
	slices.SortFunc(rows, func(x, y messages.RolloutDiffRow) int { return strings.Compare(x.Field, y.Field) })
	return rows
}
