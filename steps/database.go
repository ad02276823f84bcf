package steps

// Database family: RethinkDB's StatefulSet and Service, as GuildNet runs
// them, and the GuildNet databases with their meta tables, created with
// rethinkdb-go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/guildnet/metaguildnet/messages"
)

// RethinkDB defaults, as GuildNet has them.
const (
	DefaultRethinkDBNamespace = "default"
	DefaultRethinkDBService   = "rethinkdb"
	DefaultRethinkDBPort      = 28015
	DefaultRethinkDBImage     = "rethinkdb:2.4.4"
	DefaultRethinkDBUser      = "admin"
	rdbAdminPort              = 8080
	rdbClusterPort            = 29015
	rdbTimeout                = 10 * time.Second // connect and each query
)

// RethinkDBMetaTables are the tables every GuildNet database holds.
var RethinkDBMetaTables = []string{"_schemas", "_audit", "_info"}

var (
	appGVRStatefulSets = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}
	appGVRDeployments  = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	appGVRServices     = schema.GroupVersionResource{Version: "v1", Resource: "services"}
)

// DatabaseSteps are the database family, in run order.
func DatabaseSteps() []Step {
	return []Step{
		{
			Name:        "rethinkdb_service",
			Layer:       messages.LayerDatabase,
			Description: "RethinkDB's StatefulSet and Service rethinkdb (port client 28015, app=rethinkdb), ready",
			Scope:       ScopeCluster,
			Critical:    true,
			Prereqs:     appKubePrereq,
			Plan:        planRethinkDBService,
			Apply:       applyRethinkDBService,
			Undo:        appUndoStep(rethinkDBObjects),
		},
		{
			Name:        "rethinkdb_databases",
			Layer:       messages.LayerDatabase,
			Description: "the spec's databases exist with the meta tables _schemas, _audit and _info",
			Scope:       ScopeCluster,
			After:       []string{"rethinkdb_service"},
			Critical:    true,
			Plan:        planRethinkDBDatabases,
			Apply:       applyRethinkDBDatabases,
			Undo:        undoRethinkDBDatabases,
		},
	}
}

func rdbSpec(env *Env) messages.FleetRethinkDB {
	s := env.Spec.Application.RethinkDB
	if s.Namespace == "" {
		s.Namespace = DefaultRethinkDBNamespace
	}
	if s.Service == "" {
		s.Service = DefaultRethinkDBService
	}
	if s.Port == 0 {
		s.Port = DefaultRethinkDBPort
	}
	if s.Image == "" {
		s.Image = DefaultRethinkDBImage
	}
	return s
}

// rethinkDBObjects are the Service and StatefulSet GuildNet runs.
func rethinkDBObjects(env *Env) ([]appObject, error) {
	s := rdbSpec(env)
	if s.Port < 1 || s.Port > 65535 {
		return nil, Configf("set application.rethinkdb.port to 1-65535", "application.rethinkdb.port %d is not a port", s.Port)
	}
	labels := map[string]any{"app": "rethinkdb", "app.kubernetes.io/managed-by": appFieldManager}
	svc := appU(map[string]any{
		"apiVersion": "v1", "kind": "Service",
		"metadata": map[string]any{"name": s.Service, "namespace": s.Namespace, "labels": labels},
		"spec": map[string]any{
			// GuildNet: LoadBalancer, with the NodePort as fallback.
			"type":     "LoadBalancer",
			"selector": map[string]any{"app": "rethinkdb"},
			"ports": []any{
				map[string]any{"name": "client", "port": int64(s.Port), "targetPort": int64(DefaultRethinkDBPort), "protocol": "TCP"},
				map[string]any{"name": "admin", "port": int64(rdbAdminPort), "targetPort": int64(rdbAdminPort), "protocol": "TCP"},
			},
		},
	})
	sts := appU(map[string]any{
		"apiVersion": "apps/v1", "kind": "StatefulSet",
		"metadata": map[string]any{"name": "rethinkdb", "namespace": s.Namespace, "labels": labels},
		"spec": map[string]any{
			"serviceName": s.Service,
			"replicas":    int64(1),
			"selector":    map[string]any{"matchLabels": map[string]any{"app": "rethinkdb"}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"app": "rethinkdb"}},
				"spec": map[string]any{
					"containers": []any{map[string]any{
						"name": "rethinkdb", "image": s.Image,
						"args": []any{"rethinkdb", "--bind", "all", "--directory", "/data"},
						"ports": []any{
							map[string]any{"name": "client", "containerPort": int64(DefaultRethinkDBPort)},
							map[string]any{"name": "cluster", "containerPort": int64(rdbClusterPort)},
							map[string]any{"name": "admin", "containerPort": int64(rdbAdminPort)},
						},
						"volumeMounts": []any{map[string]any{"name": "data", "mountPath": "/data"}},
					}},
					"volumes": []any{map[string]any{"name": "data", "emptyDir": map[string]any{}}},
				},
			},
		},
	})
	return []appObject{{GVR: appGVRServices, Obj: svc}, {GVR: appGVRStatefulSets, Obj: sts}}, nil
}

func planRethinkDBService(ctx context.Context, env *Env) (Plan, error) {
	return appPlanStep(ctx, env, rethinkDBObjects)
}

func applyRethinkDBService(ctx context.Context, env *Env) (Applied, error) {
	return appApplyStep(ctx, env, rethinkDBObjects)
}

// rdbAddress is where setup dials RethinkDB: the spec's addr, else
// setting RETHINKDB_ADDR, else the Service's ClusterIP and client port.
func rdbAddress(ctx context.Context, env *Env) (string, error) {
	s := rdbSpec(env)
	withPort := func(a, what string) (string, error) {
		if _, _, err := net.SplitHostPort(a); err == nil {
			return a, nil
		}
		if strings.Contains(a, " ") || a == "" {
			return "", Configf("set "+what+" to HOST:PORT", "%s %q is not an address", what, a)
		}
		return net.JoinHostPort(a, strconv.Itoa(DefaultRethinkDBPort)), nil
	}
	if s.Addr != "" {
		return withPort(s.Addr, "application.rethinkdb.addr")
	}
	if a := env.Settings.Get("RETHINKDB_ADDR", ""); a != "" {
		return withPort(a, "setting RETHINKDB_ADDR")
	}
	dyn, err := appKube(env)
	if err != nil {
		return "", err
	}
	rctx, cancel := context.WithTimeout(ctx, appKubeTimeout)
	defer cancel()
	svc, err := dyn.Resource(appGVRServices).Namespace(s.Namespace).Get(rctx, s.Service, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("application.rethinkdb.addr and RETHINKDB_ADDR unset, reading Service %s/%s: %w", s.Namespace, s.Service, err)
	}
	ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP")
	if ip == "" || ip == "None" {
		return "", Configf("set application.rethinkdb.addr", "Service %s/%s has no ClusterIP", s.Namespace, s.Service)
	}
	return net.JoinHostPort(ip, strconv.Itoa(s.Port)), nil
}

// rdbSession connects with the spec's user and password (passwordFrom,
// else setting RETHINKDB_PASS).
func rdbSession(ctx context.Context, env *Env) (*r.Session, string, error) {
	addr, err := rdbAddress(ctx, env)
	if err != nil {
		return nil, "", err
	}
	s := rdbSpec(env)
	user := s.User
	if user == "" {
		user = env.Settings.Get("RETHINKDB_USER", DefaultRethinkDBUser)
	}
	pass := env.Settings.Get("RETHINKDB_PASS", "")
	if s.PasswordFrom != "" {
		if env.Secret == nil {
			return nil, "", Configf("run the step on an agent", "application.rethinkdb.passwordFrom: no secret resolver on this node")
		}
		if pass, err = env.Secret(s.PasswordFrom); err != nil {
			return nil, "", Configf("make application.rethinkdb.passwordFrom resolvable on the controlplane agent",
				"application.rethinkdb.passwordFrom: %w", err)
		}
	}
	timeout := rdbTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl), time.Millisecond))
	}
	sess, err := r.Connect(r.ConnectOpts{Address: addr, Username: user, Password: pass,
		Timeout: timeout, ReadTimeout: rdbTimeout, WriteTimeout: rdbTimeout, MaxOpen: 1})
	if err != nil {
		return nil, addr, rdbClass(err, fmt.Sprintf("connecting to RethinkDB at %s as %s", addr, user))
	}
	return sess, addr, nil
}

// rdbRun runs a read term with a per-query deadline and decodes all rows.
func rdbRun(ctx context.Context, sess *r.Session, t r.Term, out any) error {
	qctx, cancel := context.WithTimeout(ctx, rdbTimeout)
	defer cancel()
	cur, err := t.Run(sess, r.RunOpts{Context: qctx})
	if err != nil {
		return err
	}
	defer cur.Close()
	return cur.All(out)
}

func rdbWrite(ctx context.Context, sess *r.Session, t r.Term) error {
	qctx, cancel := context.WithTimeout(ctx, rdbTimeout)
	defer cancel()
	_, err := t.RunWrite(sess, r.RunOpts{Context: qctx})
	return err
}

// rdbMissing is what the spec wants and RethinkDB lacks: whole databases,
// and tables of databases that exist.
type rdbMissing struct {
	DBs    []string `json:"dbs,omitempty"`
	Tables []string `json:"tables,omitempty"` // db.table
}

func (m rdbMissing) empty() bool { return len(m.DBs) == 0 && len(m.Tables) == 0 }

func (m rdbMissing) String() string {
	var parts []string
	for _, d := range m.DBs {
		parts = append(parts, "create database "+d+" ("+strings.Join(RethinkDBMetaTables, ", ")+")")
	}
	if len(m.Tables) > 0 {
		parts = append(parts, "create tables "+strings.Join(m.Tables, ", "))
	}
	return strings.Join(parts, "; ")
}

func rdbValidate(env *Env) ([]string, error) {
	dbs := rdbSpec(env).Databases
	for i, d := range dbs {
		if !rdbValidName(d) {
			return nil, Configf("use A-Z, a-z, 0-9, _ and - only (GuildNet's form is org_<org>__<db>)",
				"application.rethinkdb.databases[%d] %q is not a valid RethinkDB database name", i, d)
		}
	}
	return dbs, nil
}

func rdbValidName(s string) bool {
	if s == "" || len(s) > 127 || s == "rethinkdb" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// rdbObserve lists what is missing.
func rdbObserve(ctx context.Context, sess *r.Session, want []string) (rdbMissing, error) {
	var m rdbMissing
	var have []string
	if err := rdbRun(ctx, sess, r.DBList(), &have); err != nil {
		return m, rdbClass(err, "r.dbList()")
	}
	for _, d := range want {
		if !slices.Contains(have, d) {
			m.DBs = append(m.DBs, d)
			continue
		}
		var tables []string
		if err := rdbRun(ctx, sess, r.DB(d).TableList(), &tables); err != nil {
			return m, rdbClass(err, fmt.Sprintf("r.db(%q).tableList()", d))
		}
		for _, t := range RethinkDBMetaTables {
			if !slices.Contains(tables, t) {
				m.Tables = append(m.Tables, d+"."+t)
			}
		}
	}
	return m, nil
}

func planRethinkDBDatabases(ctx context.Context, env *Env) (Plan, error) {
	want, err := rdbValidate(env)
	if err != nil {
		return Plan{}, err
	}
	if len(want) == 0 {
		return Plan{Action: messages.ActionUnchanged, Diff: "no databases in the spec"}, nil
	}
	sess, _, err := rdbSession(ctx, env)
	if err != nil {
		return Plan{}, err
	}
	defer sess.Close()
	m, err := rdbObserve(ctx, sess, want)
	if err != nil {
		return Plan{}, err
	}
	switch {
	case m.empty():
		return Plan{Action: messages.ActionUnchanged, Diff: "no changes"}, nil
	case len(m.DBs) > 0:
		return Plan{Action: messages.ActionCreate, Diff: m.String()}, nil
	}
	return Plan{Action: messages.ActionUpdate, Diff: m.String()}, nil
}

func applyRethinkDBDatabases(ctx context.Context, env *Env) (Applied, error) {
	want, err := rdbValidate(env)
	if err != nil {
		return Applied{}, err
	}
	if len(want) == 0 {
		return Applied{Action: messages.ActionUnchanged, Diff: "no databases in the spec"}, nil
	}
	sess, addr, err := rdbSession(ctx, env)
	if err != nil {
		return Applied{}, err
	}
	defer sess.Close()
	m, err := rdbObserve(ctx, sess, want)
	if err != nil {
		return Applied{}, err
	}
	if m.empty() {
		return Applied{Action: messages.ActionUnchanged, Diff: "no changes"}, nil
	}
	action := messages.ActionUpdate
	if len(m.DBs) > 0 {
		action = messages.ActionCreate
	}
	done := rdbMissing{}
	out := func(err error) (Applied, error) {
		a := Applied{Action: action, Diff: m.String()}
		if !done.empty() {
			a.Undo = done
		}
		return a, err
	}
	for _, d := range m.DBs {
		if err := rdbWrite(ctx, sess, r.DBCreate(d)); err != nil {
			return out(rdbClass(err, fmt.Sprintf("r.dbCreate(%q) at %s", d, addr)))
		}
		done.DBs = append(done.DBs, d)
		for _, t := range RethinkDBMetaTables {
			if err := rdbWrite(ctx, sess, r.DB(d).TableCreate(t)); err != nil {
				return out(rdbClass(err, fmt.Sprintf("r.db(%q).tableCreate(%q) at %s", d, t, addr)))
			}
		}
	}
	for _, dt := range m.Tables {
		d, t, _ := strings.Cut(dt, ".")
		if err := rdbWrite(ctx, sess, r.DB(d).TableCreate(t)); err != nil {
			return out(rdbClass(err, fmt.Sprintf("r.db(%q).tableCreate(%q) at %s", d, t, addr)))
		}
		done.Tables = append(done.Tables, dt)
	}
	return out(nil)
}

// undoRethinkDBDatabases drops only what the run created: its databases,
// and its tables in databases that were there before.
func undoRethinkDBDatabases(ctx context.Context, env *Env, raw json.RawMessage) error {
	u, err := decodeRDBUndo(raw, rdbSpec(env).Databases)
	if err != nil || u.empty() {
		return err
	}
	sess, addr, err := rdbSession(ctx, env)
	if err != nil {
		return err
	}
	defer sess.Close()
	for _, dt := range slices.Backward(u.Tables) {
		d, t, _ := strings.Cut(dt, ".")
		if err := rdbWrite(ctx, sess, r.DB(d).TableDrop(t)); err != nil && !rdbGone(err) {
			return rdbClass(err, fmt.Sprintf("r.db(%q).tableDrop(%q) at %s", d, t, addr))
		}
	}
	for _, d := range slices.Backward(u.DBs) {
		if err := rdbWrite(ctx, sess, r.DBDrop(d)); err != nil && !rdbGone(err) {
			return rdbClass(err, fmt.Sprintf("r.dbDrop(%q) at %s", d, addr))
		}
	}
	return nil
}

// decodeRDBUndo decodes an undo record and checks that it names only
// the spec's databases and their meta tables: undo drops nothing else.
func decodeRDBUndo(raw json.RawMessage, spec []string) (rdbMissing, error) {
	var u rdbMissing
	if len(raw) == 0 || string(raw) == "null" {
		return u, nil
	}
	if err := json.Unmarshal(raw, &u); err != nil {
		return u, fmt.Errorf("undo record: %w", err)
	}
	if len(u.DBs) > len(spec) || len(u.Tables) > len(spec)*len(RethinkDBMetaTables) {
		return u, fmt.Errorf("undo record names %d databases and %d tables, more than the spec has", len(u.DBs), len(u.Tables))
	}
	for _, d := range u.DBs {
		if !slices.Contains(spec, d) {
			return u, fmt.Errorf("undo record names database %q, which is not in the spec", d)
		}
	}
	for _, dt := range u.Tables {
		d, t, _ := strings.Cut(dt, ".")
		if !slices.Contains(spec, d) || !slices.Contains(RethinkDBMetaTables, t) {
			return u, fmt.Errorf("undo record names table %q, not a meta table of a spec database", dt)
		}
	}
	return u, nil
}

// rdbClass gives a driver error its class: a connection refused or lost,
// a timeout, no connections -> retryable (steps.Retry); a refused login ->
// a config error naming what to fix. rethinkdb-go's errors do not unwrap
// to the syscall errors Classify knows.
func rdbClass(err error, what string) error {
	if err == nil {
		return nil
	}
	var ce r.RQLConnectionError
	var te r.RQLTimeoutError
	var ae r.RQLAuthError
	switch {
	case errors.As(err, &ae):
		return Configf("set application.rethinkdb.user and passwordFrom (or RETHINKDB_USER/RETHINKDB_PASS) to an account RethinkDB accepts",
			"%s: %w", what, err)
	case errors.As(err, &ce), errors.As(err, &te),
		errors.Is(err, r.ErrQueryTimeout), errors.Is(err, r.ErrConnectionClosed), errors.Is(err, r.ErrNoConnections):
		return Retry(fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// rdbGone reports RethinkDB's "does not exist": already undone.
func rdbGone(err error) bool { return strings.Contains(err.Error(), "does not exist.") }
