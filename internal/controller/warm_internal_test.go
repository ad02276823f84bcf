package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/messages"
)

// A peer's warm copy of the nodes bucket, fed by a watch as watchAuth
// feeds it, is used only when it holds everything the bucket has, and
// then holds exactly what newRegistry reads: puts, updates, deletes,
// purges and records it must not load.
func TestWarmNodesMatchesTheBucket(t *testing.T) {
	js := testJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: nodesBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string, rec nodeRecord) {
		t.Helper()
		b, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, name, b); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		n := fmt.Sprintf("n%02d", i)
		put(n, nodeRecord{Name: n, PublicKey: "U" + n, Cluster: "a", Labels: map[string]string{"i": n}})
	}
	put("misnamed", nodeRecord{Name: "other", PublicKey: "Ux"})
	if _, err := kv.Put(ctx, "garbage", []byte("{not json")); err != nil {
		t.Fatal(err)
	}

	w := newWarmNodes()
	// Behind: nothing delivered yet, so the activation must read.
	short, scancel := context.WithTimeout(ctx, 2*warmWait)
	if _, ok := w.upTo(short, js, nodesBucket); ok {
		t.Fatal("upTo succeeded before the watch delivered anything")
	}
	scancel()

	feed := func() (stop func()) {
		wctx, wcancel := context.WithCancel(ctx)
		watch, err := kv.WatchAll(wctx)
		if err != nil {
			t.Fatal(err)
		}
		w.restart()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for e := range watch.Updates() {
				if e == nil {
					w.caughtUp()
					continue
				}
				rec, ok := parseNodeEntry(e)
				w.apply(e, rec, ok)
			}
		}()
		return func() { watch.Stop(); wcancel(); <-done }
	}
	stop := feed()
	defer func() { stop() }()

	check := func(what string) {
		t.Helper()
		got, ok := w.upTo(ctx, js, nodesBucket)
		if !ok {
			t.Fatalf("%s: upTo did not catch up", what)
		}
		read, err := newRegistry(ctx, js, kv, time.Second, 3)
		if err != nil {
			t.Fatal(err)
		}
		warm := registryFrom(kv, time.Second, 3, got)
		if warm.count() != read.count() {
			t.Fatalf("%s: warm registry has %d nodes, the bucket %d", what, warm.count(), read.count())
		}
		for name, n := range read.nodes {
			m, ok := warm.nodes[name]
			if !ok || m.rec.PublicKey != n.rec.PublicKey || m.rec.Cluster != n.rec.Cluster || !maps.Equal(m.rec.Labels, n.rec.Labels) {
				t.Fatalf("%s: node %s: warm %+v, bucket %+v", what, name, m, n.rec)
			}
		}
	}
	check("initial")
	if _, ok := w.recs["misnamed"]; ok {
		t.Fatal("a record whose name is not its key was kept")
	}

	// Changes after the initial delivery, each visible to the next upTo
	// (it waits for the watch to reach the leader's last sequence).
	put("n01", nodeRecord{Name: "n01", PublicKey: "Un01", Cluster: "b"})
	if err := kv.Delete(ctx, "n02"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "n03"); err != nil {
		t.Fatal(err)
	}
	put("n99", nodeRecord{Name: "n99", PublicKey: "Un99"})
	check("after changes")
	if got, _ := w.upTo(ctx, js, nodesBucket); got["n01"].Cluster != "b" || got["n02"].Name != "" || got["n03"].Name != "" || got["n99"].Name != "n99" {
		t.Fatalf("changes not applied: n01 %+v n02 %+v n03 %+v n99 %+v", got["n01"], got["n02"], got["n03"], got["n99"])
	}

	// A heartbeat heard on this peer is newer than the stored last_seen
	// (kept only as of a node's last change): the registry built from the
	// warm copy has the node online, as the lost active one had it; a node
	// not heard from keeps its stored last_seen; a deleted node's time is
	// forgotten with it.
	heardAt := time.Now().UTC()
	w.heard("n04", heardAt)
	w.heard("n05", heardAt)
	if err := kv.Delete(ctx, "n05"); err != nil {
		t.Fatal(err)
	}
	got, ok := w.upTo(ctx, js, nodesBucket)
	if !ok {
		t.Fatal("upTo did not catch up")
	}
	reg := registryFrom(kv, time.Second, 3, got)
	if n := reg.nodes["n04"]; n == nil || !n.rec.LastSeen.Equal(heardAt) || n.state != messages.StateOnline {
		t.Fatalf("n04 heard from: %+v", n)
	}
	if n := reg.nodes["n06"]; n == nil || !n.rec.LastSeen.IsZero() || n.state != messages.StateOffline {
		t.Fatalf("n06 not heard from: %+v", n)
	}
	// A heartbeat subject of a node the bucket does not have (a relay
	// link may publish any) is not kept.
	w.heard("nobody", heardAt)
	w.mu.Lock()
	_, kept := w.seen["n05"]
	_, stranger := w.seen["nobody"]
	w.mu.Unlock()
	if kept {
		t.Fatal("a deleted node's heartbeat time was kept")
	}
	if stranger {
		t.Fatal("the heartbeat time of a node that is not enrolled was kept")
	}

	// A watch that stopped misses what follows: upTo refuses rather than
	// hand over an old registry.
	stop()
	put("n98", nodeRecord{Name: "n98", PublicKey: "Un98"})
	short, scancel = context.WithTimeout(ctx, 2*warmWait)
	defer scancel()
	if _, ok := w.upTo(short, js, nodesBucket); ok {
		t.Fatal("upTo succeeded with a watch that missed a put")
	}
	// A new watch starts over and catches up.
	stop = feed()
	check("after the watch restarted")
}
