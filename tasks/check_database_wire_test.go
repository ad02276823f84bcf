package tasks

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
)

// The minimal client against the RethinkDB wire-protocol stand-in (the
// same one the real rethinkdb-go driver is tested against).
func TestRethinkDBWireClient(t *testing.T) {
	srv, err := rdbstandin.Start(rdbstandin.Options{User: "guildnet", Password: "s3cret,=x", Databases: map[string][]string{"org_a__main": {"_info"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	conn, err := rdbDial(ctx, srv.Addr(), "guildnet", "s3cret,=x")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // two queries on one connection: tokens advance
		dbs, err := conn.DBList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(dbs, "org_a__main") || !slices.Contains(dbs, "rethinkdb") {
			t.Fatalf("dbs %v", dbs)
		}
	}
	srv.SetFailQueries("table full")
	if _, err := conn.DBList(ctx); err == nil || !strings.Contains(err.Error(), "table full") {
		t.Errorf("failing query: %v", err)
	}
	conn.Close()
	srv.SetFailQueries("")

	for _, tc := range []struct {
		name, user, pass, want string
	}{
		{"wrong password", "guildnet", "nope", "refused: Wrong password (error 12)"},
		{"unknown user", "mallory", "nope", "refused: Unknown user (error 17)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rdbDial(ctx, srv.Addr(), tc.user, tc.pass)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}

	// The query's latency is measured against the deadline.
	srv.SetLatency(300 * time.Millisecond)
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	conn, err = rdbDial(ctx, srv.Addr(), "guildnet", "s3cret,=x")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.DBList(short); err == nil || time.Since(start) > time.Second {
		t.Errorf("slow query past its deadline: err %v after %s", err, time.Since(start))
	}
}

// Something that is not RethinkDB on the port: refused cleanly.
func TestRethinkDBWireNotRethinkDB(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n\x00"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = rdbDial(ctx, ln.Addr().String(), "admin", "")
	if err == nil || !strings.Contains(err.Error(), "server says: HTTP/1.1 400") {
		t.Fatalf("error %v", err)
	}
}

// FuzzRethinkDBWire feeds the client whatever a server might send: it must
// return an error or a list, never panic or hang.
func FuzzRethinkDBWire(f *testing.F) {
	ok := `{"success":true,"min_protocol_version":0,"max_protocol_version":0,"server_version":"2.4.4"}` + "\x00"
	f.Add([]byte(ok + `{"success":true,"authentication":"r=abc,s=c2FsdA==,i=4096"}` + "\x00"))
	f.Add([]byte(ok + `{"success":false,"error":"Wrong password","error_code":12}` + "\x00"))
	f.Add([]byte("ERROR: Received an unsupported protocol version.\x00"))
	f.Add([]byte(ok + `{"success":true,"authentication":"r=,s=,i=99999999999"}` + "\x00"))
	f.Add([]byte{0})
	f.Add([]byte(ok))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			go io.Copy(io.Discard, server)
			server.Write(data)
			server.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		conn, err := rdbHandshake(ctx, client, "admin", "")
		if err == nil {
			_, _ = conn.DBList(ctx)
			conn.Close()
		}
		if time.Since(start) > time.Second {
			t.Fatalf("took %s", time.Since(start))
		}
	})
}

// The response side of the protocol, after a real handshake.
func TestRethinkDBWireResponses(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		dbs              []string
	}{
		{"atom", `{"t":1,"r":[["a","b"]]}`, "", []string{"a", "b"}},
		{"sequence", `{"t":2,"r":["a"]}`, "", []string{"a"}},
		{"runtime error", `{"t":18,"r":["Database is read-only."]}`, "query error (type 18): Database is read-only.", nil},
		{"wrong shape", `{"t":1,"r":[42]}`, "not a list of names", nil},
		{"unknown type", `{"t":3,"r":[]}`, "unexpected response type 3", nil},
		{"not json", `nope`, "malformed response", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			go func() {
				defer server.Close()
				var head [12]byte
				if _, err := io.ReadFull(server, head[:]); err != nil {
					return
				}
				q := make([]byte, binary.LittleEndian.Uint32(head[8:12]))
				io.ReadFull(server, q)
				if string(q) != `[1,[59,[]],{}]` {
					t.Errorf("query %s", q)
				}
				out := make([]byte, 12, 12+len(tc.body))
				copy(out, head[:8])
				binary.LittleEndian.PutUint32(out[8:], uint32(len(tc.body)))
				server.Write(append(out, tc.body...))
			}()
			rc := &rdbConn{c: client, r: bufio.NewReader(client)}
			dbs, err := rc.DBList(t.Context())
			if tc.want == "" {
				if err != nil || !slices.Equal(dbs, tc.dbs) {
					t.Fatalf("%v %v", dbs, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
