package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/messages"
)

// The store writes results in batches of one task each, splits batches at
// its size bound, and reads back every node's first outcome.
func TestResultStoreBatches(t *testing.T) {
	js := testJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: messages.ResultsStream, Subjects: []string{messages.StoredPrefix + ">"}})
	if err != nil {
		t.Fatal(err)
	}

	const maxBytes = 1024 // a few results per message
	s := newResultStore(js, zaptest.NewLogger(t), maxBytes)
	runCtx, stop := context.WithCancel(context.Background())
	go s.run(runCtx, 5*time.Second)
	var last uint64
	for i := range 60 {
		task := fmt.Sprintf("t%d", i%2)
		r := messages.Result{V: messages.Version, TaskID: task, Node: fmt.Sprintf("n%02d", i/2), Outcome: messages.OutcomeOK,
			Output: []byte(fmt.Sprintf(`{"i":%d}`, i))}
		last = s.add(task, messages.MustEncode(&r))
	}
	// A later, different outcome for a node that has one already.
	dup := messages.Result{V: messages.Version, TaskID: "t0", Node: "n00", Outcome: messages.OutcomeFail, Reason: "late"}
	last = s.add("t0", messages.MustEncode(&dup))
	if err := s.wait(ctx, last); err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if n := info.State.Msgs; n < 4 || n > 40 {
		t.Fatalf("%d stream messages for 61 results: not batched, or not split at %d bytes", n, maxBytes)
	}
	for _, task := range []string{"t0", "t1"} {
		got, err := storedResults(ctx, st, task, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 30 {
			t.Fatalf("%s: %d nodes stored, want 30", task, len(got))
		}
		if r := got["n00"]; task == "t0" && (r.Outcome != messages.OutcomeOK || string(r.Output) != `{"i":0}`) {
			t.Fatalf("first outcome did not win: %+v", r)
		}
	}

	// Stopping drains what is queued.
	r := messages.Result{V: messages.Version, TaskID: "t9", Node: "n1", Outcome: messages.OutcomeOK}
	seq := s.add("t9", messages.MustEncode(&r))
	stop()
	<-s.done
	if err := s.wait(ctx, seq); err != nil {
		t.Fatalf("queued result not stored on stop: %v", err)
	}
	if got, _ := storedResults(ctx, st, "t9", maxBytes); len(got) != 1 {
		t.Fatalf("t9: %+v", got)
	}
}

// testJetStream starts a single JetStream server on loopback for the
// test and returns a client of it; both end with the test.
func testJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
