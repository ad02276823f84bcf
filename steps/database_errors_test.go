package steps_test

import (
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// A RethinkDB that is down or slow is retried; a refused login and a bad
// address are configuration errors that say what to fix.
func TestRethinkDBErrorClasses(t *testing.T) {
	srv, err := rdbstandin.Start(rdbstandin.Options{Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s := step(t, "rethinkdb_databases")
	env := func(addr, pass string) *steps.Env {
		return &steps.Env{Settings: config.Settings{"RETHINKDB_PASS": pass}, Spec: messages.FleetCluster{Application: messages.FleetApplication{
			RethinkDB: messages.FleetRethinkDB{Addr: addr, Databases: []string{"org_a__b"}}}}}
	}
	if p := plan(t, s, env(srv.Addr(), "pw")); p.Action != messages.ActionCreate {
		t.Fatalf("plan = %+v", p)
	}
	for _, tc := range []struct {
		name, want, class string
		env               *steps.Env
		fault             func()
		timeout           time.Duration
	}{
		{"refused", "connection refused", messages.StepErrRetryable, env(srv.Addr(), "pw"), func() { srv.SetRefuse(true) }, 5 * time.Second},
		{"slow", "timeout", messages.StepErrRetryable, env(srv.Addr(), "pw"), func() { srv.SetRefuse(false); srv.SetLatency(3 * time.Second) }, time.Second},
		{"wrong password", "Wrong password", messages.StepErrConfig, env(srv.Addr(), "nope"), func() { srv.SetLatency(0) }, 5 * time.Second},
		{"bad address", "application.rethinkdb.addr", messages.StepErrConfig, env("not an address", "pw"), func() {}, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fault()
			_, err := s.Plan(ctxT(t, tc.timeout), tc.env)
			if got := steps.Classify(err); got != tc.class || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v classed %q, want %q containing %q", err, got, tc.class, tc.want)
			}
			if strings.Contains(err.Error(), "pw") && tc.name != "bad address" {
				t.Fatalf("the password is in the error: %v", err)
			}
		})
	}
}
