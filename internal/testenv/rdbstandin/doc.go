// Package rdbstandin is a STAND-IN for a RethinkDB 2.4 server, for tests only.
//
// Why it exists: no RethinkDB server can be had on the machines this project
// is built and tested on. Debian, the Go module proxy and npm carry client
// drivers only, and no container image can be pulled. A mock
// (rethinkdb-go's r.NewMock) replaces the driver and so tests nothing of the
// wire. This package instead speaks the real client wire protocol on a TCP
// socket, so the real driver (gopkg.in/rethinkdb/rethinkdb-go.v6) is
// exercised end to end: dial, handshake, authentication, query framing,
// response decoding, timeouts, refused connections.
//
// What it implements (and nothing more):
//
//   - The V1_0 handshake: the magic number, the server's version message, and
//     SCRAM-SHA-256 authentication (client-first, server-first, client-final,
//     server-final) with real proof verification against the one configured
//     user and password, and the server signature the driver checks. The
//     authentication errors' codes and texts are RethinkDB's ("Wrong
//     password" 12, "Unknown user" 17, "Invalid encoding" 10, ...). Other
//     protocol versions get RethinkDB's "ERROR: ..." line.
//   - Query framing: [8-byte token][4-byte length][JSON], little endian, with
//     the query types START, CONTINUE, STOP, NOREPLY_WAIT and SERVER_INFO.
//     Queries on one connection run concurrently, as on the real server.
//   - The terms the GuildNet checks use: DB_LIST (r.DBList()), TABLE_LIST
//     (r.DB(x).TableList() or with the "db" global optarg), DB, TABLE, LIMIT,
//     COUNT, MAKE_ARRAY, MAKE_OBJ and plain datums (r.Expr(1)). Tables hold
//     rows put there with InsertRows; reading a table answers
//     SUCCESS_SEQUENCE with them. Any other term gets a RUNTIME_ERROR
//     response naming the term, never a hang.
//   - The write terms setup uses: DB_CREATE (r.DBCreate), DB_DROP
//     (r.DBDrop), TABLE_CREATE (r.DB(x).TableCreate, with primary_key) and
//     TABLE_DROP, answering the real server's documents
//     ({dbs_created:1, config_changes:[{old_val,new_val}]},
//     {tables_created:1, ...}, {dbs_dropped:1, tables_dropped:N, ...}) and
//     its errors ("Database `x` already exists.", "Table `x.t` does not
//     exist.", an invalid name, the special "rethinkdb" database). State
//     lives as long as the Server.
//   - Like the real server, DBList also lists the system database
//     "rethinkdb" (its TableList answers the real system table names, with
//     no rows).
//
// Fault knobs for tests: DropDatabase and DropTable lose data as a drop
// would, SetLatency delays every reply, SetFailQueries
// answers every START query with a runtime error, SetRefuse stops listening
// (and drops open connections) so dials get a real "connection refused".
//
// Use:
//
//	srv, err := rdbstandin.Start(rdbstandin.Options{
//		Password:  "secret",
//		Databases: map[string][]string{"org_acme__main": {"_schemas", "_audit", "_info"}},
//	})
//	if err != nil { ... }
//	defer srv.Close()
//	session, err := r.Connect(r.ConnectOpts{Address: srv.Addr(), Username: "admin", Password: "secret"})
//
// It listens on 127.0.0.1 only (by default on a free port). It is not a
// database: there are no changefeeds, no
// clustering, no TLS, no row writes through queries.
package rdbstandin
