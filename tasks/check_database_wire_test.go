package tasks

import (
	"context"
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
