package messages

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseWaves(t *testing.T) {
	got, err := ParseWaves("staging;eu-1,eu-2;us-1")
	if err != nil || !reflect.DeepEqual(got, [][]string{{"staging"}, {"eu-1", "eu-2"}, {"us-1"}}) {
		t.Fatalf("%v %v", got, err)
	}
	if w, err := ParseWaves(""); err != nil || w != nil {
		t.Fatalf("empty: %v %v", w, err)
	}
	for in, want := range map[string]string{
		"a;;b":  `wave 2: cluster ""`,
		"a;a":   `"a" is in more than one wave`,
		"a,b c": `cluster "b c"`,
	} {
		if _, err := ParseWaves(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func TestRolloutStartRequestValidate(t *testing.T) {
	neg := -1
	for _, c := range []struct {
		req  RolloutStartRequest
		want string
	}{
		{RolloutStartRequest{V: 1, OnFailure: "explode"}, "on_failure"},
		{RolloutStartRequest{V: 1, MinHealthy: "soon"}, "min_healthy"},
		{RolloutStartRequest{V: 1, HealthyDeadline: "-1s"}, "healthy_deadline"},
		{RolloutStartRequest{V: 1, Canary: &neg}, "canary"},
		{RolloutStartRequest{V: 1, MaxParallel: -2}, "max_parallel"},
		{RolloutStartRequest{V: 1, Waves: "x;;y"}, "waves"},
	} {
		if err := c.req.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %s", c.req, err, c.want)
		}
	}
	ok := RolloutStartRequest{V: 1, Waves: "a;b", MaxParallel: 2, MinHealthy: "1s", OnFailure: "pause"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeRollout(f *testing.F) {
	seed(f, `{"v":1,"spec":{"apiVersion":"metaguildnet/v1","kind":"Fleet","clusters":[]},"waves":"a;b,c","max_parallel":2,"canary":1,"min_healthy":"1s","on_failure":"pause"}`,
		`{"v":1,"id":"r1"}`, `{"v":1,"from":1,"to":2}`,
		`{"v":1,"rollout":{"id":"r1","status":"running","from_revision":1,"to_revision":2,"waves":[{"clusters":["a"],"status":"running"}],"batches":[{"cluster":"a","nodes":["n1"],"status":"gating","started":"2026-01-01T00:00:00Z","finished":null,"gate":{"status":"holding","checks_failed":[]}}],"nodes":[{"name":"n1","cluster":"a","status":"updating"}]},"progress":{"v":1,"id":"r1","status":"running","eta_ms":-1}}`,
		`{"v":1,"rollouts":[{"id":"r1","status":"failed","clusters":["a"],"started":"2026-01-01T00:00:00Z"}]}`,
		`{"v":1,"from":1,"to":2,"rows":[{"cluster":"a","field":"network.routes","from":"[]","to":"[\"10.1.0.0/24\"]"}]}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[RolloutStartRequest](t, b)
		roundTrip[RolloutStartReply](t, b)
		roundTrip[RolloutRequest](t, b)
		roundTrip[RolloutListRequest](t, b)
		roundTrip[RolloutStatusReply](t, b)
		roundTrip[RolloutProgress](t, b)
		roundTrip[RolloutListReply](t, b)
		roundTrip[RolloutDiffRequest](t, b)
		roundTrip[RolloutDiffReply](t, b)
	})
}
