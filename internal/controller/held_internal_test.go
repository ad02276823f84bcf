package controller

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestHeldResultsSteps: a standby holds from a peer's loss, drops when the
// peers are back or the window passes, holds again only for a new loss,
// and keeps within its bounds.
func TestHeldResultsSteps(t *testing.T) {
	var h heldResults
	t0 := time.Unix(1000, 0)
	w := 9 * time.Second
	hold := func(at time.Time) { h.since = at } // what watchPeers does on holdStart
	steps := []struct {
		peers int
		after time.Duration
		want  holdStep
	}{
		{1, 0, holdKeep},            // the cluster forming
		{2, 0, holdKeep},            // every peer there
		{1, time.Second, holdStart}, // one lost
		{1, 5 * time.Second, holdKeep},
		{1, 11 * time.Second, holdExpire}, // still lost after the window: the active one is alive
		{1, 12 * time.Second, holdKeep},   // not again for the same loss
		{0, 13 * time.Second, holdStart},  // another lost: it may be the active one
		{2, 14 * time.Second, holdDrop},   // all back
		{1, 15 * time.Second, holdStart},  // a new loss
	}
	for i, s := range steps {
		got := h.step(s.peers, t0.Add(s.after), w)
		if got != s.want {
			t.Fatalf("step %d (%d peers at +%v): %v, want %v", i, s.peers, s.after, got, s.want)
		}
		switch got {
		case holdStart:
			hold(t0.Add(s.after))
		case holdDrop, holdExpire:
			h.stopLocked()
		}
	}

	// Bounds: beyond maxHeldResults messages, more are counted, not kept.
	h = heldResults{since: t0}
	for range maxHeldResults + 5 {
		h.add(&nats.Msg{Subject: "mgn.result.n", Data: []byte("{}")})
	}
	if len(h.msgs) != maxHeldResults || h.dropped != 5 {
		t.Fatalf("held %d, dropped %d; want %d and 5", len(h.msgs), h.dropped, maxHeldResults)
	}
	msgs, dropped := h.take()
	if len(msgs) != maxHeldResults || dropped != 5 || len(h.msgs) != 0 || !h.since.IsZero() {
		t.Fatalf("take: %d, %d; left %d", len(msgs), dropped, len(h.msgs))
	}
	h.add(&nats.Msg{Data: []byte("{}")}) // late: not holding any more
	if len(h.msgs) != 0 {
		t.Fatal("held a result after take")
	}
}
