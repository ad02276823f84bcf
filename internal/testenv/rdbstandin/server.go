package rdbstandin

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	p "gopkg.in/rethinkdb/rethinkdb-go.v6/ql2"
)

// Limits, named and defaulted in one place, enforced where bytes come in.
const (
	// DefaultAddr is where Start listens when Options.Addr is empty.
	DefaultAddr = "127.0.0.1:0"
	// DefaultUser is RethinkDB's built-in administrator.
	DefaultUser = "admin"
	// DefaultDB is the database a query uses when it names none (as on the
	// real server, it need not exist).
	DefaultDB = "test"
	// ServerName is what SERVER_INFO answers as the server's name.
	ServerName = "rdbstandin"

	// MaxHandshakeMessage bounds one NUL-terminated handshake message.
	MaxHandshakeMessage = 4 << 10
	// MaxQueryBytes bounds one query frame's JSON; a larger frame closes the
	// connection.
	MaxQueryBytes = 16 << 20
	// MaxConnections bounds open client connections; more are closed at once.
	MaxConnections = 1024
	// MaxInFlightPerConn bounds queries running at once on one connection;
	// the connection is not read further until one finishes.
	MaxInFlightPerConn = 64
	// HandshakeTimeout bounds the whole handshake of one connection.
	HandshakeTimeout = 10 * time.Second
	// WriteTimeout bounds writing one response.
	WriteTimeout = 10 * time.Second
)

// Options configure a Server. The zero value is usable: admin with an empty
// password (like a fresh RethinkDB) and no databases besides "rethinkdb".
type Options struct {
	// Addr is the loopback host:port to listen on; default DefaultAddr.
	Addr string
	// User is the one account that can log in; default DefaultUser.
	User string
	// Password of User; "" is allowed, as for RethinkDB's admin.
	Password string
	// Databases maps database name to its table names. "rethinkdb" is
	// reserved (it is always there, as on the real server).
	Databases map[string][]string
}

// Server is a running RethinkDB stand-in. Its methods are safe for
// concurrent use.
type Server struct {
	addr     string
	cred     *credentials
	cat      *catalog
	serverID string

	latency  atomic.Int64           // time.Duration added before each reply
	failText atomic.Pointer[string] // non-empty: START queries fail with it

	mu       sync.Mutex
	ln       net.Listener // nil while refusing or closed
	refusing bool
	closed   bool
	conns    map[net.Conn]struct{}
	done     chan struct{}
	ctx      context.Context // cancelled by Close; parent of every connection's
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// Start listens on opts.Addr and serves until Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.User == "" {
		opts.User = DefaultUser
	}
	if err := checkLoopback(opts.Addr); err != nil {
		return nil, err
	}
	cat, err := newCatalog(opts.Databases)
	if err != nil {
		return nil, fmt.Errorf("rdbstandin: %w", err)
	}
	cred, err := newCredentials(opts.User, opts.Password)
	if err != nil {
		return nil, fmt.Errorf("rdbstandin: %w", err)
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("rdbstandin: listening on %s: %w", opts.Addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		ctx:      ctx,
		cancel:   cancel,
		addr:     ln.Addr().String(),
		cred:     cred,
		cat:      cat,
		serverID: newUUID(),
		ln:       ln,
		conns:    map[net.Conn]struct{}{},
		done:     make(chan struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return s, nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("rdbstandin: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("rdbstandin: address %q is not a loopback address; the stand-in listens on loopback only", addr)
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Addr is the host:port clients dial (stable across SetRefuse).
func (s *Server) Addr() string { return s.addr }

// SetLatency delays every query reply by d (0 turns it off). The reply to a
// STOP query is not delayed, so a client that gives up on a slow query is
// not held a second time. The handshake is not delayed.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(max(d, 0))) }

// SetFailQueries makes every START query (every r.X().Run) answer a
// RUNTIME_ERROR (type OP_FAILED) with text msg; "" turns it off. Connecting
// and SERVER_INFO keep working, so the failure shows on the query.
func (s *Server) SetFailQueries(msg string) { s.failText.Store(&msg) }

// InsertRows appends rows to an existing table (for the trivial read of
// the checks). Rows are JSON-encoded, so any JSON-marshalable values work.
func (s *Server) InsertRows(db, table string, rows ...map[string]any) error {
	if err := s.cat.insert(db, table, rows); err != nil {
		return fmt.Errorf("rdbstandin: %w", err)
	}
	return nil
}

// DropDatabase drops a database and its tables, as r.DBDrop would (a
// fault knob: a database lost). It is an error if it does not exist.
func (s *Server) DropDatabase(name string) error {
	if _, err := s.cat.dropDB(name); err != nil {
		return fmt.Errorf("rdbstandin: dropping database %q: %w", name, err)
	}
	return nil
}

// DropTable drops one table, as r.DB(db).TableDrop(table) would (a fault
// knob: a meta table lost).
func (s *Server) DropTable(db, table string) error {
	if _, err := s.cat.dropTable(db, table); err != nil {
		return fmt.Errorf("rdbstandin: dropping table %s.%s: %w", db, table, err)
	}
	return nil
}

// Databases lists the databases and their tables (the system database
// "rethinkdb" left out), for tests to see what queries wrote.
func (s *Server) Databases() map[string][]string {
	out := map[string][]string{}
	for _, db := range s.cat.dbNames() {
		if db == systemDB {
			continue
		}
		tables, err := s.cat.tableNames(db)
		if err != nil {
			continue // dropped in between
		}
		out[db] = tables
	}
	return out
}

// SetRefuse(true) stops listening and drops every open connection, so new
// dials get a real "connection refused" from the kernel (a database that is
// down). SetRefuse(false) listens on the same address again; if the port
// cannot be bound at once it keeps retrying in the background until it can
// or the server is closed.
func (s *Server) SetRefuse(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || on == s.refusing {
		return
	}
	s.refusing = on
	if on {
		if s.ln != nil {
			_ = s.ln.Close()
			s.ln = nil
		}
		for c := range s.conns {
			_ = c.Close()
		}
		return
	}
	if err := s.relistenLocked(); err != nil {
		s.wg.Add(1)
		go s.relistenLoop()
	}
}

// relistenLocked binds s.addr again and starts accepting. s.mu is held.
func (s *Server) relistenLocked() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return nil
}

func (s *Server) relistenLoop() {
	defer s.wg.Done()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.closed || s.refusing || s.ln != nil {
			s.mu.Unlock()
			return
		}
		err := s.relistenLocked()
		s.mu.Unlock()
		if err == nil {
			return
		}
	}
}

// Close stops listening, drops every connection and waits for the server's
// goroutines to end. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.cancel()
	var err error
	if s.ln != nil {
		err = s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. out of file descriptors): back off, retry.
			select {
			case <-s.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.mu.Lock()
		if s.closed || s.refusing || len(s.conns) >= MaxConnections {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// conn is one client connection after the handshake.
type conn struct {
	s      *Server
	c      net.Conn
	ctx    context.Context // ends when the connection or the server ends
	wmu    sync.Mutex
	sem    chan struct{}
	qwg    sync.WaitGroup
	imu    sync.Mutex
	flight map[uint64]context.CancelFunc // running START queries by token
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		_ = c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	_ = c.SetDeadline(time.Now().Add(HandshakeTimeout))
	br := bufio.NewReaderSize(c, 4096)
	if err := handshake(br, c, s.cred, MaxHandshakeMessage); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})

	cn := &conn{s: s, c: c, ctx: ctx, sem: make(chan struct{}, MaxInFlightPerConn), flight: map[uint64]context.CancelFunc{}}
	// On the way out: cancel running queries, then wait for them.
	defer cn.qwg.Wait()
	defer cancel()
	for {
		token, payload, err := readFrame(br, MaxQueryBytes)
		if err != nil {
			return // EOF, a closed connection, or an oversized frame
		}
		if !cn.dispatch(token, payload) {
			return
		}
	}
}

// dispatch handles one query frame; false means the connection must close.
func (cn *conn) dispatch(token uint64, payload []byte) bool {
	q, err := parseQuery(payload)
	if err != nil {
		cn.write(token, clientError("Client is buggy (failed to deserialize query): "+err.Error()))
		return true
	}
	switch q.Type {
	case p.Query_STOP:
		cn.imu.Lock()
		if cancel, ok := cn.flight[token]; ok {
			cancel()
			delete(cn.flight, token)
		}
		cn.imu.Unlock()
		cn.write(token, sequenceResponse(nil))
		return true
	case p.Query_START, p.Query_CONTINUE, p.Query_NOREPLY_WAIT, p.Query_SERVER_INFO:
	default:
		cn.write(token, clientError(fmt.Sprintf("Unrecognized QueryType %d.", q.Type)))
		return true
	}

	select {
	case cn.sem <- struct{}{}:
	case <-cn.ctx.Done():
		return false
	}
	qctx, qcancel := context.WithCancel(cn.ctx)
	if q.Type == p.Query_START {
		cn.imu.Lock()
		if _, dup := cn.flight[token]; dup {
			cn.imu.Unlock()
			qcancel()
			<-cn.sem
			cn.write(token, clientError(fmt.Sprintf("ERROR: duplicate token %d", token)))
			return true
		}
		cn.flight[token] = qcancel
		cn.imu.Unlock()
	}
	cn.qwg.Add(1)
	go func() {
		defer cn.qwg.Done()
		defer func() { <-cn.sem }()
		defer qcancel()
		resp := cn.s.answer(token, q)
		if d := time.Duration(cn.s.latency.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-qctx.Done():
				t.Stop()
			}
		}
		if q.Type == p.Query_START {
			cn.imu.Lock()
			_, still := cn.flight[token]
			delete(cn.flight, token)
			cn.imu.Unlock()
			if !still || qctx.Err() != nil { // stopped by the client, or connection gone
				return
			}
			if q.noreply() {
				return
			}
		}
		cn.write(token, resp)
	}()
	return true
}

// answer computes the response to a non-STOP query.
func (s *Server) answer(token uint64, q *query) response {
	switch q.Type {
	case p.Query_SERVER_INFO:
		return response{T: p.Response_SERVER_INFO, R: []any{map[string]any{
			"id": s.serverID, "name": ServerName, "proxy": false,
		}}}
	case p.Query_NOREPLY_WAIT:
		return response{T: p.Response_WAIT_COMPLETE, R: []any{}}
	case p.Query_CONTINUE:
		// Every result is sent whole, so there is never a stream to continue.
		return clientError(fmt.Sprintf("Token %d not in stream cache.", token))
	}
	if !q.HasTerm {
		return clientError("START query without a term.")
	}
	if msg := s.failText.Load(); msg != nil && *msg != "" {
		return runtimeError(&reqlError{p.Response_OP_FAILED, *msg})
	}
	ev := &evaluator{cat: s.cat, defaultDB: DefaultDB}
	if dbTerm, ok := q.Opts["db"]; ok {
		db, err := ev.evalDB(dbTerm, 1)
		if err != nil {
			return errResponse(err)
		}
		ev.defaultDB = db
	}
	return ev.run(q.Term)
}

func errResponse(err error) response {
	var re *reqlError
	if errors.As(err, &re) {
		return runtimeError(re)
	}
	return runtimeError(&reqlError{p.Response_INTERNAL, err.Error()})
}

// write sends one response frame; a failed write closes the connection.
func (cn *conn) write(token uint64, r response) {
	body, err := json.Marshal(r)
	if err != nil {
		body, _ = json.Marshal(runtimeError(&reqlError{p.Response_INTERNAL, "rdbstandin: encoding response: " + err.Error()}))
	}
	frame := appendFrame(make([]byte, 0, frameHeaderLen+len(body)), token, body)
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	_ = cn.c.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if _, err := cn.c.Write(frame); err != nil {
		_ = cn.c.Close()
	}
}
