package rdbstandin

import (
	"slices"
	"strings"
	"testing"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
)

// TestWriteTermsThroughRealDriver creates and drops databases and tables
// with rethinkdb-go's own write helpers and checks the replies decode into
// the driver's result types as from a real server.
func TestWriteTermsThroughRealDriver(t *testing.T) {
	s := startServer(t, Options{Password: "pw"})
	sess := connect(t, r.ConnectOpts{Address: s.Addr(), Username: "admin", Password: "pw"})

	res, err := r.DBCreate("org_demo__main").RunWrite(sess, runCtx(t))
	if err != nil {
		t.Fatalf("DBCreate: %v", err)
	}
	if res.DBsCreated != 1 || len(res.ConfigChanges) != 1 || res.ConfigChanges[0].OldValue != nil {
		t.Fatalf("DBCreate reply = %+v, want dbs_created 1 and one config change from null", res)
	}
	if nv, _ := res.ConfigChanges[0].NewValue.(map[string]any); nv["name"] != "org_demo__main" || nv["id"] == "" {
		t.Fatalf("DBCreate new_val = %v", res.ConfigChanges[0].NewValue)
	}
	_, err = r.DBCreate("org_demo__main").RunWrite(sess, runCtx(t))
	if err == nil || !strings.Contains(err.Error(), "Database `org_demo__main` already exists.") {
		t.Fatalf("second DBCreate error = %v, want RethinkDB's 'already exists'", err)
	}

	for _, tbl := range []string{"_schemas", "_audit", "_info"} {
		res, err := r.DB("org_demo__main").TableCreate(tbl).RunWrite(sess, runCtx(t))
		if err != nil {
			t.Fatalf("TableCreate %s: %v", tbl, err)
		}
		if res.TablesCreated != 1 || len(res.ConfigChanges) != 1 {
			t.Fatalf("TableCreate reply = %+v", res)
		}
		nv, _ := res.ConfigChanges[0].NewValue.(map[string]any)
		if nv["db"] != "org_demo__main" || nv["name"] != tbl || nv["primary_key"] != "id" {
			t.Fatalf("TableCreate new_val = %v", nv)
		}
	}
	if _, err := r.DB("org_demo__main").TableCreate("_info").RunWrite(sess, runCtx(t)); err == nil ||
		!strings.Contains(err.Error(), "Table `org_demo__main._info` already exists.") {
		t.Fatalf("duplicate TableCreate error = %v", err)
	}
	res, err = r.DB("org_demo__main").TableCreate("k", r.TableCreateOpts{PrimaryKey: "key"}).RunWrite(sess, runCtx(t))
	if err != nil {
		t.Fatalf("TableCreate with primary key: %v", err)
	}
	if nv, _ := res.ConfigChanges[0].NewValue.(map[string]any); nv["primary_key"] != "key" {
		t.Fatalf("primary key = %v, want key", nv["primary_key"])
	}
	// With the default database from the connection's global optarg.
	sessDB := connect(t, r.ConnectOpts{Address: s.Addr(), Username: "admin", Password: "pw", Database: "org_demo__main"})
	if _, err := r.TableCreate("viaopt").RunWrite(sessDB, runCtx(t)); err != nil {
		t.Fatalf("TableCreate on the default db: %v", err)
	}

	var tables []string
	cur, err := r.DB("org_demo__main").TableList().Run(sess, runCtx(t))
	if err == nil {
		err = cur.All(&tables)
	}
	if err != nil || !slices.Equal(tables, []string{"_audit", "_info", "_schemas", "k", "viaopt"}) {
		t.Fatalf("TableList = %v, %v", tables, err)
	}

	res, err = r.DB("org_demo__main").TableDrop("k").RunWrite(sess, runCtx(t))
	if err != nil || res.TablesDropped != 1 {
		t.Fatalf("TableDrop = %+v, %v", res, err)
	}
	if _, err := r.DB("org_demo__main").TableDrop("k").RunWrite(sess, runCtx(t)); err == nil ||
		!strings.Contains(err.Error(), "Table `org_demo__main.k` does not exist.") {
		t.Fatalf("second TableDrop error = %v", err)
	}

	res, err = r.DBDrop("org_demo__main").RunWrite(sess, runCtx(t))
	if err != nil || res.DBsDropped != 1 || res.TablesDropped != 4 {
		t.Fatalf("DBDrop = %+v, %v; want dbs_dropped 1, tables_dropped 4", res, err)
	}
	if _, err := r.DBDrop("org_demo__main").RunWrite(sess, runCtx(t)); err == nil ||
		!strings.Contains(err.Error(), "Database `org_demo__main` does not exist.") {
		t.Fatalf("second DBDrop error = %v", err)
	}

	for _, tc := range []struct {
		term r.Term
		want string
	}{
		{r.DBCreate("bad name"), "Database name `bad name` invalid (Use A-Z, a-z, 0-9, _ and - only)."},
		{r.DBCreate("rethinkdb"), "Database `rethinkdb` is special"},
		{r.DBDrop("rethinkdb"), "Database `rethinkdb` is special"},
		{r.DB("rethinkdb").TableCreate("x"), "Database `rethinkdb` is special"},
		{r.DB("nope").TableCreate("x"), "Database `nope` does not exist."},
		{r.TableCreate("x"), "Database `test` does not exist."},
	} {
		if _, err := tc.term.RunWrite(sess, runCtx(t)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.term, err, tc.want)
		}
	}
}

func TestDropKnobs(t *testing.T) {
	s := startServer(t, Options{Databases: map[string][]string{"org_a__b": {"_info", "_audit"}}})
	if err := s.DropTable("org_a__b", "_audit"); err != nil {
		t.Fatal(err)
	}
	if got := s.Databases(); !slices.Equal(got["org_a__b"], []string{"_info"}) {
		t.Fatalf("after DropTable: %v", got)
	}
	if err := s.DropDatabase("org_a__b"); err != nil {
		t.Fatal(err)
	}
	if got := s.Databases(); len(got) != 0 {
		t.Fatalf("after DropDatabase: %v", got)
	}
	if err := s.DropDatabase("org_a__b"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("dropping twice: %v", err)
	}
	if err := s.DropDatabase("rethinkdb"); err == nil {
		t.Fatal("dropped the system database")
	}
}
