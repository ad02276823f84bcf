package checks

// Database checks, cluster-scoped: RethinkDB found the way GuildNet
// finds it, then dialled, queried and its databases listed. The chain is
// pods_ready -> address -> tcp -> query -> databases, so a dead database
// shows as one failure.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/guildnet/metaguildnet/messages"
)

// RethinkDB defaults, as GuildNet has them.
const (
	DefaultRethinkDBPort      = 28015
	DefaultRDBQueryWarn       = 100 * time.Millisecond
	DefaultRDBQueryFail       = time.Second
	rdbAddressKey             = "rethinkdb.address"
	rdbDatabasesKey           = "rethinkdb.databases"
	defaultRDBNamespace       = "default"
	defaultRDBService         = "rethinkdb"
	defaultRDBSelector        = "app=rethinkdb"
	rdbClientPortName         = "client"
	rdbOrgPrefix              = "org_"
	maxOrgDatabasesChecked    = 200
	maxDatabasesInObservation = 200
)

// OrgMetaTables are the tables GuildNet's host app keeps in every
// organisation database (org_<org>__<db>).
var OrgMetaTables = []string{"_schemas", "_audit", "_info"}

// RethinkDBAddress is where RethinkDB was found and how.
type RethinkDBAddress struct {
	Address string `json:"address"` // host:port
	// Source is how it was found: setting (RETHINKDB_ADDR), loadbalancer,
	// nodeport or clusterip.
	Source string `json:"source"`
	Detail string `json:"detail,omitempty"` // e.g. the node whose IP was used
}

func (a RethinkDBAddress) String() string {
	if a.Detail != "" {
		return fmt.Sprintf("%s (%s, %s)", a.Address, a.Source, a.Detail)
	}
	return fmt.Sprintf("%s (%s)", a.Address, a.Source)
}

// DatabaseChecks are the database layer's checks.
func DatabaseChecks() []Check {
	return fromTable([]Check{
		{
			Name:        "rethinkdb_pods_ready",
			Description: "RethinkDB pods (app=rethinkdb) are Running and ready",
			Timeout:     10 * time.Second,
			Run:         withKube(checkRethinkDBPods),
		},
		{
			Name:        "rethinkdb_address",
			Description: "RethinkDB's address: RETHINKDB_ADDR, else the Service's LoadBalancer IP, NodePort or ClusterIP",
			Timeout:     10 * time.Second,
			Run:         checkRethinkDBAddress,
		},
		{
			Name:        "rethinkdb_tcp",
			Description: "RethinkDB's client port accepts a TCP connection",
			Timeout:     5 * time.Second,
			Run:         checkRethinkDBTCP,
		},
		{
			Name:        "rethinkdb_query",
			Description: "r.dbList() answers, warn above 100 ms, fail above 1 s",
			Timeout:     5 * time.Second,
			Run:         checkRethinkDBQuery,
		},
		{
			Name:        "rethinkdb_databases",
			Description: "the databases in METAGN_RDB_DATABASES exist",
			Timeout:     2 * time.Second,
			Run:         checkRethinkDBDatabases,
		},
		{
			Name:        "rethinkdb_org_tables",
			Description: "every org_* database has GuildNet's meta tables _schemas, _audit and _info",
			Timeout:     5 * time.Second,
			Run:         checkRethinkDBOrgTables,
		},
	})
}

func checkRethinkDBPods(ctx context.Context, cx *CheckEnv, k *kubeClient) Result {
	ns := cx.Setting("METAGN_RDB_NAMESPACE", defaultRDBNamespace)
	res := podsReady(ctx, k, ns, defaultRDBSelector, "RethinkDB")
	if res.Status == messages.CheckFail && cx.Setting("RETHINKDB_ADDR", "") != "" {
		if pods, err := k.list(ctx, gvrPods, ns, defaultRDBSelector); err == nil && len(pods) == 0 {
			return NotApplicable("RETHINKDB_ADDR is set and the cluster runs no RethinkDB pods")
		}
	}
	return res
}

func checkRethinkDBAddress(ctx context.Context, cx *CheckEnv) Result {
	addr, err := findRethinkDB(ctx, cx)
	if err != nil {
		return Fail("%v", err)
	}
	cx.Put(rdbAddressKey, addr)
	return Pass("RethinkDB at %s", addr).With(addr, nil)
}

// findRethinkDB resolves RethinkDB's address as GuildNet does.
func findRethinkDB(ctx context.Context, cx *CheckEnv) (RethinkDBAddress, error) {
	if a := cx.Setting("RETHINKDB_ADDR", ""); a != "" {
		addr, err := withDefaultPort(a, DefaultRethinkDBPort)
		if err != nil {
			return RethinkDBAddress{}, fmt.Errorf("setting RETHINKDB_ADDR: %w", err)
		}
		return RethinkDBAddress{Address: addr, Source: "setting", Detail: "RETHINKDB_ADDR"}, nil
	}
	k, err := kube(cx)
	if err != nil {
		return RethinkDBAddress{}, fmt.Errorf("Kubernetes client: %w", err)
	}
	ns := cx.Setting("METAGN_RDB_NAMESPACE", defaultRDBNamespace)
	name := cx.Setting("METAGN_RDB_SERVICE", defaultRDBService)
	svc, err := k.get(ctx, gvrServices, ns, name)
	if err != nil {
		return RethinkDBAddress{}, fmt.Errorf("RETHINKDB_ADDR unset and %w", err)
	}
	port, nodePort, err := clientPort(svc)
	if err != nil {
		return RethinkDBAddress{}, fmt.Errorf("Service %s: %w", qualified(ns, name), err)
	}
	ingress, _, _ := unstructured.NestedSlice(svc.Object, "status", "loadBalancer", "ingress")
	for _, in := range ingress {
		m, ok := in.(map[string]any)
		if !ok {
			continue
		}
		host, _ := m["ip"].(string)
		if host == "" {
			host, _ = m["hostname"].(string)
		}
		if host != "" {
			return RethinkDBAddress{Address: net.JoinHostPort(host, strconv.Itoa(port)), Source: "loadbalancer"}, nil
		}
	}
	var why []string
	if nestedString(svc.Object, "spec", "type") == "LoadBalancer" {
		why = append(why, "LoadBalancer has no ingress IP yet")
	}
	if nodePort > 0 {
		node, ip, err := nodeAddress(ctx, k)
		if err == nil {
			return RethinkDBAddress{Address: net.JoinHostPort(ip, strconv.Itoa(nodePort)), Source: "nodeport", Detail: "node " + node}, nil
		}
		why = append(why, "NodePort "+strconv.Itoa(nodePort)+" but "+err.Error())
	}
	if ip := nestedString(svc.Object, "spec", "clusterIP"); ip != "" && ip != "None" {
		return RethinkDBAddress{Address: net.JoinHostPort(ip, strconv.Itoa(port)), Source: "clusterip", Detail: strings.Join(why, "; ")}, nil
	}
	why = append(why, "no ClusterIP")
	return RethinkDBAddress{}, fmt.Errorf("Service %s has no usable address: %s", qualified(ns, name), strings.Join(why, "; "))
}

// clientPort finds the Service port named "client" (else the only port,
// else 28015) and its NodePort.
func clientPort(svc *unstructured.Unstructured) (port, nodePort int, err error) {
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	var chosen map[string]any
	for _, p := range ports {
		m, ok := p.(map[string]any)
		if !ok {
			continue
		}
		if n, _ := m["name"].(string); n == rdbClientPortName {
			chosen = m
			break
		}
		if pn := nestedInt(m, "port"); pn == DefaultRethinkDBPort && chosen == nil {
			chosen = m
		}
	}
	if chosen == nil && len(ports) == 1 {
		chosen, _ = ports[0].(map[string]any)
	}
	if chosen == nil {
		return 0, 0, fmt.Errorf("no port named %q or numbered %d", rdbClientPortName, DefaultRethinkDBPort)
	}
	return int(nestedInt(chosen, "port")), int(nestedInt(chosen, "nodePort")), nil
}

// withDefaultPort adds port to a bare host.
func withDefaultPort(a string, port int) (string, error) {
	a = strings.TrimSpace(a)
	if host, p, err := net.SplitHostPort(a); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 || host == "" {
			return "", fmt.Errorf("%q: bad host or port", a)
		}
		return a, nil
	}
	if a == "" || strings.ContainsAny(a, " /") {
		return "", fmt.Errorf("%q is not host[:port]", a)
	}
	return net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(port)), nil
}

func rethinkDBAddress(cx *CheckEnv) (RethinkDBAddress, bool) {
	return Value[RethinkDBAddress](cx, rdbAddressKey)
}

func checkRethinkDBTCP(ctx context.Context, cx *CheckEnv) Result {
	addr, ok := rethinkDBAddress(cx)
	if !ok {
		return Unknown("no address from rethinkdb_address")
	}
	return dialTCP(ctx, addr.Address, "RethinkDB at "+addr.String())
}

// dialTCP opens and closes a TCP connection, naming what in the message.
func dialTCP(ctx context.Context, address, what string) Result {
	var d net.Dialer
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", address)
	took := time.Since(start)
	obs := map[string]any{"address": address, "connect_ms": ms(took)}
	if err != nil {
		reason := errText(ctx, err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			reason = "connection refused"
		}
		return Fail("TCP connect to %s: %s", what, reason).With(obs, nil)
	}
	conn.Close()
	return Pass("%s accepts TCP connections (%s)", what, took.Round(time.Microsecond)).With(obs, nil)
}

func checkRethinkDBQuery(ctx context.Context, cx *CheckEnv) Result {
	addr, ok := rethinkDBAddress(cx)
	if !ok {
		return Unknown("no address from rethinkdb_address")
	}
	warn, err := settingMillis(cx, "METAGN_RDB_WARN_MS", DefaultRDBQueryWarn)
	if err != nil {
		return Fail("%v", err)
	}
	fail, err := settingMillis(cx, "METAGN_RDB_FAIL_MS", DefaultRDBQueryFail)
	if err != nil {
		return Fail("%v", err)
	}
	thr := map[string]any{"warn_ms": warn.Milliseconds(), "fail_ms": fail.Milliseconds()}
	start := time.Now()
	session, err := rdbConnect(ctx, addr.Address, cx.Setting("RETHINKDB_USER", "admin"), cx.Setting("RETHINKDB_PASS", ""))
	connectTook := time.Since(start)
	if err != nil {
		return Fail("connecting to RethinkDB at %s: %v", addr, err).With(map[string]any{"address": addr.Address}, thr)
	}
	defer session.Close()
	start = time.Now()
	dbs, err := rdbDBList(ctx, session)
	took := time.Since(start)
	obs := map[string]any{"address": addr.Address, "connect_ms": ms(connectTook), "query_ms": ms(took), "databases": len(dbs)}
	if err != nil {
		return Fail("r.dbList() on %s: %v", addr, err).With(obs, thr)
	}
	cx.Put(rdbDatabasesKey, dbs)
	switch {
	case took > fail:
		return Fail("r.dbList() on %s took %s, above the fail threshold %s", addr.Address, took.Round(time.Millisecond), fail).With(obs, thr)
	case took > warn:
		return Warn("r.dbList() on %s took %s, above the warn threshold %s", addr.Address, took.Round(time.Millisecond), warn).With(obs, thr)
	}
	return Pass("r.dbList() on %s answered in %s (%d databases)", addr.Address, took.Round(time.Microsecond), len(dbs)).With(obs, thr)
}

func checkRethinkDBDatabases(ctx context.Context, cx *CheckEnv) Result {
	dbs, ok := Value[[]string](cx, rdbDatabasesKey)
	if !ok {
		return Unknown("no database list from rethinkdb_query")
	}
	want := settingList(cx, "METAGN_RDB_DATABASES", "")
	shown := dbs
	if len(shown) > maxDatabasesInObservation {
		shown = shown[:maxDatabasesInObservation]
	}
	obs := map[string]any{"databases": shown, "count": len(dbs)}
	if len(want) == 0 {
		return NotConfigured("METAGN_RDB_DATABASES", "METAGN_RDB_DATABASES is not set, so no database is expected (%d present)", len(dbs)).With(obs, nil)
	}
	var missing []string
	for _, w := range want {
		if !slices.Contains(dbs, w) {
			missing = append(missing, w)
		}
	}
	thr := map[string]any{"databases": want}
	if len(missing) > 0 {
		return Fail("databases missing: %s", strings.Join(missing, ", ")).With(obs, thr)
	}
	return Pass("all %d configured databases present", len(want)).With(obs, thr)
}

func checkRethinkDBOrgTables(ctx context.Context, cx *CheckEnv) Result {
	dbs, ok := Value[[]string](cx, rdbDatabasesKey)
	if !ok {
		return Unknown("no database list from rethinkdb_query")
	}
	addr, ok := rethinkDBAddress(cx)
	if !ok {
		return Unknown("no address from rethinkdb_address")
	}
	var orgs []string
	for _, db := range dbs {
		if strings.HasPrefix(db, rdbOrgPrefix) {
			orgs = append(orgs, db)
		}
	}
	thr := map[string]any{"tables": OrgMetaTables}
	if len(orgs) == 0 {
		return NotApplicable("no org_* databases yet (%d databases present)", len(dbs)).With(map[string]any{"org_databases": 0}, thr)
	}
	checked := orgs[:min(len(orgs), maxOrgDatabasesChecked)]
	session, err := rdbConnect(ctx, addr.Address, cx.Setting("RETHINKDB_USER", "admin"), cx.Setting("RETHINKDB_PASS", ""))
	if err != nil {
		return Fail("connecting to RethinkDB at %s: %v", addr, err).With(map[string]any{"address": addr.Address}, thr)
	}
	defer session.Close()
	var missing []string
	for _, db := range checked {
		tables, err := rdbTableList(ctx, session, db)
		if err != nil {
			return Fail("r.db(%q).tableList() on %s: %v", db, addr.Address, err).With(map[string]any{"address": addr.Address}, thr)
		}
		var lack []string
		for _, t := range OrgMetaTables {
			if !slices.Contains(tables, t) {
				lack = append(lack, t)
			}
		}
		if len(lack) > 0 {
			missing = append(missing, db+" lacks "+strings.Join(lack, ", "))
		}
	}
	obs := map[string]any{"org_databases": len(orgs), "checked": len(checked), "incomplete": len(missing)}
	if len(missing) > 0 {
		return Fail("%d of %d org databases lack meta tables: %s", len(missing), len(checked), strings.Join(missing, "; ")).With(obs, thr)
	}
	return Pass("all %d org databases have %s", len(checked), strings.Join(OrgMetaTables, ", ")).With(obs, thr)
}

var rdbQuiet sync.Once

// rdbConnect opens a session with the real rethinkdb-go driver (V1_0
// handshake, SCRAM-SHA-256), bounded by ctx's deadline.
func rdbConnect(ctx context.Context, address, user, password string) (*r.Session, error) {
	rdbQuiet.Do(func() { r.Log.SetOutput(io.Discard) }) // the driver logs through logrus to stderr
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	return r.Connect(r.ConnectOpts{Address: address, Username: user, Password: password,
		Timeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, InitialCap: 1, MaxOpen: 1})
}

// rdbDBList runs r.DBList(), as GuildNet's host app does to ping RethinkDB.
func rdbDBList(ctx context.Context, s *r.Session) ([]string, error) {
	return rdbStrings(ctx, s, r.DBList())
}

// rdbTableList runs r.DB(db).TableList().
func rdbTableList(ctx context.Context, s *r.Session, db string) ([]string, error) {
	return rdbStrings(ctx, s, r.DB(db).TableList())
}

// rdbStrings runs a query whose answer is a list of strings.
func rdbStrings(ctx context.Context, s *r.Session, t r.Term) ([]string, error) {
	cur, err := t.Run(s, r.RunOpts{Context: ctx})
	if err != nil {
		return nil, err
	}
	defer cur.Close()
	var out []string
	if err := cur.All(&out); err != nil {
		return nil, err
	}
	return out, nil
}
