// Package checks is the verification check framework and its check
// families: it decides whether one node or cluster is healthy, one small
// look at a time.
//
// A check is a name, a layer, a scope, a timeout, the checks it depends on
// and a function that looks at one thing. [RunChecks] runs a set of them in
// dependency order, independent ones in parallel, each under its own
// deadline, and turns a check whose dependency did not pass into "skipped"
// with blocked_by naming the root cause, so a report shows one failure
// rather than a dozen symptoms (the shape of tailscale's health Warnables
// with DependsOn). Each family lives whole in its own file (network.go,
// host.go, cluster.go, talos.go, database.go, application.go, custom.go)
// and builds the clients it needs from the generic settings with
// [LazyClient]; a built-in check's layer, scope and dependencies are its
// row in the one metadata table, checks/meta, which diagnostics reads too.
// [BuiltinChecks] lists them and [Catalog] adds the custom ones. The verify
// task in package tasks is what runs them on an agent.
package checks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/checks/meta"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// Env is what a check may know about the node it runs on.
type Env struct {
	Node    string
	Cluster string
	Role    string
	Version string // agent version
	Log     *zap.Logger
	// Settings are the agent's configuration values by their environment
	// name (KUBECONFIG, TS_ROUTES, RETHINKDB_ADDR, ...).
	Settings config.Settings
}

// Scope says where a check runs: on every node, or once per cluster on one
// agent chosen by the controller.
type Scope = meta.Scope

const (
	ScopeNode    = meta.ScopeNode    // network and host checks: every node
	ScopeCluster = meta.ScopeCluster // cluster, database, application: one agent per cluster
)

// Limits of the framework, named and defaulted in one place.
const (
	// DefaultCheckTimeout applies to a check that sets no Timeout.
	DefaultCheckTimeout = 5 * time.Second
	// MaxCheckTimeout caps any check's timeout, custom ones included.
	MaxCheckTimeout = 2 * time.Minute
	// DefaultCheckParallelism is how many checks run at once.
	DefaultCheckParallelism = 4
	// MaxCheckMessageBytes bounds a result's message.
	MaxCheckMessageBytes = 1024
	// MaxCheckValueBytes bounds a result's observed and threshold JSON.
	MaxCheckValueBytes = 4096
	// timeoutGrace is how long past its deadline a check may take to
	// return before the runner gives up on it and reports it unknown.
	timeoutGrace = 250 * time.Millisecond
)

// Check is one verification check.
type Check struct {
	// Name identifies the check in reports and diagnostics rules: a
	// contract, lower_snake_case.
	Name string
	// Layer is the report layer (messages.Layer* or a custom name).
	Layer string
	// Description says in one line what is verified.
	Description string
	// Scope is where the check runs.
	Scope Scope
	// Timeout bounds one run (context deadline); zero means
	// DefaultCheckTimeout.
	Timeout time.Duration
	// DependsOn names the checks that must pass (or warn) before this one
	// is worth running.
	DependsOn []string
	// Run looks at one thing. It must honour ctx and should not panic (a
	// panic is recovered and reported as a failure).
	Run func(ctx context.Context, cx *CheckEnv) Result
	// Source is where a custom check was defined ("FILE:LINE"); empty for
	// built-in checks.
	Source string
}

// Result is what a check's Run returns.
type Result struct {
	Status    string // messages.CheckPass, CheckWarn, CheckFail or CheckUnknown
	Message   string // names the broken thing when not passing
	Observed  any    // encoded as JSON: what was measured
	Threshold any    // encoded as JSON: what it was compared against
}

// Pass, Warn, Fail and Unknown build a Result with a formatted message.
func Pass(format string, a ...any) Result { return result(messages.CheckPass, format, a) }
func Warn(format string, a ...any) Result { return result(messages.CheckWarn, format, a) }
func Fail(format string, a ...any) Result { return result(messages.CheckFail, format, a) }
func Unknown(format string, a ...any) Result {
	return result(messages.CheckUnknown, format, a)
}

// NotApplicable is a pass for a check that has nothing to look at here by
// a fact about the node or cluster, not for want of a setting: a router
// check on a non-router, an operator embedded in the host app, no org_*
// database yet. Its dependents run. A setting left unset is
// [NotConfigured], never this.
func NotApplicable(format string, a ...any) Result {
	r := result(messages.CheckPass, messages.NotApplicablePrefix+format, a)
	r.Observed = messages.NotApplicableObserved()
	return r
}

// NotConfigured is the result of a check that has nothing to look at
// because a setting it needs is unset: never a pass. settings names what
// to set (comma-separated when several would do); the message starts with
// messages.NotConfiguredPrefix. A check the run requires (see
// [Requirement]) fails instead, naming the setting and the requirement.
// Its dependents are not configured either.
func NotConfigured(settings, format string, a ...any) Result {
	r := result(messages.CheckNotConfigured, messages.NotConfiguredPrefix+format, a)
	no := false
	var names []string
	for n := range strings.SplitSeq(settings, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	r.Observed = messages.ObservedNotConfigured{Configured: &no, Settings: names}
	return r
}

func result(status, format string, a []any) Result {
	return Result{Status: status, Message: fmt.Sprintf(format, a...)}
}

// With sets what was observed and the threshold it was held against.
func (r Result) With(observed, threshold any) Result {
	r.Observed, r.Threshold = observed, threshold
	return r
}

// ValidName reports whether s may be a check or layer name (both are
// lower_snake_case: [messages.ValidCheckName], [messages.ValidLayerName]).
func ValidName(s string) bool { return messages.ValidCheckName(s) == nil }

// ValidateChecks checks a set of checks as a whole: names valid and unique,
// dependencies known and of a compatible scope, no cycles.
func ValidateChecks(checks []Check) error {
	byName := make(map[string]*Check, len(checks))
	for i := range checks {
		c := &checks[i]
		if !ValidName(c.Name) {
			return fmt.Errorf("%scheck %q: name: want lower_snake_case, 1 to 63 characters", where(c), c.Name)
		}
		if !ValidName(c.Layer) {
			return fmt.Errorf("%scheck %q: layer: %q is not lower_snake_case, 1 to 63 characters", where(c), c.Name, c.Layer)
		}
		if c.Scope != ScopeNode && c.Scope != ScopeCluster {
			return fmt.Errorf("%scheck %q: scope: %q is neither node nor cluster", where(c), c.Name, c.Scope)
		}
		if c.Run == nil {
			return fmt.Errorf("%scheck %q: no Run function", where(c), c.Name)
		}
		if c.Timeout < 0 || c.Timeout > MaxCheckTimeout {
			return fmt.Errorf("%scheck %q: timeout: %s is not between 0 and %s", where(c), c.Name, c.Timeout, MaxCheckTimeout)
		}
		if prev, dup := byName[c.Name]; dup {
			return fmt.Errorf("%scheck %q: defined twice (also %s)", where(c), c.Name, orBuiltin(prev.Source))
		}
		byName[c.Name] = c
	}
	for i := range checks {
		c := &checks[i]
		for _, d := range c.DependsOn {
			dep, ok := byName[d]
			switch {
			case !ok:
				return fmt.Errorf("%scheck %q: depends_on: unknown check %q", where(c), c.Name, d)
			case d == c.Name:
				return fmt.Errorf("%scheck %q: depends_on: depends on itself", where(c), c.Name)
			case c.Scope == ScopeNode && dep.Scope == ScopeCluster:
				return fmt.Errorf("%scheck %q: depends_on: %q is cluster-scoped and this check is node-scoped", where(c), c.Name, d)
			}
		}
	}
	// Cycles: depth-first search with colours.
	const (
		white = iota
		grey
		black
	)
	colour := make(map[string]int, len(checks))
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch colour[name] {
		case grey:
			i := slices.Index(path, name)
			c := byName[name]
			return fmt.Errorf("%scheck %q: depends_on: cycle %s", where(c), name, strings.Join(append(path[i:], name), " -> "))
		case black:
			return nil
		}
		colour[name] = grey
		for _, d := range byName[name].DependsOn {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		colour[name] = black
		return nil
	}
	for i := range checks {
		if err := visit(checks[i].Name, nil); err != nil {
			return err
		}
	}
	return nil
}

func where(c *Check) string {
	if c.Source == "" {
		return ""
	}
	return c.Source + ": "
}

func orBuiltin(src string) string {
	if src == "" {
		return "built in"
	}
	return src
}

// Selection picks checks out of a catalog.
type Selection struct {
	// Layers keeps checks of these layers; empty keeps every layer.
	Layers []string
	// Scope keeps checks of one scope; empty or "all" keeps both.
	Scope Scope
	// Names keeps only these checks; empty keeps all that match the rest.
	Names []string
	// Exclude leaves these checks out unless a kept check depends on
	// them (unknown names are ignored: they may be custom checks another
	// node has).
	Exclude []string
}

// Select returns the checks of catalog that sel picks, plus every check
// they depend on (whatever its layer), in catalog order. A dependency is
// never left out: a check must not run when what it stands on was not
// looked at. Unknown names are an error.
func Select(catalog []Check, sel Selection) ([]Check, error) {
	index := make(map[string]int, len(catalog))
	for i, c := range catalog {
		index[c.Name] = i
	}
	for _, n := range sel.Names {
		if _, ok := index[n]; !ok {
			return nil, fmt.Errorf("unknown check %q", n)
		}
	}
	if sel.Scope != "" && sel.Scope != "all" && sel.Scope != ScopeNode && sel.Scope != ScopeCluster {
		return nil, fmt.Errorf("unknown scope %q (want node, cluster or all)", sel.Scope)
	}
	keep := make([]bool, len(catalog))
	var add func(i int)
	add = func(i int) {
		if keep[i] {
			return
		}
		keep[i] = true
		for _, d := range catalog[i].DependsOn {
			if j, ok := index[d]; ok {
				add(j)
			}
		}
	}
	for i, c := range catalog {
		if len(sel.Layers) > 0 && !slices.Contains(sel.Layers, c.Layer) {
			continue
		}
		if sel.Scope != "" && sel.Scope != "all" && c.Scope != sel.Scope {
			continue
		}
		if len(sel.Names) > 0 && !slices.Contains(sel.Names, c.Name) {
			continue
		}
		if slices.Contains(sel.Exclude, c.Name) {
			continue
		}
		add(i)
	}
	var out []Check
	for i, c := range catalog {
		if keep[i] {
			out = append(out, c)
		}
	}
	return out, nil
}

// RunOptions tune [RunChecks].
type RunOptions struct {
	// Parallel bounds how many checks run at once; zero means
	// DefaultCheckParallelism.
	Parallel int
	// Require says which checks must run: one of them that is not
	// configured fails. The zero value is [DefaultRequirement] merged with
	// the settings (see [RequirementFrom]).
	Require *Requirement
	// Clients are clients the caller already holds, by the key their check
	// family reads them under with [LazyClient] (e.g. [TailscaleClientKey]);
	// nil values are ignored. A family builds what is not given here from
	// the settings.
	Clients map[string]any
}

// RunChecks runs checks (which must pass [ValidateChecks]; [Select] output
// of a valid catalog does) and returns one result per check, in the order
// given. A check runs once all its dependencies have finished; if one of
// them failed, was unknown or was skipped, the check is skipped with
// BlockedBy naming the root dependency that failed. Each check runs under
// its own timeout; one that overruns it is reported unknown, one that
// panics is reported failed.
func RunChecks(ctx context.Context, env *Env, checks []Check, opts RunOptions) []messages.CheckResult {
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = DefaultCheckParallelism
	}
	cx := newCheckEnv(env, opts.Clients)
	defer cx.close()
	req := opts.Require
	if req == nil {
		r, err := RequirementFrom(cx.Settings, nil)
		if err != nil {
			// A malformed requirement must not pass quietly: every check
			// fails naming the setting.
			out := make([]messages.CheckResult, len(checks))
			for i := range checks {
				out[i] = finish(env, &checks[i], Fail("%v", err), 0)
			}
			return out
		}
		req = &r
	}

	index := make(map[string]int, len(checks))
	for i, c := range checks {
		index[c.Name] = i
	}
	results := make([]messages.CheckResult, len(checks))
	done := make([]chan struct{}, len(checks))
	for i := range done {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range checks {
		wg.Go(func() {
			defer close(done[i])
			c := &checks[i]
			// Wait for every dependency. A dependency that is not in the
			// set is a programming error (Select adds them all): it blocks.
			var roots, missing, unconfigured []string
			for _, d := range c.DependsOn {
				j, ok := index[d]
				if !ok {
					missing = append(missing, d)
					continue
				}
				<-done[j]
				dr := &results[j]
				switch dr.Status {
				case messages.CheckPass, messages.CheckWarn:
				case messages.CheckNotConfigured:
					unconfigured = appendUnique(unconfigured, dr.Name)
				case messages.CheckSkipped:
					if dr.BlockedBy != "" {
						roots = appendUnique(roots, dr.BlockedBy)
					} else {
						roots = appendUnique(roots, dr.Name)
					}
				default:
					roots = appendUnique(roots, dr.Name)
				}
			}
			switch {
			case len(missing) > 0:
				results[i] = finish(env, c, Unknown("depends on %s, which was not run", strings.Join(missing, ", ")), 0)
			case len(roots) > 0:
				r := finish(env, c, Result{
					Status:  messages.CheckSkipped,
					Message: "blocked: " + blockedMessage(roots, results, index),
				}, 0)
				r.BlockedBy = roots[0]
				results[i] = r
			case len(unconfigured) > 0:
				var settings []string
				for _, d := range unconfigured {
					settings = append(settings, notConfiguredSettings(results[index[d]])...)
				}
				r := NotConfigured(strings.Join(settings, ","), "depends on %s, not configured", strings.Join(unconfigured, ", "))
				results[i] = req.apply(c, finish(env, c, r, 0))
			default:
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					results[i] = finish(env, c, Unknown("not started: %v", context.Cause(ctx)), 0)
					return
				}
				results[i] = req.apply(c, runOne(ctx, cx, c))
				<-sem
			}
		})
	}
	wg.Wait()
	return results
}

func appendUnique(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

func blockedMessage(roots []string, results []messages.CheckResult, index map[string]int) string {
	parts := make([]string, 0, len(roots))
	for _, r := range roots {
		if j, ok := index[r]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", r, results[j].Status))
		} else {
			parts = append(parts, r)
		}
	}
	return strings.Join(parts, ", ")
}

// runOne runs one check under its deadline, recovering a panic. A check
// that does not return within its timeout (plus a short grace) is left to
// finish on its own and reported unknown.
func runOne(parent context.Context, cx *CheckEnv, c *Check) messages.CheckResult {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	ctx, cancel := context.WithTimeoutCause(parent, timeout, fmt.Errorf("check %s: timed out after %s", c.Name, timeout))
	defer cancel()
	start := time.Now()
	ch := make(chan Result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				if cx.Log != nil {
					cx.Log.Error("check panicked", zap.String("check", c.Name), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
				}
				ch <- Fail("check panicked: %v", p)
			}
		}()
		ch <- c.Run(ctx, cx)
	}()
	grace := time.NewTimer(timeout + timeoutGrace)
	defer grace.Stop()
	var r Result
	select {
	case r = <-ch:
		if !validStatus(r.Status) {
			r = Fail("check returned status %q (want pass, warn, fail, unknown or not_configured): %s", r.Status, r.Message)
		}
	case <-grace.C:
		r = Unknown("timed out after %s without an answer", timeout)
	case <-parent.Done():
		r = Unknown("stopped: %v", context.Cause(parent))
	}
	return finish(cx.Env, c, r, time.Since(start))
}

func validStatus(s string) bool {
	switch s {
	case messages.CheckPass, messages.CheckWarn, messages.CheckFail, messages.CheckUnknown, messages.CheckNotConfigured:
		return true
	}
	return false
}

// finish turns a Result into the wire form, bounding its sizes.
func finish(env *Env, c *Check, r Result, d time.Duration) messages.CheckResult {
	msg := r.Message
	if msg == "" && r.Status == messages.CheckUnknown {
		msg = "no reason given"
	}
	out := messages.CheckResult{
		Name:       c.Name,
		Layer:      c.Layer,
		Status:     r.Status,
		Passed:     r.Status == messages.CheckPass || r.Status == messages.CheckWarn,
		DurationMS: d.Milliseconds(),
		Message:    Truncate(msg, MaxCheckMessageBytes),
		Observed:   boundedJSON(r.Observed),
		Threshold:  boundedJSON(r.Threshold),
	}
	if env != nil {
		out.Node, out.Cluster = env.Node, env.Cluster
	}
	return out
}

// Truncate shortens s to at most max bytes, ending in "…" when cut, without
// splitting a UTF-8 sequence.
func Truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

func boundedJSON(v any) json.RawMessage {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": "observed value not encodable: " + err.Error()})
	}
	if len(b) > MaxCheckValueBytes {
		b, _ = json.Marshal(messages.ObservedTruncated{Truncated: true, Bytes: len(b)})
	}
	return b
}

// Worst returns the task outcome for a set of check results: fail when any
// check failed or was skipped (a skip has a failed root), warn when any
// warned, was unknown or was not configured (never a pass), else ok.
func Worst(results []messages.CheckResult) messages.Outcome {
	out := messages.OutcomeOK
	for _, r := range results {
		switch r.Status {
		case messages.CheckFail, messages.CheckSkipped:
			return messages.OutcomeFail
		case messages.CheckWarn, messages.CheckUnknown, messages.CheckNotConfigured:
			out = messages.OutcomeWarn
		}
	}
	return out
}

func jsonUnmarshal(b []byte, v any) error {
	if len(b) == 0 {
		return errors.New("empty")
	}
	return json.Unmarshal(b, v)
}

// errText returns err's text, or the context's cause when err is only the
// context's own error, so a timeout names what timed out.
func errText(ctx context.Context, err error) string {
	if err == nil {
		return ""
	}
	return ctxErr(ctx, err).Error()
}

// CheckEnv is what a check sees: the node's [Env] plus what the checks of
// one run share: clients built on first use by their family's
// [LazyClient] (the Kubernetes client, the tailscaled LocalAPI, ...) and
// values one check finds for the checks that depend on it (the RethinkDB
// address). It knows no family: each keeps its clients under its own keys.
// Nothing is built before a check asks for it and everything is dropped
// when the run ends, so an idle agent holds none of it.
type CheckEnv struct {
	*Env

	mu      sync.Mutex
	values  map[string]any
	clients map[string]*lazyClient
	closers []func()
}

// lazyClient is one client of a run, built once.
type lazyClient struct {
	once  sync.Once
	v     any
	err   error
	given bool // passed in RunOptions.Clients rather than built
}

func newCheckEnv(env *Env, given map[string]any) *CheckEnv {
	if env == nil {
		env = &Env{}
	}
	cx := &CheckEnv{Env: env, values: map[string]any{}, clients: map[string]*lazyClient{}}
	for k, v := range given {
		if v == nil {
			continue
		}
		l := &lazyClient{given: true}
		l.once.Do(func() { l.v = v })
		cx.clients[k] = l
	}
	return cx
}

// LazyClient returns the run's client under key: the one the caller gave in
// [RunOptions.Clients], else the one build made on the first call of the
// run (concurrent callers wait for that one build; its error is kept too).
// The func build returns, when not nil, runs when the run ends. given
// reports whether the client came from the caller, for messages.
func LazyClient[T any](cx *CheckEnv, key string, build func() (T, func(), error)) (client T, given bool, err error) {
	cx.mu.Lock()
	l, ok := cx.clients[key]
	if !ok {
		l = &lazyClient{}
		cx.clients[key] = l
	}
	cx.mu.Unlock()
	l.once.Do(func() {
		v, closer, err := build()
		l.v, l.err = v, err
		if closer != nil {
			cx.OnClose(closer)
		}
	})
	if l.err != nil {
		return client, l.given, l.err
	}
	client, ok = l.v.(T)
	if !ok {
		return client, l.given, fmt.Errorf("client %s: holds a %T, the check wants a %T", key, l.v, client)
	}
	return client, l.given, nil
}

// Setting returns a setting, or def when it is unset or empty.
func (cx *CheckEnv) Setting(key, def string) string { return cx.Settings.Get(key, def) }

// Put records a value for the checks that depend on this one.
func (cx *CheckEnv) Put(key string, v any) {
	cx.mu.Lock()
	defer cx.mu.Unlock()
	cx.values[key] = v
}

// Value returns what a check recorded under key with [CheckEnv.Put].
func Value[T any](cx *CheckEnv, key string) (T, bool) {
	cx.mu.Lock()
	defer cx.mu.Unlock()
	v, ok := cx.values[key].(T)
	return v, ok
}

// OnClose registers f to run when the run ends (closing a session).
func (cx *CheckEnv) OnClose(f func()) {
	cx.mu.Lock()
	defer cx.mu.Unlock()
	cx.closers = append(cx.closers, f)
}

func (cx *CheckEnv) close() {
	cx.mu.Lock()
	fs := cx.closers
	cx.closers = nil
	cx.mu.Unlock()
	for _, f := range slices.Backward(fs) {
		f()
	}
}

// Settings helpers: a malformed setting is an error naming the setting, so
// the check reports it rather than quietly using a default.

func settingFloat(cx *CheckEnv, key string, def float64) (float64, error) {
	s := cx.Setting(key, "")
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("setting %s: %q is not a number", key, s)
	}
	return v, nil
}

func settingDuration(cx *CheckEnv, key string, def time.Duration) (time.Duration, error) {
	s := cx.Setting(key, "")
	if s == "" {
		return def, nil
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || v < 0 {
		return 0, fmt.Errorf("setting %s: %q is not a positive duration", key, s)
	}
	return v, nil
}

// settingMillis reads a threshold given in milliseconds.
func settingMillis(cx *CheckEnv, key string, def time.Duration) (time.Duration, error) {
	s := cx.Setting(key, "")
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v < 0 || v > int64(MaxCheckTimeout/time.Millisecond) {
		return 0, fmt.Errorf("setting %s: %q is not a number of milliseconds between 0 and %d", key, s, MaxCheckTimeout/time.Millisecond)
	}
	return time.Duration(v) * time.Millisecond, nil
}

func settingBool(cx *CheckEnv, key string) bool {
	v, _ := strconv.ParseBool(strings.TrimSpace(cx.Setting(key, "false")))
	return v
}

// settingList splits a comma-separated setting, dropping empty items.
func settingList(cx *CheckEnv, key, def string) []string {
	var out []string
	for item := range strings.SplitSeq(cx.Setting(key, def), ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// ctxErr is err, with the context's cause added when err is only the
// context's own error, so a timeout names what timed out; err stays
// unwrappable.
func ctxErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			return fmt.Errorf("%w (%v)", err, cause)
		}
	}
	return err
}
