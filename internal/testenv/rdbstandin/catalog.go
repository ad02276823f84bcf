package rdbstandin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	p "gopkg.in/rethinkdb/rethinkdb-go.v6/ql2"
)

// systemDB is RethinkDB's own database; the real server lists it in
// r.dbList(), so the stand-in does too.
const systemDB = "rethinkdb"

// systemTables are the real names of RethinkDB 2.4's system tables.
var systemTables = []string{
	"cluster_config", "current_issues", "db_config", "jobs", "logs", "permissions",
	"server_config", "server_status", "stats", "table_config", "table_status", "users",
}

// catalog is the stand-in's data: databases, their tables, and rows.
type catalog struct {
	mu  sync.RWMutex
	dbs map[string]map[string][]any // db -> table -> rows (JSON-decoded, numbers as json.Number)
}

func newCatalog(dbs map[string][]string) (*catalog, error) {
	c := &catalog{dbs: map[string]map[string][]any{}}
	for db, tables := range dbs {
		if db == systemDB {
			return nil, fmt.Errorf("database name %q is reserved for RethinkDB's system tables", db)
		}
		if !validName(db) {
			return nil, fmt.Errorf("database name %q is invalid (RethinkDB allows A-Z, a-z, 0-9, _ and -)", db)
		}
		c.dbs[db] = map[string][]any{}
		for _, t := range tables {
			if !validName(t) {
				return nil, fmt.Errorf("table name %q in database %q is invalid", t, db)
			}
			c.dbs[db][t] = nil
		}
	}
	sys := map[string][]any{}
	for _, t := range systemTables {
		sys[t] = nil
	}
	c.dbs[systemDB] = sys
	return c, nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (c *catalog) dbNames() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Sorted(maps.Keys(c.dbs))
}

func (c *catalog) hasDB(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.dbs[name]
	return ok
}

func (c *catalog) tableNames(db string) ([]string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	tables, ok := c.dbs[db]
	if !ok {
		return nil, errNoDB(db)
	}
	return slices.Sorted(maps.Keys(tables)), nil
}

// rows returns the rows of db.table. The slice must not be modified; inserts
// never touch elements a reader may hold.
func (c *catalog) rows(db, table string) ([]any, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	tables, ok := c.dbs[db]
	if !ok {
		return nil, errNoDB(db)
	}
	rows, ok := tables[table]
	if !ok {
		return nil, &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Table `%s.%s` does not exist.", db, table)}
	}
	return rows, nil
}

func (c *catalog) insert(db, table string, rows []map[string]any) error {
	decoded := make([]any, 0, len(rows))
	for i, r := range rows {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding row %d for %s.%s: %w", i, db, table, err)
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return fmt.Errorf("decoding row %d for %s.%s: %w", i, db, table, err)
		}
		decoded = append(decoded, v)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tables, ok := c.dbs[db]
	if !ok {
		return fmt.Errorf("inserting into %s.%s: database does not exist", db, table)
	}
	old, ok := tables[table]
	if !ok {
		return fmt.Errorf("inserting into %s.%s: table does not exist", db, table)
	}
	// Always a new backing array, so readers holding the old slice are safe.
	tables[table] = append(slices.Clip(old), decoded...)
	return nil
}
