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
	ids map[string]string           // "db" or "db.table" -> UUID, made on first use
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

// Writes: what r.DBCreate, r.DBDrop, TableCreate and TableDrop do on the
// real server, with its reply shapes and error texts.

// nameFix is RethinkDB's hint for an invalid name.
const nameFix = "(Use A-Z, a-z, 0-9, _ and - only)"

// tableConfig is the config document the real server reports for a table
// in config_changes (its shape as table_config shows it).
func tableConfig(db, name, primaryKey, id string) map[string]any {
	return map[string]any{
		"db": db, "durability": "hard", "id": id, "indexes": []any{}, "name": name,
		"primary_key": primaryKey, "write_acks": "majority",
		"shards": []any{map[string]any{
			"nonvoting_replicas": []any{}, "primary_replica": ServerName, "replicas": []any{ServerName},
		}},
	}
}

func specialDB(verb string) error {
	return &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Database `%s` is special; you can't %s it.", systemDB, verb)}
}

// createDB creates an empty database: {dbs_created:1, config_changes:[...]}.
func (c *catalog) createDB(name string) (map[string]any, error) {
	if !validName(name) {
		return nil, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Database name `%s` invalid %s.", name, nameFix)}
	}
	if name == systemDB {
		return nil, specialDB("create")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.dbs[name]; ok {
		return nil, &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Database `%s` already exists.", name)}
	}
	c.dbs[name] = map[string][]any{}
	id := c.idLocked(name)
	return map[string]any{
		"dbs_created": json.Number("1"),
		"config_changes": []any{map[string]any{
			"old_val": nil, "new_val": map[string]any{"id": id, "name": name},
		}},
	}, nil
}

// dropDB drops a database and its tables:
// {dbs_dropped:1, tables_dropped:N, config_changes:[...]}.
func (c *catalog) dropDB(name string) (map[string]any, error) {
	if name == systemDB {
		return nil, specialDB("delete")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tables, ok := c.dbs[name]
	if !ok {
		return nil, errNoDB(name)
	}
	id := c.idLocked(name)
	delete(c.dbs, name)
	delete(c.ids, name)
	for t := range tables {
		delete(c.ids, name+"."+t)
	}
	return map[string]any{
		"dbs_dropped":    json.Number("1"),
		"tables_dropped": json.Number(fmt.Sprint(len(tables))),
		"config_changes": []any{map[string]any{
			"old_val": map[string]any{"id": id, "name": name}, "new_val": nil,
		}},
	}, nil
}

// createTable creates an empty table: {tables_created:1, config_changes:[...]}.
func (c *catalog) createTable(db, name, primaryKey string) (map[string]any, error) {
	if !validName(name) {
		return nil, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Table name `%s` invalid %s.", name, nameFix)}
	}
	if db == systemDB {
		return nil, specialDB("create a table in")
	}
	if primaryKey == "" {
		primaryKey = "id"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tables, ok := c.dbs[db]
	if !ok {
		return nil, errNoDB(db)
	}
	if _, ok := tables[name]; ok {
		return nil, &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Table `%s.%s` already exists.", db, name)}
	}
	tables[name] = nil
	return map[string]any{
		"tables_created": json.Number("1"),
		"config_changes": []any{map[string]any{
			"old_val": nil, "new_val": tableConfig(db, name, primaryKey, c.idLocked(db+"."+name)),
		}},
	}, nil
}

// dropTable drops a table: {tables_dropped:1, config_changes:[...]}.
func (c *catalog) dropTable(db, name string) (map[string]any, error) {
	if db == systemDB {
		return nil, specialDB("delete a table in")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tables, ok := c.dbs[db]
	if !ok {
		return nil, errNoDB(db)
	}
	if _, ok := tables[name]; !ok {
		return nil, &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Table `%s.%s` does not exist.", db, name)}
	}
	delete(tables, name)
	id := c.idLocked(db + "." + name)
	delete(c.ids, db+"."+name)
	return map[string]any{
		"tables_dropped": json.Number("1"),
		"config_changes": []any{map[string]any{
			"old_val": tableConfig(db, name, "id", id), "new_val": nil,
		}},
	}, nil
}

// idLocked returns the UUID of a database ("db") or table ("db.table"),
// made on first use. c.mu is held for writing.
func (c *catalog) idLocked(key string) string {
	if c.ids == nil {
		c.ids = map[string]string{}
	}
	id, ok := c.ids[key]
	if !ok {
		id = newUUID()
		c.ids[key] = id
	}
	return id
}
