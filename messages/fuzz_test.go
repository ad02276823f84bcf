package messages

import (
	"strings"
	"testing"
)

// Every decoder is fuzzed: none may panic, and whatever one accepts must
// validate and survive an encode/decode round trip.

func seed(f *testing.F, extra ...string) {
	for _, s := range append([]string{
		`{"v":1}`, `{}`, `[]`, `null`, ``, `{"v":1,"id":"t1","kind":"ping","deadline":"2026-01-01T00:00:00Z","issued_at":"2026-01-01T00:00:00Z"}`,
		`{"v":1,"task_id":"t1","outcome":"unknown","reason":"expired","output":{"a":[1,2]}}`,
		`{"v":1,"seq":3,"time":"2026-01-01T00:00:00Z","cluster":"a","labels":{"k":"v"},"facts":{"cpus":2,"addresses":["::1"]}}`,
		`{"v":1,"name":"n1","cluster":"a","role":"r","labels":{"x":"y"}}`,
		`{"v":1,"target":"cluster=a","kind":"ping","timeout":"5s","args":{"duration":"1s"}}`,
		`{"v":2}`, `{"v":1} {"v":1}`, "\x00\xff",
	}, extra...) {
		f.Add([]byte(s))
	}
}

func roundTrip[T any, PT interface {
	*T
	Message
}](t *testing.T, data []byte) {
	roundTripWith[T, PT](t, data, Decode[T, PT])
}

// argsRoundTrip is roundTrip for the strict task-argument decoder.
func argsRoundTrip[T any, PT interface {
	*T
	Message
}](t *testing.T, data []byte) {
	roundTripWith[T, PT](t, data, DecodeTaskArgs[T, PT])
}

func roundTripWith[T any, PT interface {
	*T
	Message
}](t *testing.T, data []byte, decode func([]byte, int) (T, error)) {
	v, err := decode(data, 4096)
	if err != nil {
		if CodeOf(err) == CodeInternal {
			t.Fatalf("error without a code: %v", err)
		}
		return
	}
	b, err := Encode(PT(&v))
	if err != nil {
		t.Fatalf("accepted %q but cannot encode it: %v", data, err)
	}
	if _, err := decode(b, 1<<20); err != nil {
		t.Fatalf("accepted %q, re-encoded %q, refused: %v", data, b, err)
	}
}

func FuzzDecodeTask(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Task](t, b) })
}

func FuzzDecodeResult(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Result](t, b) })
}

func FuzzDecodeResultBatch(f *testing.F) {
	seed(f, `{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t1","node":"n1","outcome":"ok","duration_ms":3}]}`,
		`{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t2","node":"n1","outcome":"ok"}]}`,
		`{"v":1,"task_id":"t1","results":[{"v":1,"task_id":"t1","node":"all","outcome":"ok"}]}`)
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[ResultBatch](t, b) })
}

func FuzzDecodeHeartbeat(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Heartbeat](t, b) })
}

func FuzzDecodeEnroll(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[EnrollRequest](t, b)
		roundTrip[EnrollReply](t, b)
	})
}

func FuzzDecodeSyncAndAck(f *testing.F) {
	seed(f, `{"v":1,"tasks":[{"v":1}]}`, `{"v":1,"task_id":"t1","started":true}`,
		`{"v":1,"kind":"layer_state","cluster":"a","layer":"host","from":"healthy","to":"unhealthy"}`,
		`{"v":1,"tasks":[],"heartbeat_interval":"5s"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[SyncRequest](t, b)
		roundTrip[SyncReply](t, b)
		roundTrip[Ack](t, b)
		roundTrip[ErrorReply](t, b)
		roundTrip[Event](t, b)
	})
}

func FuzzDecodeAPI(f *testing.F) {
	seed(f, `{"v":1,"task_id":"t1","wait":"1s"}`, `{"v":1,"ttl":"1h","reusable":true}`, `{"v":1,"name":"n1"}`, `{"v":1,"ttl":"90m"}`,
		`{"v":1,"ttl":"1h","urls":["nats://relay:4222","tls://[::1]:4443"]}`, `{"v":1,"urls":["nats://a:1,nats://b:2"]}`,
		`{"v":1,"url":"http://127.0.0.1:8222/login?token=abc","token":"abc","expires_at":"2026-01-01T00:00:00Z"}`,
		`{"v":1,"overall_status":"unhealthy","clusters":[{"name":"a","overall_status":"healthy","layers":[{"name":"host","status":"healthy"}]},{"name":"","overall_status":"unknown","layers":[{"name":"x","status":"unknown","reason":"r"}]}]}`,
		`{"v":1,"nodes":[],"clusters":[{"name":"a","overall_status":"degraded","layers":{"host":"degraded"},"last_verified":"2026-01-01T00:00:00Z"},{"name":""}]}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[StatusRequest](t, b)
		roundTrip[RunRequest](t, b)
		roundTrip[TaskWaitRequest](t, b)
		roundTrip[TokenCreateRequest](t, b)
		roundTrip[NodesRemoveRequest](t, b)
		roundTrip[NodesSetRequest](t, b)
		roundTrip[NodesSetReply](t, b)
		roundTrip[StatusReply](t, b)
		roundTrip[RunReply](t, b)
		roundTrip[TaskReport](t, b)
		roundTrip[TokenCreateReply](t, b)
		roundTrip[NodesRemoveReply](t, b)
		roundTrip[Report](t, b)
		roundTrip[VerifyRequest](t, b)
		roundTrip[VerifyReply](t, b)
		roundTrip[ReportLastRequest](t, b)
		roundTrip[DiagnoseRequest](t, b)
		roundTrip[DiagnoseReply](t, b)
		roundTrip[DashboardLoginRequest](t, b)
		roundTrip[DashboardLoginReply](t, b)
	})
}

func FuzzDecodeRelay(f *testing.F) {
	seed(f, `{"v":1,"after":"n1"}`, `{"v":1,"nodes":[{"name":"n1","public_key":"UCJO6MXJ4Y2H7JN6I36LWAOLV7BYMX3NG6T5UUPJFAPTZ3P2DIRUETZY"}],"next":"n1"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[RelayKeysRequest](t, b)
		roundTrip[RelayKeysReply](t, b)
	})
}

func FuzzDecodeRelayAdmit(f *testing.F) {
	seed(f, `{"v":1,"public_key":"UCJO6MXJ4Y2H7JN6I36LWAOLV7BYMX3NG6T5UUPJFAPTZ3P2DIRUETZY","token_hash":"`+strings.Repeat("ab", 32)+`"}`,
		`{"v":1,"expires_at":"2026-01-01T00:00:00Z"}`, `{"v":1,"expires_at":"9999-01-01T00:00:00Z"}`,
		`{"v":1,"public_key":"UCJO6MXJ4Y2H7JN6I36LWAOLV7BYMX3NG6T5UUPJFAPTZ3P2DIRUETZY","token_hash":"`+strings.Repeat("AB", 32)+`"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[RelayAdmitRequest](t, b)
		roundTrip[RelayAdmitReply](t, b)
	})
}

// A join token parses or fails; what parses encodes back to itself.
func FuzzJoinToken(f *testing.F) {
	for _, s := range []string{"mgnt_x", "mgnt_x.PIN", JoinToken{Secret: "mgnt_x", Pin: "p", URLs: []string{"nats://h:1", "tls://[::1]:2"}}.String(), "a..b", "mgnt_x.u="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		jt, err := ParseJoinToken(s)
		if err != nil {
			return
		}
		again, err := ParseJoinToken(jt.String())
		if err != nil || again.String() != jt.String() {
			t.Fatalf("%q parsed as %+v, which encodes as %q and parses as %+v (%v)", s, jt, jt.String(), again, err)
		}
	})
}

func FuzzDecodeTaskPayloads(f *testing.F) {
	seed(f, `{"v":1,"scope":"node","layers":["host"]}`, `{"v":1,"require":{"layers":["cluster"],"checks":["kube_api_ready"]}}`,
		`{"require":{"checks":["Bad Name"]}}`, `{"v":1,"checks":[{"name":"x","layer":"l","status":"not_configured","passed":true}]}`, `{"layers":["net work"]}`, `{"checks":["host_memory"],"scope":"all"}`,
		`{"v":1,"checks":[{"name":"host_memory","layer":"host","passed":true,"status":"pass","duration_ms":3,"node":"n1","observed":{"used_pct":12}}]}`,
		`{"v":1,"checks":[{"name":"x","status":"maybe"}]}`, `{"collectors":["logs","config"]}`,
		`{"v":1,"node":"n1","duration_ms":5,"sections":[{"name":"logs","lines":[{"source":"f","text":"t"}],"data":[{"source":"f"}]}],"findings":[{"id":"a","severity":"warning","symptoms":[{"id":"b","severity":"info"}]}]}`,
		`{"v":1,"diagnosis":{"status":"healthy","findings":[]},"sections":{"n1":[{"name":"system","metrics":{"cpu":1}}]},"notes":["x"]}`,
		`{"v":1,"diagnosis":{"status":"bad"}}`, `{"v":1,"pong":"n1","time":"2026-01-01T00:00:00.5Z"}`,
		`{"duration":"2s"}`, `{"v":1,"duration":"-1s"}`, `{"v":1,"slept":"2s"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[VerifyArgs](t, b)
		roundTrip[VerifyOutput](t, b)
		roundTrip[DiagnoseArgs](t, b)
		roundTrip[DiagnoseOutput](t, b)
		roundTrip[DiagnoseResult](t, b)
		roundTrip[PingOutput](t, b)
		roundTrip[SleepOutput](t, b)
		argsRoundTrip[SleepArgs](t, b)
		argsRoundTrip[VerifyArgs](t, b)
		argsRoundTrip[DiagnoseArgs](t, b)
	})
}

func FuzzDecodeBackup(f *testing.F) {
	seed(f, `{"v":1,"kind":"metaguildnet-backup","created_at":"2026-11-29T21:00:00Z","streams":[{"name":"KV_mgn_nodes","config":{"name":"KV_mgn_nodes"},"records":1}]}`,
		`{"stream":"KV_mgn_nodes","subject":"$KV.mgn_nodes.n1","headers":{"KV-Operation":["DEL"]},"data":"eyJ2IjoxfQ=="}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[BackupHeader](t, b)
		roundTrip[BackupRecord](t, b)
	})
}

func FuzzDecodeSetup(f *testing.F) {
	seed(f, `{"v":1,"spec":{"apiVersion":"metaguildnet/v1","kind":"Fleet","clusters":[{"name":"a","nodes":[{"name":"n1","role":"controlplane"}]}]},"cluster":"a","layer":"network","step_timeout":"1m"}`,
		`{"v":1,"rows":[{"cluster":"a","layer":"network","step":"s","node":"n1","action":"create","diff":"x"}]}`,
		`{"v":1,"run_id":"s1"}`,
		`{"v":1,"run":{"v":1,"run_id":"s1","status":"running","layers":[{"name":"network","status":"pending","steps":[]}]},"progress":{"v":1,"run_id":"s1","status":"running","eta_ms":-1,"clusters":[{"cluster":"a","layer":"network","done":1,"total":2,"running":{"n1":"s"}}]}}`,
		`{"v":1,"step":"tailscale_login","op":"apply","cluster":{"name":"a"},"undo":{"x":1},"inputs":{"headscale_user.id":"3"}}`,
		`{"v":1,"step":"s","op":"plan","action":"create","diff":"d","err_class":"retryable","outputs":{"a.b":"c"}}`,
		`{"v":1,"task_id":"t1","outcome":"ok","sealed":{"kubeconfig":"x"}}`,
		`{"v":1,"id":"t1","kind":"step","deadline":"2026-01-01T00:00:00Z","issued_at":"2026-01-01T00:00:00Z","sealed":{"talos.machine_config":"x"}}`,
		`{"v":1,"id":"t1","kind":"step","deadline":"2026-01-01T00:00:00Z","issued_at":"2026-01-01T00:00:00Z","sealed":{"../etc/passwd":"x"}}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[SetupRequest](t, b)
		roundTrip[SetupPlanReply](t, b)
		roundTrip[SetupApplyReply](t, b)
		roundTrip[SetupStatusRequest](t, b)
		roundTrip[SetupStatusReply](t, b)
		roundTrip[SetupProgress](t, b)
		roundTrip[SetupRun](t, b)
		roundTrip[StepOutput](t, b)
		argsRoundTrip[StepArgs](t, b)
		roundTrip[Task](t, b)
		roundTrip[Result](t, b)
	})
}
