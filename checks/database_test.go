package checks

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRethinkDBTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed := closedAddr(t)
	for _, tc := range []struct {
		name   string
		addr   *RethinkDBAddress
		status string
		msg    string
	}{
		{"open", &RethinkDBAddress{Address: ln.Addr().String(), Source: "loadbalancer"}, messages.CheckPass, ln.Addr().String() + " (loadbalancer) accepts TCP"},
		{"refused", &RethinkDBAddress{Address: closed, Source: "nodeport", Detail: "node n1"}, messages.CheckFail,
			"TCP connect to RethinkDB at " + closed + " (nodeport, node n1): connection refused"},
		{"no address", nil, messages.CheckUnknown, "no address from rethinkdb_address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cx := newCheckEnv(testEnv(nil), nil)
			defer cx.close()
			if tc.addr != nil {
				cx.Put(rdbAddressKey, *tc.addr)
			}
			r := checkRethinkDBTCP(context.Background(), cx)
			if r.Status != tc.status || !strings.Contains(r.Message, tc.msg) {
				t.Fatalf("%s %q, want %s containing %q", r.Status, r.Message, tc.status, tc.msg)
			}
		})
	}
}

func TestRethinkDBAddressFromSetting(t *testing.T) {
	for _, tc := range []struct {
		setting, want, wantErr string
	}{
		{"127.0.0.1:28016", "127.0.0.1:28016", ""},
		{"rdb.example", "rdb.example:28015", ""},
		{"::1", "[::1]:28015", ""},
		{"[::1]:1", "[::1]:1", ""},
		{"host:notaport", "", "bad host or port"},
		{"a b", "", "is not host[:port]"},
	} {
		cx := newCheckEnv(testEnv(map[string]string{"RETHINKDB_ADDR": tc.setting}), nil)
		a, err := findRethinkDB(context.Background(), cx)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "RETHINKDB_ADDR") {
				t.Errorf("%q: error %v, want %q", tc.setting, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.setting, err)
		case a.Address != tc.want || a.Source != "setting":
			t.Errorf("%q: %+v, want %s from setting", tc.setting, a, tc.want)
		}
	}
}

func TestRethinkDBQueryRefused(t *testing.T) {
	closed := closedAddr(t)
	cx := newCheckEnv(testEnv(nil), nil)
	defer cx.close()
	cx.Put(rdbAddressKey, RethinkDBAddress{Address: closed, Source: "setting"})
	r := checkRethinkDBQuery(context.Background(), cx)
	if r.Status != messages.CheckFail || !strings.Contains(r.Message, closed) {
		t.Fatalf("%s %q", r.Status, r.Message)
	}
	cx.Put(rdbDatabasesKey, []string{"rethinkdb", "org_a__main"})
	for _, tc := range []struct {
		want, status, msg string
	}{
		{"", messages.CheckNotConfigured, "not configured: METAGN_RDB_DATABASES is not set"},
		{"org_a__main", messages.CheckPass, "all 1 configured databases present"},
		{"org_a__main, org_b__main,org_c__x", messages.CheckFail, "databases missing: org_b__main, org_c__x"},
	} {
		cx.Env.Settings = config.Settings{"METAGN_RDB_DATABASES": tc.want}
		r := checkRethinkDBDatabases(context.Background(), cx)
		if r.Status != tc.status || !strings.Contains(r.Message, tc.msg) {
			t.Errorf("%q: %s %q", tc.want, r.Status, r.Message)
		}
	}
}

func TestDatabaseChainBlockedWithoutKube(t *testing.T) {
	settings := map[string]string{"KUBECONFIG": "/nonexistent/kubeconfig", "RETHINKDB_ADDR": "127.0.0.1:1"}
	res := runNamed(t, BuiltinChecks(), settings, "rethinkdb_databases")
	if r := res["kube_api_ready"]; r.Status != messages.CheckFail || !strings.Contains(r.Message, "/nonexistent/kubeconfig") {
		t.Fatalf("kube_api_ready: %s %q", r.Status, r.Message)
	}
	for _, n := range []string{"rethinkdb_pods_ready", "rethinkdb_address", "rethinkdb_tcp", "rethinkdb_query", "rethinkdb_databases"} {
		if r := res[n]; r.Status != messages.CheckSkipped || r.BlockedBy != "kube_api_ready" {
			t.Errorf("%s: %s blocked_by %q", n, r.Status, r.BlockedBy)
		}
	}
}
