package controller

import (
	"fmt"
	"testing"
	"time"
)

// TestPendingEnrollmentsMakeRoomWithoutDroppingAttemptsInFlight: a full
// map drops expired attempts, then the oldest one, never the recent
// attempts all at once; a key that enrolls leaves the map, and a notice
// arriving after it does not bring it back on a peer that learned the key.
func TestPendingEnrollmentsMakeRoomWithoutDroppingAttemptsInFlight(t *testing.T) {
	a := newAuthenticator("", &tokenStore{m: map[string]tokenRecord{}}, func(string) {})
	now := time.Now()
	a.mu.Lock()
	for i := range maxPendingEnrollments {
		at := now
		if i < 10 {
			at = now.Add(-2 * pendingEnrollTTL) // abandoned long ago
		}
		a.addPendingLocked(fmt.Sprintf("K%05d", i), pendingEnroll{tokenHash: "h", at: at})
	}
	a.addPendingLocked("NEW1", pendingEnroll{tokenHash: "h", at: now})
	a.mu.Unlock()
	if got := a.pendingCount(); got != maxPendingEnrollments-10+1 {
		t.Fatalf("after making room: %d attempts, want %d (only the 10 expired dropped)", got, maxPendingEnrollments-9)
	}
	for _, k := range []string{"K00010", "K04095", "NEW1"} {
		if _, ok := a.pendingFor(k); !ok {
			t.Fatalf("attempt %s in flight was dropped", k)
		}
	}
	// Full of recent attempts: only the oldest goes.
	a.mu.Lock()
	for i := range 9 {
		a.addPendingLocked(fmt.Sprintf("F%d", i), pendingEnroll{tokenHash: "h", at: now.Add(time.Duration(i+1) * time.Millisecond)})
	}
	a.pending["K00010"] = pendingEnroll{tokenHash: "h", at: now.Add(-time.Second)}
	a.addPendingLocked("NEW2", pendingEnroll{tokenHash: "h", at: now.Add(time.Second)})
	a.mu.Unlock()
	if _, ok := a.pendingFor("K00010"); ok {
		t.Fatal("the oldest attempt was kept in a full map")
	}
	if got := a.pendingCount(); got != maxPendingEnrollments {
		t.Fatalf("full map: %d attempts, want %d", got, maxPendingEnrollments)
	}
	if _, ok := a.pendingFor("K00011"); !ok {
		t.Fatal("a recent attempt was dropped")
	}

	// A standby hears of an attempt, then learns the key from mgn_nodes.
	a.addRemotePending("ENROLLED", "h")
	a.addNode("ENROLLED", "n1")
	if _, ok := a.pendingFor("ENROLLED"); ok {
		t.Fatal("an enrolled key's attempt outlived its enrollment")
	}
	// A known key enrolling again keeps its attempt across later updates.
	a.addRemotePending("ENROLLED", "h")
	a.addNode("ENROLLED", "n1")
	if _, ok := a.pendingFor("ENROLLED"); !ok {
		t.Fatal("a known key's re-enrollment was dropped by a later update of its record")
	}
}
