package controller

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/internal/poll"
)

// jsCluster starts three routed JetStream servers on loopback.
func jsCluster(t *testing.T) []*server.Server {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	var srvs []*server.Server
	for i := range 3 {
		o := &server.Options{ServerName: fmt.Sprintf("s%d", i), Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "kvlist", Host: "127.0.0.1", Port: ports[i]}}
		for j := range 3 {
			if j != i {
				o.Routes = append(o.Routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[j])})
			}
		}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(s.Shutdown)
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("server not ready")
		}
	}
	poll.Until(t, 30*time.Second, "a JetStream meta leader", func() bool {
		for _, s := range srvs {
			if s.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return srvs
}

func metaLeader(srvs []*server.Server) int {
	for i, s := range srvs {
		if s.Running() && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// kvEntries and the object readers give what ListKeys/Get and GetBytes
// give (pages, deletes, updates, chunks), and they still answer from a
// survivor after the JetStream meta leader was lost, before a new one is
// elected: no consumer, so no meta leader needed.
func TestListWithoutConsumerSurvivesMetaLeaderLoss(t *testing.T) {
	srvs := jsCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nc, err := nats.Connect(srvs[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var kv jetstream.KeyValue
	poll.Until(t, 30*time.Second, "bucket created", func() bool {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", History: 1, Replicas: 3})
		return err == nil
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

	// Move every stream leadership off the meta leader, then lose it.
	ml := metaLeader(srvs)
	for _, st := range []string{"KV_t", "OBJ_o"} {
		poll.Until(t, 30*time.Second, st+" led elsewhere", func() bool {
			if !srvs[ml].JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, st) {
				return true
			}
			srvs[ml].JetStreamStepdownStream(server.DEFAULT_GLOBAL_ACCOUNT, st)
			return false
		})
	}
	srvs[ml].Shutdown()
	survivor := srvs[(ml+1)%3]
	nc2, err := nats.Connect(survivor.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	leaderless := metaLeader(srvs) < 0
	check(js2, "meta leader lost")
	t.Logf("meta leader absent before and after the reads: %v", leaderless && metaLeader(srvs) < 0)
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
