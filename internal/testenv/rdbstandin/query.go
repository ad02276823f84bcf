package rdbstandin

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	p "gopkg.in/rethinkdb/rethinkdb-go.v6/ql2"
)

// frameHeaderLen is the query/response header: 8-byte token, 4-byte length.
const frameHeaderLen = 12

// errFrameTooLarge means a query frame announced more bytes than allowed; the
// connection cannot be resynchronised and is closed.
var errFrameTooLarge = errors.New("query frame too large")

// readFrame reads one [token][length][payload] frame, refusing payloads
// larger than max bytes.
func readFrame(r io.Reader, max int) (token uint64, payload []byte, err error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	token = binary.LittleEndian.Uint64(hdr[:8])
	n := binary.LittleEndian.Uint32(hdr[8:])
	if uint64(n) > uint64(max) {
		return token, nil, fmt.Errorf("%w: %d bytes, limit %d", errFrameTooLarge, n, max)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return token, nil, err
	}
	return token, payload, nil
}

// appendFrame appends a response frame for token with the JSON body.
func appendFrame(dst []byte, token uint64, body []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, token)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// query is a decoded client query: [type, term?, global optargs?].
type query struct {
	Type    p.Query_QueryType
	Term    any            // decoded JSON of the term, nil for non-START
	Opts    map[string]any // global optargs (db, noreply, profile, ...)
	HasTerm bool
}

// parseQuery decodes a query payload. Numbers stay json.Number so that large
// integers survive.
func parseQuery(b []byte) (*query, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var arr []any
	if err := d.Decode(&arr); err != nil {
		return nil, fmt.Errorf("query is not a JSON array: %w", err)
	}
	if d.More() {
		return nil, errors.New("trailing data after query")
	}
	if len(arr) == 0 || len(arr) > 3 {
		return nil, fmt.Errorf("query has %d elements, want 1 to 3", len(arr))
	}
	t, ok := asInt(arr[0])
	if !ok || t < 0 || t > math.MaxInt32 {
		return nil, errors.New("query type is not an integer")
	}
	q := &query{Type: p.Query_QueryType(t)}
	if len(arr) >= 2 {
		q.Term, q.HasTerm = arr[1], true
	}
	if len(arr) == 3 {
		opts, ok := arr[2].(map[string]any)
		if !ok {
			return nil, errors.New("query global optargs are not an object")
		}
		q.Opts = opts
	}
	return q, nil
}

// noreply reports whether the client asked for no response.
func (q *query) noreply() bool {
	v, _ := q.Opts["noreply"].(bool)
	return v
}

// response is a RethinkDB response body.
type response struct {
	T p.Response_ResponseType   `json:"t"`
	E p.Response_ErrorType      `json:"e,omitempty"`
	R []any                     `json:"r"`
	B []any                     `json:"b,omitempty"`
	N []p.Response_ResponseNote `json:"n,omitempty"`
}

func atomResponse(v any) response { return response{T: p.Response_SUCCESS_ATOM, R: []any{v}} }

func sequenceResponse(rows []any) response {
	if rows == nil {
		rows = []any{}
	}
	return response{T: p.Response_SUCCESS_SEQUENCE, R: rows}
}

func clientError(msg string) response {
	return response{T: p.Response_CLIENT_ERROR, R: []any{msg}, B: []any{}}
}

// reqlError is a runtime error of a given RethinkDB error type.
type reqlError struct {
	Type p.Response_ErrorType
	Msg  string
}

func (e *reqlError) Error() string { return e.Msg }

func runtimeError(e *reqlError) response {
	return response{T: p.Response_RUNTIME_ERROR, E: e.Type, R: []any{e.Msg}, B: []any{}}
}

// Values an evaluated term can have besides plain datums.
type (
	dbValue    struct{ name string }
	tableValue struct{ db, name string }
	streamVal  struct{ rows []any } // a sequence that answers as SUCCESS_SEQUENCE
)

// maxTermDepth bounds recursion when evaluating a term tree.
const maxTermDepth = 64

// evaluator evaluates a term against a snapshot of the catalog.
type evaluator struct {
	cat       *catalog
	defaultDB string
}

func (ev *evaluator) eval(term any, depth int) (any, error) {
	if depth > maxTermDepth {
		return nil, &reqlError{p.Response_RESOURCE_LIMIT, fmt.Sprintf("Query nested deeper than %d terms.", maxTermDepth)}
	}
	switch t := term.(type) {
	case nil, bool, string, json.Number:
		return t, nil
	case map[string]any: // a literal object; its values are terms
		out := make(map[string]any, len(t))
		for k, v := range t {
			ev2, err := ev.evalDatum(v, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = ev2
		}
		return out, nil
	case []any:
		return ev.evalTerm(t, depth)
	default:
		return nil, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Unexpected JSON value of type %T in query.", term)}
	}
}

// evalDatum evaluates a term that must yield a datum (not a db or table).
func (ev *evaluator) evalDatum(term any, depth int) (any, error) {
	v, err := ev.eval(term, depth)
	if err != nil {
		return nil, err
	}
	switch x := v.(type) {
	case dbValue:
		return nil, &reqlError{p.Response_QUERY_LOGIC, "Expected type DATUM but found DATABASE."}
	case tableValue:
		rows, err := ev.cat.rows(x.db, x.name)
		if err != nil {
			return nil, err
		}
		return rows, nil
	case streamVal:
		return x.rows, nil
	}
	return v, nil
}

func (ev *evaluator) evalTerm(t []any, depth int) (any, error) {
	if len(t) == 0 || len(t) > 3 {
		return nil, &reqlError{p.Response_QUERY_LOGIC, "Expected a term of 1 to 3 elements."}
	}
	typ, ok := asInt(t[0])
	if !ok || typ < 0 || typ > math.MaxInt32 {
		return nil, &reqlError{p.Response_QUERY_LOGIC, "Expected a term type number."}
	}
	var args []any
	if len(t) >= 2 {
		a, ok := t[1].([]any)
		if !ok {
			return nil, &reqlError{p.Response_QUERY_LOGIC, "Expected the term arguments to be an array."}
		}
		args = a
	}
	var optargs map[string]any
	if len(t) == 3 {
		o, ok := t[2].(map[string]any)
		if !ok {
			return nil, &reqlError{p.Response_QUERY_LOGIC, "Expected the term optargs to be an object."}
		}
		optargs = o
	}
	tt := p.Term_TermType(typ)
	wantArgs := func(lo, hi int) error {
		if len(args) < lo || len(args) > hi {
			if lo == hi {
				return &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Expected %d arguments but found %d.", lo, len(args))}
			}
			return &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Expected between %d and %d arguments but found %d.", lo, hi, len(args))}
		}
		return nil
	}
	switch tt {
	case p.Term_DATUM:
		if err := wantArgs(1, 1); err != nil {
			return nil, err
		}
		return args[0], nil
	case p.Term_MAKE_ARRAY:
		out := make([]any, 0, len(args))
		for _, a := range args {
			v, err := ev.evalDatum(a, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case p.Term_MAKE_OBJ:
		return ev.eval(optargs, depth+1)
	case p.Term_DB_LIST:
		if err := wantArgs(0, 0); err != nil {
			return nil, err
		}
		return stringsToAny(ev.cat.dbNames()), nil
	case p.Term_DB:
		if err := wantArgs(1, 1); err != nil {
			return nil, err
		}
		name, err := ev.evalString(args[0], depth+1)
		if err != nil {
			return nil, err
		}
		if !ev.cat.hasDB(name) {
			return nil, errNoDB(name)
		}
		return dbValue{name}, nil
	case p.Term_TABLE_LIST:
		if err := wantArgs(0, 1); err != nil {
			return nil, err
		}
		db := ev.defaultDB
		if len(args) == 1 {
			d, err := ev.evalDB(args[0], depth+1)
			if err != nil {
				return nil, err
			}
			db = d
		}
		tables, err := ev.cat.tableNames(db)
		if err != nil {
			return nil, err
		}
		return stringsToAny(tables), nil
	case p.Term_DB_CREATE, p.Term_DB_DROP:
		if err := wantArgs(1, 1); err != nil {
			return nil, err
		}
		name, err := ev.evalString(args[0], depth+1)
		if err != nil {
			return nil, err
		}
		if tt == p.Term_DB_CREATE {
			return ev.cat.createDB(name)
		}
		return ev.cat.dropDB(name)
	case p.Term_TABLE_CREATE, p.Term_TABLE_DROP:
		if err := wantArgs(1, 2); err != nil {
			return nil, err
		}
		db, nameArg := ev.defaultDB, args[0]
		if len(args) == 2 {
			d, err := ev.evalDB(args[0], depth+1)
			if err != nil {
				return nil, err
			}
			db, nameArg = d, args[1]
		}
		name, err := ev.evalString(nameArg, depth+1)
		if err != nil {
			return nil, err
		}
		if tt == p.Term_TABLE_DROP {
			return ev.cat.dropTable(db, name)
		}
		pk := ""
		if v, ok := optargs["primary_key"]; ok {
			if pk, err = ev.evalString(v, depth+1); err != nil {
				return nil, err
			}
		}
		return ev.cat.createTable(db, name, pk)
	case p.Term_TABLE:
		if err := wantArgs(1, 2); err != nil {
			return nil, err
		}
		db, nameArg := ev.defaultDB, args[0]
		if len(args) == 2 {
			d, err := ev.evalDB(args[0], depth+1)
			if err != nil {
				return nil, err
			}
			db, nameArg = d, args[1]
		}
		name, err := ev.evalString(nameArg, depth+1)
		if err != nil {
			return nil, err
		}
		if _, err := ev.cat.rows(db, name); err != nil {
			return nil, err
		}
		return tableValue{db, name}, nil
	case p.Term_LIMIT:
		if err := wantArgs(2, 2); err != nil {
			return nil, err
		}
		seq, stream, err := ev.evalSequence(args[0], depth+1)
		if err != nil {
			return nil, err
		}
		n, err := ev.evalInt(args[1], depth+1)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("LIMIT takes a non-negative argument (got %d)", n)}
		}
		if n < int64(len(seq)) {
			seq = seq[:n]
		}
		if stream {
			return streamVal{seq}, nil
		}
		return seq, nil
	case p.Term_COUNT:
		if err := wantArgs(1, 1); err != nil {
			return nil, err
		}
		seq, _, err := ev.evalSequence(args[0], depth+1)
		if err != nil {
			return nil, err
		}
		return json.Number(fmt.Sprint(len(seq))), nil
	}
	name := p.Term_TermType_name[int32(tt)]
	if name == "" {
		name = "UNKNOWN"
	}
	return nil, &reqlError{p.Response_QUERY_LOGIC,
		fmt.Sprintf("rdbstandin: term %s (%d) is not supported by this RethinkDB stand-in.", name, typ)}
}

// evalSequence evaluates a term to a sequence of rows; stream reports
// whether it came from a table (and so answers as a stream).
func (ev *evaluator) evalSequence(term any, depth int) (rows []any, stream bool, err error) {
	v, err := ev.eval(term, depth)
	if err != nil {
		return nil, false, err
	}
	switch x := v.(type) {
	case tableValue:
		rows, err := ev.cat.rows(x.db, x.name)
		return rows, true, err
	case streamVal:
		return x.rows, true, nil
	case []any:
		return x, false, nil
	}
	return nil, false, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Cannot convert %s to SEQUENCE", typeName(v))}
}

func (ev *evaluator) evalDB(term any, depth int) (string, error) {
	v, err := ev.eval(term, depth)
	if err != nil {
		return "", err
	}
	d, ok := v.(dbValue)
	if !ok {
		return "", &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Expected type DATABASE but found %s.", typeName(v))}
	}
	return d.name, nil
}

func (ev *evaluator) evalString(term any, depth int) (string, error) {
	v, err := ev.evalDatum(term, depth)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Expected type STRING but found %s.", typeName(v))}
	}
	return s, nil
}

func (ev *evaluator) evalInt(term any, depth int) (int64, error) {
	v, err := ev.evalDatum(term, depth)
	if err != nil {
		return 0, err
	}
	n, ok := asInt(v)
	if !ok {
		return 0, &reqlError{p.Response_QUERY_LOGIC, fmt.Sprintf("Expected type NUMBER (an integer) but found %s.", typeName(v))}
	}
	return n, nil
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "NULL"
	case bool:
		return "BOOL"
	case string:
		return "STRING"
	case json.Number:
		return "NUMBER"
	case []any:
		return "ARRAY"
	case map[string]any:
		return "OBJECT"
	case dbValue:
		return "DATABASE"
	case tableValue:
		return "TABLE"
	case streamVal:
		return "SEQUENCE"
	}
	return "DATUM"
}

// asInt converts a JSON number holding an integer.
func asInt(v any) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	if i, err := n.Int64(); err == nil {
		return i, true
	}
	f, err := n.Float64()
	if err != nil || f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}

func stringsToAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func errNoDB(name string) error {
	return &reqlError{p.Response_OP_FAILED, fmt.Sprintf("Database `%s` does not exist.", name)}
}

// run evaluates a START query's term and builds the response RethinkDB
// would send: a stream (a table, or a LIMIT of one) as SUCCESS_SEQUENCE,
// anything else as SUCCESS_ATOM.
func (ev *evaluator) run(term any) response {
	v, err := ev.eval(term, 0)
	if err != nil {
		return errResponse(err)
	}
	switch x := v.(type) {
	case dbValue:
		return runtimeError(&reqlError{p.Response_QUERY_LOGIC, "Query result must be of type DATUM, GROUPED_DATA, or STREAM (got DATABASE)."})
	case tableValue:
		rows, err := ev.cat.rows(x.db, x.name)
		if err != nil {
			return errResponse(err)
		}
		return sequenceResponse(slices.Clone(rows))
	case streamVal:
		return sequenceResponse(slices.Clone(x.rows))
	}
	return atomResponse(v)
}
