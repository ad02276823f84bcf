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
		poll.Until(t, 10*time.Second, n+" settles its results", func() bool { return len(j.Unsettled()) == 0 })
		for _, id := range ids {
			if e, ok := j.Get(id); !ok || !e.Done || !e.Settled {
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

// The sync protocol, spoken by hand as node n1: while the controller has
// no outcome from n1 for a task, the reply lists it (n1 must answer it);
// once n1's result is in (and stored) it is no longer listed, which tells
// n1 to forget it. A task past its deadline but not settled is listed too.
func TestSyncListsWhatIsOwed(t *testing.T) {
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
	nc, err := connectAs(t, f.c.Info().NATSURL, filepath.Join(cfg.StateDir, "identity.seed"), errs, nats.CustomInboxPrefix(messages.NodeInbox("n1")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	owed := func() []string {
		t.Helper()
		m, err := nc.Request(messages.SyncSubject("n1"), messages.MustEncode(&messages.SyncRequest{V: messages.Version}), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := messages.Decode[messages.SyncReply](m.Data, 0)
		if err != nil {
			t.Fatalf("sync reply %s: %v", m.Data, err)
		}
		var ids []string
		for _, x := range rep.Tasks {
			ids = append(ids, x.ID)
		}
		slices.Sort(ids)
		return ids
	}

	if got := owed(); !slices.Equal(got, []string{run.TaskID}) {
		t.Fatalf("owed before the result: %v, want [%s]", got, run.TaskID)
	}
	res := messages.Result{V: messages.Version, TaskID: run.TaskID, Node: "n1", Outcome: messages.OutcomeWarn, Reason: "by hand"}
	if err := nc.Publish(messages.ResultSubject("n1"), messages.MustEncode(&res)); err != nil {
		t.Fatal(err)
	}
	report, err := f.cli.Wait(ctx, run.TaskID)
	if err != nil || report.Results[0].Outcome != messages.OutcomeWarn {
		t.Fatalf("report: %+v %v", report, err)
	}
	if got := owed(); len(got) != 0 {
		t.Fatalf("owed after the result: %v", got)
	}

	// Past its deadline, not yet settled (the grace period): still owed.
	late, err := f.cli.Run(ctx, messages.RunRequest{Target: "n1", Kind: "ping", Timeout: "100ms"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait out the task's own deadline (the condition is the clock), still
	// inside the 2 s settling grace.
	time.Sleep(time.Until(late.Deadline) + 50*time.Millisecond)
	if got := owed(); !slices.Equal(got, []string{late.TaskID}) {
		t.Fatalf("owed past the deadline: %v, want [%s]", got, late.TaskID)
	}

	// A second, different result for the first task is a duplicate: the
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
