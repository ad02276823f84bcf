package rdbstandin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/guildnet/metaguildnet/internal/poll"
)

func init() {
	// The driver logs reconnect warnings through logrus; keep test output clean.
	r.Log.Out = io.Discard
}

// startServer starts a stand-in closed at the end of the test.
func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start(%+v): %v", opts, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// connect opens a real rethinkdb-go session, closed at the end of the test.
func connect(t *testing.T, opts r.ConnectOpts) *r.Session {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	sess, err := r.Connect(opts)
	if err != nil {
		t.Fatalf("r.Connect(%s as %q): %v", opts.Address, opts.Username, err)
	}
	t.Cleanup(func() { _ = sess.Close() })
	return sess
}

func runCtx(t *testing.T) r.RunOpts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return r.RunOpts{Context: ctx}
}

var guildnetDBs = map[string][]string{
	"org_acme__main": {"_schemas", "_audit", "_info"},
	"test":           {},
}

func TestQueriesThroughRealDriver(t *testing.T) {
	s := startServer(t, Options{Password: "s3cret", Databases: guildnetDBs})
	if err := s.InsertRows("org_acme__main", "_info", map[string]any{"id": "a", "n": 1}, map[string]any{"id": "b", "n": 2}); err != nil {
		t.Fatal(err)
	}
	sess := connect(t, r.ConnectOpts{Address: s.Addr(), Username: "admin", Password: "s3cret"})

	tests := []struct {
		name    string
		term    r.Term
		want    string // fmt %v of the decoded rows
		wantErr string // substring of the error
	}{
		{"db list includes the system db", r.DBList(), "[org_acme__main rethinkdb test]", ""},
		{"table list", r.DB("org_acme__main").TableList(), "[_audit _info _schemas]", ""},
		{"table list of empty db", r.DB("test").TableList(), "[]", ""},
		{"table list default db", r.TableList(), "[]", ""},
		{"system tables", r.DB("rethinkdb").TableList().Count(), "[12]", ""},
		{"trivial read limit 1", r.DB("org_acme__main").Table("_info").Limit(1), "[map[id:a n:1]]", ""},
		{"whole table", r.DB("org_acme__main").Table("_info"), "[map[id:a n:1] map[id:b n:2]]", ""},
		{"empty table", r.DB("org_acme__main").Table("_audit").Limit(1), "[]", ""},
		{"count", r.DB("org_acme__main").Table("_info").Count(), "[2]", ""},
		{"expr", r.Expr(1), "[1]", ""},
		{"expr array limit", r.Expr([]int{1, 2, 3}).Limit(2), "[1 2]", ""},
		{"expr object", r.Expr(map[string]any{"ok": true}), "[map[ok:true]]", ""},
		{"missing db", r.DB("nope").TableList(), "", "Database `nope` does not exist."},
		{"missing table", r.DB("org_acme__main").Table("nope"), "", "Table `org_acme__main.nope` does not exist."},
		{"db as result", r.DB("test"), "", "Query result must be of type DATUM"},
		{"unsupported term", r.Now(), "", "term NOW (103) is not supported"},
		{"unsupported write", r.DB("test").Table("x").Insert(map[string]any{}), "", "INSERT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur, err := tt.term.Run(sess, runCtx(t))
			if err == nil {
				var rows []any // an atom result comes back as one row
				if err = cur.All(&rows); err == nil {
					if got := fmt.Sprint(rows); got != tt.want {
						t.Errorf("result = %s, want %s", got, tt.want)
					}
				}
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("no error, want one containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestDatabaseConnectOption(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	sess := connect(t, r.ConnectOpts{Address: s.Addr(), Database: "org_acme__main"})
	cur, err := r.TableList().Run(sess, runCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	if err := cur.All(&tables); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tables, ","); got != "_audit,_info,_schemas" {
		t.Fatalf("TableList with Database option = %s", got)
	}
}

func TestAuthentication(t *testing.T) {
	s := startServer(t, Options{User: "guildnet", Password: "pa,ss=word"})
	open := startServer(t, Options{}) // admin with an empty password, like a fresh RethinkDB

	tests := []struct {
		name     string
		addr     string
		user     string
		password string
		wantErr  string
		v04      bool // the driver's old V0_4 handshake, which 2.4 refuses
	}{
		{"old V0_4 handshake", s.Addr(), "guildnet", "pa,ss=word", "unsupported protocol version", true},
		{"right password", s.Addr(), "guildnet", "pa,ss=word", "", false},
		{"wrong password", s.Addr(), "guildnet", "nope", "Wrong password", false},
		{"empty password when one is set", s.Addr(), "guildnet", "", "Wrong password", false},
		{"unknown user", s.Addr(), "mallory", "pa,ss=word", "Unknown user", false},
		{"admin without password", open.Addr(), "", "", "", false},
		{"admin explicitly", open.Addr(), "admin", "", "", false},
		{"password on passwordless admin", open.Addr(), "admin", "x", "Wrong password", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := r.ConnectOpts{Address: tt.addr, Username: tt.user, Password: tt.password, Timeout: 5 * time.Second}
			if tt.v04 {
				opts.HandshakeVersion = r.HandshakeV0_4
			}
			sess, err := r.Connect(opts)
			if err == nil {
				defer sess.Close()
				_, err = r.DBList().Run(sess, runCtx(t))
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("connected, want error %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLatencyKnob(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	sess := connect(t, r.ConnectOpts{Address: s.Addr()})

	tests := []struct {
		name    string
		latency time.Duration
		timeout time.Duration // query context; 0 = generous
		wantErr error
	}{
		{"slow", 150 * time.Millisecond, 0, nil},
		{"slower than the caller waits", 2 * time.Second, 100 * time.Millisecond, r.ErrQueryTimeout},
		{"back to normal", 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetLatency(tt.latency)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			cur, err := r.DBList().Run(sess, r.RunOpts{Context: ctx})
			took := time.Since(start)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if took >= tt.latency {
					t.Errorf("gave up after %v; the timeout (%v) should have cut the %v latency short", took, timeout, tt.latency)
				}
				return
			}
			_ = cur.Close()
			if took < tt.latency {
				t.Errorf("query took %v, want at least the %v latency", took, tt.latency)
			}
		})
	}
	// The connection that timed out is still usable.
	if _, err := r.DBList().Run(sess, runCtx(t)); err != nil {
		t.Fatalf("query after a timed-out query: %v", err)
	}
}

func TestFailQueriesKnob(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	sess := connect(t, r.ConnectOpts{Address: s.Addr()})

	for _, tt := range []struct {
		name, fail, wantErr string
	}{
		{"failing", "Cannot perform read: primary replica for shard [\"\", +inf) not available", "primary replica"},
		{"healthy again", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s.SetFailQueries(tt.fail)
			_, err := r.DBList().Run(sess, runCtx(t))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var opFailed r.RQLOpFailedError
			if !errors.As(err, &opFailed) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v (%T), want an RQLOpFailedError containing %q", err, err, tt.wantErr)
			}
		})
	}
}

func TestRefuseKnob(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	sess := connect(t, r.ConnectOpts{Address: s.Addr()})

	s.SetRefuse(true)
	_, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("raw dial while refusing: err = %v, want ECONNREFUSED", err)
	}
	if _, err := r.Connect(r.ConnectOpts{Address: s.Addr(), Timeout: time.Second}); err == nil {
		t.Fatal("r.Connect succeeded while refusing")
	} else if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("r.Connect error %q does not say connection refused", err)
	}
	// The open session's connection was dropped too.
	if _, err := r.DBList().Run(sess, runCtx(t)); err == nil {
		t.Error("query on an existing session succeeded while refusing")
	}

	s.SetRefuse(false)
	poll.UntilOK(t, 5*time.Second, "queries again after SetRefuse(false)", func() error {
		sess2, err := r.Connect(r.ConnectOpts{Address: s.Addr(), Timeout: time.Second})
		if err != nil {
			return err
		}
		defer sess2.Close()
		_, err = r.DBList().Run(sess2, runCtx(t))
		return err
	})
}

func TestManyConcurrentConnections(t *testing.T) {
	s := startServer(t, Options{Password: "pw", Databases: guildnetDBs})
	const clients = 40
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, err := r.Connect(r.ConnectOpts{Address: s.Addr(), Password: "pw", Timeout: 10 * time.Second, MaxOpen: 2})
			if err != nil {
				errs <- fmt.Errorf("client %d connect: %w", i, err)
				return
			}
			defer sess.Close()
			for j := range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cur, err := r.DB("org_acme__main").TableList().Run(sess, r.RunOpts{Context: ctx})
				if err == nil {
					var tables []string
					err = cur.All(&tables)
					if err == nil && len(tables) != 3 {
						err = fmt.Errorf("got %d tables", len(tables))
					}
				}
				cancel()
				if err != nil {
					errs <- fmt.Errorf("client %d query %d: %w", i, j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestStartRejects(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"non-loopback address", Options{Addr: "0.0.0.0:0"}, "not a loopback address"},
		{"reserved database", Options{Databases: map[string][]string{"rethinkdb": nil}}, "reserved"},
		{"bad database name", Options{Databases: map[string][]string{"a.b": nil}}, "invalid"},
		{"bad table name", Options{Databases: map[string][]string{"a": {"x y"}}}, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Start(tt.opts)
			if err == nil {
				_ = s.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestInsertRowsUnknownTable(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	if err := s.InsertRows("org_acme__main", "missing", map[string]any{"a": 1}); err == nil {
		t.Fatal("InsertRows into a missing table succeeded")
	}
	if err := s.InsertRows("missing", "_info"); err == nil {
		t.Fatal("InsertRows into a missing database succeeded")
	}
}

func TestNoReplyThroughDriver(t *testing.T) {
	s := startServer(t, Options{Databases: guildnetDBs})
	sess, err := r.Connect(r.ConnectOpts{Address: s.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"noreply query", func() error { return r.DBList().Exec(sess, r.ExecOpts{NoReply: true}) }},
		{"noreply wait", sess.NoReplyWait},
		{"server info", func() error {
			info, err := sess.Server()
			if err == nil && (info.Name != ServerName || info.ID == "") {
				err = fmt.Errorf("server info %+v", info)
			}
			return err
		}},
		{"close waiting for noreply", func() error { return sess.Close(r.CloseOpts{NoReplyWait: true}) }},
	}
	for _, st := range steps {
		if err := st.run(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
}
