package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
)

// TestKVListChildServer is not a test: jsCluster runs the test binary with
// it as a NATS server process of its own, so that it can be killed with
// SIGKILL (an in-process Shutdown hands its leaderships over first).
func TestKVListChildServer(t *testing.T) {
	cfg := os.Getenv("MGN_KVLIST_CHILD")
	if cfg == "" {
		return // run as a child only
	}
	var co childOpts
	if err := json.Unmarshal([]byte(cfg), &co); err != nil {
		t.Fatal(err)
	}
	o := server.Options{ServerName: co.Name, Host: "127.0.0.1", Port: co.Port, JetStream: true, StoreDir: co.StoreDir,
		HTTPHost: "127.0.0.1", HTTPPort: co.HTTPPort, NoLog: true, NoSigs: true,
		Cluster: server.ClusterOpts{Name: "kvlist", Host: "127.0.0.1", Port: co.ClusterPort}}
	for _, r := range co.Routes {
		o.Routes = append(o.Routes, &url.URL{Scheme: "nats", Host: r})
	}
	s, err := server.NewServer(&o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	s.WaitForShutdown()
}

type childOpts struct {
	Name                        string
	Port, HTTPPort, ClusterPort int
	StoreDir                    string
	Routes                      []string
}

type childServer struct {
	name, client, http string
	cmd                *exec.Cmd
}

// jsCluster starts three routed JetStream servers on loopback, each a
// process of its own.
func jsCluster(t *testing.T) []*childServer {
	t.Helper()
	ports := freeport.Get(t, 9)
	var srvs []*childServer
	for i := range 3 {
		o := childOpts{Name: fmt.Sprintf("s%d", i), Port: ports[i], HTTPPort: ports[3+i], ClusterPort: ports[6+i], StoreDir: t.TempDir()}
		for j := range 3 {
			if j != i {
				o.Routes = append(o.Routes, fmt.Sprintf("127.0.0.1:%d", ports[6+j]))
			}
		}
		b, _ := json.Marshal(o)
		cmd := exec.Command(os.Args[0], "-test.run", "^TestKVListChildServer$")
		cmd.Env = append(os.Environ(), "MGN_KVLIST_CHILD="+string(b))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		srvs = append(srvs, &childServer{name: o.Name, client: fmt.Sprintf("nats://127.0.0.1:%d", ports[i]),
			http: fmt.Sprintf("http://127.0.0.1:%d", ports[3+i]), cmd: cmd})
	}
	poll.Until(t, 60*time.Second, "a JetStream meta leader", func() bool { return metaLeader(srvs) >= 0 })
	return srvs
}

// metaLeader is the index of the meta leader as the running servers see
// it (-1: none of them knows one).
func metaLeader(srvs []*childServer) int {
	for _, s := range srvs {
		if s.cmd.ProcessState != nil {
			continue
		}
		l := s.metaLeaderName()
		for i, o := range srvs {
			if l != "" && o.name == l && o.cmd.ProcessState == nil { // a dead leader some still name is none
				return i
			}
		}
	}
	return -1
}

func (s *childServer) metaLeaderName() string {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(s.http + "/jsz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var jz server.JSInfo
	if json.NewDecoder(resp.Body).Decode(&jz) != nil || jz.Meta == nil {
		return ""
	}
	return jz.Meta.Leader
}

// kvEntries and the object readers give what ListKeys/Get and GetBytes
// give (pages, deletes, updates, chunks), and they still answer from a
// survivor after the JetStream meta leader was lost, before a new one is
// elected: no consumer, so no meta leader needed.
func TestListWithoutConsumerSurvivesMetaLeaderLoss(t *testing.T) {
	srvs := jsCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nc, err := nats.Connect(srvs[0].client)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var kv jetstream.KeyValue
	// A meta leader is known before every peer has registered with it:
	// until then an R3 create is refused (minutes under -race on 2 busy
	// cores, with three race-built server processes).
	poll.UntilOK(t, 2*time.Minute, "bucket created", func() error {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		kv, err = js.CreateKeyValue(cctx, jetstream.KeyValueConfig{Bucket: "t", History: 1, Replicas: 3})
		return err
	})
	// More keys than one page, some deleted, some purged, some updated.
	const n = 1300
	for i := range n {
		if _, err := kv.Put(ctx, fmt.Sprintf("k%04d", i), []byte(fmt.Sprintf("v%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i += 10 {
		kv.Delete(ctx, fmt.Sprintf("k%04d", i))
	}
	for i := 5; i < n; i += 50 {
		kv.Purge(ctx, fmt.Sprintf("k%04d", i))
	}
	for i := 3; i < n; i += 7 {
		kv.Put(ctx, fmt.Sprintf("k%04d", i), []byte(fmt.Sprintf("new%d", i)))
	}
	want := map[string]string{}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		want[k] = string(e.Value())
	}
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "o", Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 40_000) // 640 KB: several chunks
	if _, err := obs.PutBytes(ctx, "big", big); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctx, "gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}

	check := func(js jetstream.JetStream, when string) {
		t.Helper()
		got, err := kvEntries(ctx, js, "t")
		if err != nil {
			t.Fatalf("%s: kvEntries: %v", when, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d entries, want %d", when, len(got), len(want))
		}
		if !slices.IsSortedFunc(got, func(a, b kvEntry) int { return cmpString(a.Key, b.Key) }) {
			t.Errorf("%s: entries not in key order", when)
		}
		for _, e := range got {
			if want[e.Key] != string(e.Value) {
				t.Errorf("%s: %s = %q, want %q", when, e.Key, e.Value, want[e.Key])
			}
		}
		infos, err := objList(ctx, js, "o")
		if err != nil || len(infos) != 1 || infos[0].Name != "big" {
			t.Fatalf("%s: objList = %v, %v; want only big", when, infos, err)
		}
		b, err := objGetBytes(ctx, js, "o", "big")
		if err != nil || !bytes.Equal(b, big) {
			t.Fatalf("%s: objGetBytes: %d bytes, %v", when, len(b), err)
		}
		if _, err := objGetBytes(ctx, js, "o", "gone"); err == nil {
			t.Errorf("%s: a deleted object was read", when)
		}
	}
	check(js, "steady")
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "empty", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if es, err := kvEntries(ctx, js, "empty"); err != nil || len(es) != 0 {
		t.Errorf("empty bucket: %v, %v", es, err)
	}
	if _, err := kvEntries(ctx, js, "missing"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing bucket: %v, want an error naming it", err)
	}

	// Move every stream leadership off the meta leader, then kill it.
	ml := metaLeader(srvs)
	for _, st := range []string{"KV_t", "OBJ_o"} {
		poll.Until(t, 30*time.Second, st+" led elsewhere", func() bool {
			s, err := js.Stream(ctx, st)
			if err != nil {
				return false
			}
			ci := s.CachedInfo().Cluster
			if ci != nil && ci.Leader != "" && ci.Leader != srvs[ml].name {
				return true
			}
			nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+st, nil, 2*time.Second)
			return false
		})
	}
	srvs[ml].cmd.Process.Kill()
	srvs[ml].cmd.Wait()
	survivor := srvs[(ml+1)%3]
	nc2, err := nats.Connect(survivor.client)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	if l := metaLeader(srvs); l >= 0 {
		t.Fatalf("a new meta leader (%s) right after the kill: the test cannot show reads without one", srvs[l].name)
	}
	check(js2, "meta leader lost")
	if l := metaLeader(srvs); l >= 0 {
		t.Fatalf("the reads were answered, but a new meta leader (%s) was elected meanwhile: they may have waited for it", srvs[l].name)
	}
	// A consumer, in the same window, is refused: that is what activation
	// no longer needs.
	kv2, err := js2.KeyValue(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	lctx, lcancel := context.WithTimeout(ctx, time.Second)
	defer lcancel()
	if _, err := kv2.ListKeys(lctx); err == nil {
		t.Logf("ListKeys (a consumer) answered too: a meta leader was elected meanwhile")
	} else {
		t.Logf("ListKeys (a consumer) without a meta leader: %v", err)
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
