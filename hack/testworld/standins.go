package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
)

// The stand-ins for what cannot run on these machines (see each package's
// doc). Each one adds its addresses to the env file and its port to what
// `testworld exec` forwards.

type rdb struct{ s *rdbstandin.Server }

func (r rdb) name() string { return "rethinkdb stand-in" }
func (r rdb) close()       { _ = r.s.Close() }

// GuildNet's database naming: org_<org>__<db> with meta tables.
var rdbDatabases = map[string][]string{
	"org_demo__main": {"_schemas", "_audit", "_info"},
}

func (w *world) startStandins(ctx context.Context) error {
	s, err := rdbstandin.Start(rdbstandin.Options{Databases: rdbDatabases})
	if err != nil {
		return fmt.Errorf("start rethinkdb stand-in: %w", err)
	}
	w.standins = append(w.standins, rdb{s})
	w.add("RETHINKDB_ADDR", s.Addr(), "RethinkDB STAND-IN (wire protocol, SCRAM-SHA-256), not a real RethinkDB")
	w.add("RETHINKDB_USER", rdbstandin.DefaultUser, "")
	w.add("RETHINKDB_PASS", "", "")
	w.addPort(s.Addr())
	log("rethinkdb stand-in at %s", s.Addr())

	if err := w.startTalos(ctx); err != nil {
		return err
	}
	return w.startHostApp(ctx)
}

// startTalos: INTEGRATION POINT for internal/testenv/talosstandin (not yet
// committed when this was written). It must set TALOS_ENDPOINT (its
// Endpoint()) and TALOSCONFIG (WriteTalosconfig(DIR/talosconfig)), with
// Options.Endpoint = the kube-apiserver URL and SetKubeconfig(the
// kubeconfig), and addPort its endpoint.
func (w *world) startTalos(context.Context) error {
	w.add("TALOS_ENDPOINT", "", "NOT AVAILABLE: Talos apid stand-in not integrated yet")
	w.add("TALOSCONFIG", "", "NOT AVAILABLE: Talos apid stand-in not integrated yet")
	_ = filepath.Join
	return nil
}

// startHostApp: INTEGRATION POINT for internal/testenv/hostappstandin (not
// written yet). It must set HOSTAPP_URL (https on 127.0.0.1) and addPort it.
func (w *world) startHostApp(context.Context) error {
	w.add("HOSTAPP_URL", "", "NOT AVAILABLE: GuildNet host-app stand-in not integrated yet")
	return nil
}
