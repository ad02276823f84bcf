package controller

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestHeldResultsSteps: a standby holds from a peer's loss until the
// window passes (also when the peer is back meanwhile: a killed active
// controller restarted at once is not active), holds again only for a new
// loss, and keeps within its bounds.
func TestHeldResultsSteps(t *testing.T) {
	var h heldResults
	t0 := time.Unix(1000, 0)
	w := 9 * time.Second
	steps := []struct {
		peers int
		after time.Duration
		want  holdStep
	}{
		{1, 0, holdKeep},                  // the cluster forming
		{2, 0, holdKeep},                  // every peer there
		{1, time.Second, holdStart},       // one lost
		{2, 2 * time.Second, holdKeep},    // back at once: still held
		{2, 11 * time.Second, holdExpire}, // the window passed, nobody took them
		{2, 12 * time.Second, holdKeep},
		{1, 13 * time.Second, holdStart},  // a new loss
		{1, 23 * time.Second, holdExpire}, // still lost after the window: the active one is alive
		{1, 24 * time.Second, holdKeep},   // not again for the same loss
		{0, 25 * time.Second, holdStart},  // another lost: it may be the active one
	}
	for i, s := range steps {
		got := h.step(s.peers, t0.Add(s.after), w)
		if got != s.want {
			t.Fatalf("step %d (%d peers at +%v): %v, want %v", i, s.peers, s.after, got, s.want)
		}
		switch got {
		case holdStart:
			h.since = t0.Add(s.after) // what watchPeers does
		case holdExpire:
			h.stopLocked()
		}
	}

	msg := func(node string, n int) *nats.Msg {
		return &nats.Msg{Subject: "mgn.result." + node, Data: make([]byte, n)}
	}
	// In all: beyond maxHeldResults, more are counted, not kept.
	h = heldResults{since: t0}
	for i := range maxHeldResults + 5 {
		h.add(msg(fmt.Sprint("n", i%(maxHeldResults/maxHeldPerNode+1)), 2))
	}
	if len(h.msgs) != maxHeldResults || h.dropped != 5 {
		t.Fatalf("held %d, dropped %d; want %d and 5", len(h.msgs), h.dropped, maxHeldResults)
	}
	held, dropped := h.take()
	if len(held) != maxHeldResults || dropped != 5 || len(h.msgs) != 0 || !h.since.IsZero() {
		t.Fatalf("take: %d, %d; left %d", len(held), dropped, len(h.msgs))
	}
	h.add(msg("n", 2)) // late: not holding any more
	if len(h.msgs) != 0 {
		t.Fatal("held a result after take")
	}
	// Per node, by bytes, and with headers.
	h = heldResults{since: t0}
	for range maxHeldPerNode + 3 {
		h.add(msg("loud", 2))
	}
	h.add(msg("quiet", 2))
	hm := msg("hdr", 2)
	hm.Header = nats.Header{"X": []string{"y"}}
	h.add(hm)
	if h.perNode["mgn.result.loud"] != maxHeldPerNode || h.perNode["mgn.result.quiet"] != 1 || h.perNode["mgn.result.hdr"] != 0 || h.dropped != 4 {
		t.Fatalf("per node %v, dropped %d", h.perNode, h.dropped)
	}
	h = heldResults{since: t0}
	big := maxHeldResultBytes / 4
	for range 5 {
		h.add(msg(fmt.Sprint("b", len(h.msgs)), big))
	}
	if len(h.msgs) != 3 || h.bytes > maxHeldResultBytes || h.dropped != 2 {
		t.Fatalf("by bytes: held %d (%d bytes), dropped %d", len(h.msgs), h.bytes, h.dropped)
	}
	// The bytes are the holder's own copy.
	m := msg("own", 2)
	h = heldResults{since: t0}
	h.add(m)
	m.Data[0] = 'x'
	if h.msgs[0].data[0] != 0 {
		t.Fatal("held data shares the message's buffer")
	}
}
