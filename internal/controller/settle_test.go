package controller_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

// An agent forgets a result only once the controller has stored it; the
// stored results are what a restarted controller reports.
func TestResultsSettleThenSurviveRestart(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token(true, "1h")
	journals := map[string]*agent.MemJournal{}
	for _, n := range []string{"n1", "n2", "n3"} {
		cfg := f.agentCfg(n, "a", tok)
		cfg.Journal = agent.NewMemJournal()
		cfg.SettleEvery = 100 * time.Millisecond
		journals[n] = cfg.Journal.(*agent.MemJournal)
		f.runAgent(cfg)
	}
	f.waitOnline("n1", "n2", "n3")
	var ids []string
	for range 3 {
		rep := f.run(messages.RunRequest{Target: "all", Kind: "ping"})
		ids = append(ids, rep.TaskID)
	}
	for n, j := range journals {
		poll.Until(t, 10*time.Second, n+" settles its results", func() bool { return len(j.Unsent()) == 0 })
		for _, id := range ids {
			if e, ok := j.Get(id); !ok || !e.Done || !e.Sent {
				t.Fatalf("%s: journal entry for %s: %+v", n, id, e)
			}
		}
	}
	f.stop()
	f.start()
	for _, id := range ids {
		rep, err := f.cli.Wait(context.Background(), id)
		if err != nil || !rep.Done || len(rep.Results) != 3 {
			t.Fatalf("%s after restart: %+v %v", id, rep, err)
		}
		for _, r := range rep.Results {
			if r.Outcome != messages.OutcomeOK {
				t.Fatalf("%s after restart: %+v", id, r)
			}
		}
	}
}

// The sync protocol, spoken by hand as node n1: a result the controller
// never received is not settled (the task comes back to be answered), one
// it received and stored is, and so is one for a task it does not know.
func TestSyncSettlesOnlyStoredResults(t *testing.T) {
	f := newFleet(t, nil)
	cfg := f.agentCfg("n1", "a", f.token(false, "1h"))
	a := f.runAgent(cfg)
	f.waitOnline("n1")
	a.stop()
	ctx := context.Background()
	run, err := f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "ping", Timeout: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	nc, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(cfg.StateDir, "identity.seed"), errs, nats.CustomInboxPrefix(messages.InboxFor("n1")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sync := func(ids ...string) messages.SyncReply {
		t.Helper()
		m, err := nc.Request(messages.SyncSubject("n1"), messages.MustEncode(&messages.SyncRequest{V: messages.Version, Results: ids}), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := messages.Decode[messages.SyncReply](m.Data, 0)
		if err != nil {
			t.Fatalf("sync reply %s: %v", m.Data, err)
		}
		return rep
	}

	rep := sync(run.TaskID, "tnosuchtask")
	if !slices.Equal(rep.Settled, []string{"tnosuchtask"}) {
		t.Fatalf("settled before the result arrived: %v", rep.Settled)
	}
	if len(rep.Tasks) != 1 || rep.Tasks[0].ID != run.TaskID {
		t.Fatalf("the task to answer is not offered again: %+v", rep.Tasks)
	}

	res := messages.Result{V: messages.Version, TaskID: run.TaskID, Node: "n1", Outcome: messages.OutcomeWarn, Reason: "by hand"}
	if err := nc.Publish(messages.ResultSubject("n1"), messages.MustEncode(&res)); err != nil {
		t.Fatal(err)
	}
	report, err := f.cli.Wait(ctx, run.TaskID)
	if err != nil || report.Results[0].Outcome != messages.OutcomeWarn {
		t.Fatalf("report: %+v %v", report, err)
	}
	if rep := sync(run.TaskID); !slices.Equal(rep.Settled, []string{run.TaskID}) || len(rep.Tasks) != 0 {
		t.Fatalf("after the result: %+v", rep)
	}
	// A second, different result for the same task is a duplicate: the
	// first outcome stays, in memory and in the store.
	res.Outcome, res.Reason = messages.OutcomeOK, ""
	nc.Publish(messages.ResultSubject("n1"), messages.MustEncode(&res))
	nc.Flush()
	nc.Close()
	f.stop()
	f.start()
	report, err = f.cli.Wait(ctx, run.TaskID)
	if err != nil || report.Results[0].Outcome != messages.OutcomeWarn || report.Results[0].Reason != "by hand" {
		t.Fatalf("stored report: %+v %v", report, err)
	}
}
