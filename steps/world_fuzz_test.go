package steps

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

// The decoders of the database and application steps: undo records (they
// come back from the controller's store) and the host app's config file.
// None may panic, and what they accept must stay within the step's own
// objects, databases and file.

func FuzzAppUndo(f *testing.F) {
	env := &Env{Spec: messages.FleetCluster{}}
	objs, err := operatorObjects(env)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		`{"created":[{"group":"apps","version":"v1","resource":"deployments","namespace":"guildnet-system","name":"workspace-operator"}]}`,
		`{"created":[{"group":"apps","version":"v1","resource":"deployments","namespace":"kube-system","name":"coredns"}]}`,
		`{"updated":[{"group":"apps","version":"v1","resource":"deployments","namespace":"guildnet-system","name":"workspace-operator","fields":[{"path":["spec","replicas"],"value":0}]}]}`,
		`{"updated":[{"version":"v1","resource":"namespaces","name":"guildnet-system","fields":[{"path":["metadata","labels","a"],"absent":true}]}]}`,
		`{"updated":[{"version":"v1","resource":"namespaces","name":"guildnet-system","fields":[{"path":["metadata","name"],"value":"x"}]}]}`,
		`{"updated":[{"version":"v1","resource":"namespaces","name":"guildnet-system","fields":[{"path":[],"value":1}]}]}`,
		`null`, ``, `{}`, `[]`, `{"created":5}`,
	} {
		f.Add([]byte(s))
	}
	own := map[appRef]bool{}
	for _, o := range objs {
		own[refOf(o)] = true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := decodeAppUndo(b, objs)
		if err != nil {
			return
		}
		for _, r := range u.Created {
			if !own[r] {
				t.Fatalf("accepted a foreign object %+v", r)
			}
		}
		for _, p := range u.Updated {
			if !own[p.appRef] {
				t.Fatalf("accepted a foreign object %+v", p.appRef)
			}
			for _, fl := range p.Fields {
				if len(fl.Path) == 0 || fl.Path[0] == "status" || fl.Path[0] == "kind" || fl.Path[0] == "apiVersion" {
					t.Fatalf("accepted field %q", fl.Path)
				}
				if !fl.Absent && !json.Valid(fl.Value) {
					t.Fatalf("accepted a value that is not JSON: %q", fl.Value)
				}
			}
		}
	})
}

func FuzzRDBUndo(f *testing.F) {
	spec := []string{"org_demo__main", "org_a__b"}
	for _, s := range []string{
		`{"dbs":["org_demo__main"]}`, `{"tables":["org_a__b._info","org_a__b._audit"]}`,
		`{"dbs":["rethinkdb"]}`, `{"tables":["org_a__b.users"]}`, `{"tables":["x"]}`,
		`null`, ``, `{"dbs":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := decodeRDBUndo(b, spec)
		if err != nil {
			return
		}
		for _, d := range u.DBs {
			if !slices.Contains(spec, d) {
				t.Fatalf("accepted database %q", d)
			}
		}
		for _, dt := range u.Tables {
			d, tb, _ := strings.Cut(dt, ".")
			if !slices.Contains(spec, d) || !slices.Contains(RethinkDBMetaTables, tb) {
				t.Fatalf("accepted table %q", dt)
			}
		}
	})
}

func FuzzHostAppUndo(f *testing.F) {
	for _, s := range []string{
		`{"path":"/home/u/.guildnet/config.json","existed":true,"backup":"/home/u/.guildnet/config.json.metaguildnet-prev"}`,
		`{"path":"/x/config.json","existed":false}`, `{"path":"rel"}`, `{"path":"/a/../b"}`, `null`, ``, `{"existed":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := decodeHostAppUndo(b)
		if err != nil || u == nil {
			return
		}
		if !strings.HasPrefix(u.Path, "/") || (u.Existed && u.Backup == "") {
			t.Fatalf("accepted %+v", u)
		}
	})
}

func FuzzHostAppConfig(f *testing.F) {
	for _, s := range []string{
		`{"listen_local":"127.0.0.1:8090","name":"x","auth_key":"k","other":[1,2]}`, `null`, ``, `  `, `[]`, `"s"`, `{"a":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseHostAppConfig(b)
		if err == nil && m == nil {
			t.Fatalf("nil config without an error for %q", b)
		}
		if err == nil {
			_ = hostAppChanges(m, map[string]string{"name": "x", "auth_key": "k"}, true, 0o644)
		}
	})
}
