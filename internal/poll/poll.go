// Package poll is how tests wait: for a condition, with a deadline, never
// for a fixed time.
package poll

import (
	"testing"
	"time"
)

// Every is how often Until looks again.
const Every = 20 * time.Millisecond

// Until checks cond every Every until it holds, and fails t when it still
// does not after d, naming what it waited for.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(Every)
	}
}

// UntilOK calls f every Every until it returns nil, and fails t when it
// still returns an error after d, naming what it waited for and the last
// error (which may say what the test saw instead).
func UntilOK(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		time.Sleep(Every)
	}
}
