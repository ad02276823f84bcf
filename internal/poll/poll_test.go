package poll

import (
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	Until(t, time.Second, "three looks", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("looked %d times", n)
	}
}

// fakeT records a failure instead of stopping the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Fatalf(string, ...any) { f.failed = true }

func TestUntilFailsAtTheDeadline(t *testing.T) {
	f := &fakeT{TB: t}
	Until(f, 50*time.Millisecond, "never", func() bool { return f.failed })
	if !f.failed {
		t.Fatal("no failure at the deadline")
	}
}
